"""One job's telemetry: spans, the job log, the spool hand-off to the sidecar,
the job record, sealing, export after the thaw, and the trace view."""

from .job_log import DEFAULT_LOG_PATH as DEFAULT_LOG_PATH
from .job_log import JobLog as JobLog
from .job_telemetry import JobTelemetry as JobTelemetry
from .job_telemetry import TelemetryOptions as TelemetryOptions
from .record import RecordFacts as RecordFacts
from .sealing import generate_keypair as generate_keypair
from .sealing import public_key_of as public_key_of
from .sealing import unseal as unseal
from .sealing import versions_document as versions_document
from .span_attributes import root_attributes as root_attributes
from .spool import DEFAULT_MAX_BYTES as DEFAULT_MAX_BYTES
from .spool_recovery import recover_interrupted as recover_interrupted
from .trace_view import load_job as load_job
from .trace_view import rows as rows
from .trace_view import waterfall as waterfall

__all__ = [
    "DEFAULT_LOG_PATH",
    "DEFAULT_MAX_BYTES",
    "JobLog",
    "JobTelemetry",
    "RecordFacts",
    "TelemetryOptions",
    "generate_keypair",
    "load_job",
    "public_key_of",
    "recover_interrupted",
    "root_attributes",
    "rows",
    "unseal",
    "versions_document",
    "waterfall",
]
