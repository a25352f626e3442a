"""The snapshot job: options, the frozen window, the phases' state, status
reports, the summary, the single-job lock and the ``validate`` preflight."""

from .housekeeping import PruneReport as PruneReport
from .housekeeping import prune_handler_status as prune_handler_status
from .housekeeping import prune_state_dir as prune_state_dir
from .lock import JOB_LOCK_FILE as JOB_LOCK_FILE
from .lock import JobLock as JobLock
from .lock import LockHolder as LockHolder
from .preflight import preflight as preflight
from .records import JobOptions as JobOptions
from .run import run_job as run_job
from .status_document import TEMP_TERMINAL_CODE as TEMP_TERMINAL_CODE
from .status_document import StatusValue as StatusValue
from .status_document import status_document as status_document
from .status_document import status_file_document as status_file_document
from .status_document import write_status_file as write_status_file
from .summary import report_json as report_json
from .summary import report_text as report_text
from .summary import table as table

__all__ = [
    "JOB_LOCK_FILE",
    "TEMP_TERMINAL_CODE",
    "JobLock",
    "JobOptions",
    "LockHolder",
    "PruneReport",
    "StatusValue",
    "preflight",
    "prune_handler_status",
    "prune_state_dir",
    "report_json",
    "report_text",
    "run_job",
    "status_document",
    "status_file_document",
    "table",
    "write_status_file",
]
