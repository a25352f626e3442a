"""Pure decisions and leaf helpers every family shares: error codes, redaction,
the consistency verdict, phases, defaults and paths, untrusted-file reading,
atomic writes. No azure, opentelemetry or subprocess (import-linter enforces it)."""

from .atomic_file import write_atomic as write_atomic
from .command_deadline import COMMAND_DEADLINE as COMMAND_DEADLINE
from .command_deadline import command_too_late as command_too_late
from .consistency import ConfigState as ConfigState
from .consistency import Consistency as Consistency
from .consistency import ProceedDecision as ProceedDecision
from .consistency import Verdict as Verdict
from .consistency import decide_after_freeze as decide_after_freeze
from .consistency import decide_after_pre_script as decide_after_pre_script
from .consistency import settings_rejected as settings_rejected
from .consistency import verdict as verdict
from .defaults import DEFAULT_FREEZE_TIMEOUT as DEFAULT_FREEZE_TIMEOUT
from .defaults import DEFAULT_RUN_DIR as DEFAULT_RUN_DIR
from .defaults import DEFAULT_SPOOL_DIR as DEFAULT_SPOOL_DIR
from .defaults import DEFAULT_STATE_DIR as DEFAULT_STATE_DIR
from .errors import ERROR_GROUPS as ERROR_GROUPS
from .errors import OTHER_ERROR_GROUP as OTHER_ERROR_GROUP
from .errors import BlobError as BlobError
from .errors import ConfigError as ConfigError
from .errors import ErrorCode as ErrorCode
from .errors import FreezeError as FreezeError
from .errors import Health as Health
from .errors import SnapshotError as SnapshotError
from .errors import error_group as error_group
from .interrupt import JobInterrupted as JobInterrupted
from .interrupt import interrupt_name as interrupt_name
from .permissions import check_config_mode as check_config_mode
from .phases import PHASES as PHASES
from .phases import PhaseHandle as PhaseHandle
from .phases import PhaseRecord as PhaseRecord
from .phases import PhaseRecorder as PhaseRecorder
from .redact import Redactor as Redactor
from .redact import drop_partial_run as drop_partial_run
from .redact import redact_then_keep_tail as redact_then_keep_tail
from .redact import redact_then_truncate as redact_then_truncate
from .redact import scrub as scrub
from .redact import strip_sas as strip_sas
from .retention import DEFAULT_RETENTION_DAYS as DEFAULT_RETENTION_DAYS
from .retention import DEFAULT_RETENTION_KEEP as DEFAULT_RETENTION_KEEP
from .retention import RetainedFile as RetainedFile
from .retention import RetentionPolicy as RetentionPolicy
from .retention import files_to_prune as files_to_prune
from .snapshot_mode import ModeChoice as ModeChoice
from .snapshot_mode import ModeInputs as ModeInputs
from .snapshot_mode import PathDecision as PathDecision
from .snapshot_mode import SnapshotMode as SnapshotMode
from .snapshot_mode import choose_mode as choose_mode
from .snapshot_mode import decide_path as decide_path
from .ticks import MAX_TICKS as MAX_TICKS
from .ticks import datetime_to_ticks as datetime_to_ticks
from .ticks import ticks_to_datetime as ticks_to_datetime
from .untrusted_file import read_at_most as read_at_most
from .window import WindowObserver as WindowObserver

__all__ = [
    "COMMAND_DEADLINE",
    "DEFAULT_FREEZE_TIMEOUT",
    "DEFAULT_RETENTION_DAYS",
    "DEFAULT_RETENTION_KEEP",
    "DEFAULT_RUN_DIR",
    "DEFAULT_SPOOL_DIR",
    "DEFAULT_STATE_DIR",
    "ERROR_GROUPS",
    "MAX_TICKS",
    "OTHER_ERROR_GROUP",
    "PHASES",
    "BlobError",
    "ConfigError",
    "ConfigState",
    "Consistency",
    "ErrorCode",
    "FreezeError",
    "Health",
    "JobInterrupted",
    "ModeChoice",
    "ModeInputs",
    "PathDecision",
    "PhaseHandle",
    "PhaseRecord",
    "PhaseRecorder",
    "ProceedDecision",
    "Redactor",
    "RetainedFile",
    "RetentionPolicy",
    "SnapshotError",
    "SnapshotMode",
    "Verdict",
    "WindowObserver",
    "check_config_mode",
    "choose_mode",
    "command_too_late",
    "datetime_to_ticks",
    "decide_after_freeze",
    "decide_after_pre_script",
    "decide_path",
    "drop_partial_run",
    "error_group",
    "files_to_prune",
    "interrupt_name",
    "read_at_most",
    "redact_then_keep_tail",
    "redact_then_truncate",
    "scrub",
    "settings_rejected",
    "strip_sas",
    "ticks_to_datetime",
    "verdict",
    "write_atomic",
]
