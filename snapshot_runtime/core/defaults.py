"""The runtime's defaults (a leaf module: no imports, cheap for every command).

``--help`` and a job's start-up read these without importing the modules that
apply them (loguru's job log, the spool, retention): issue 15, docs/startup.md.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_FREEZE_TIMEOUT",
    "DEFAULT_LOG_PATH",
    "DEFAULT_RETENTION_DAYS",
    "DEFAULT_RETENTION_KEEP",
    "DEFAULT_RUN_DIR",
    "DEFAULT_SNAPSHOT_BACKENDS",
    "DEFAULT_SPOOL_DIR",
    "DEFAULT_SPOOL_MAX_BYTES",
    "DEFAULT_STATE_DIR",
    "REFERENCE_NAME",
]

DEFAULT_STATE_DIR = "/var/lib/snapshot-runtime"
# tmpfs: never frozen, so the watchdog and the spool can be written right up to
# (and, for the spool, inside) the frozen window.
DEFAULT_RUN_DIR = "/run/snapshot-runtime"
DEFAULT_SPOOL_DIR = DEFAULT_RUN_DIR + "/spool"
# Seconds a filesystem may stay frozen before the runtime (and its watchdog) thaws it.
DEFAULT_FREEZE_TIMEOUT = 60.0
# The reference's extension log (telemetry.job_log re-exports it).
DEFAULT_LOG_PATH = "/var/log/azure/Microsoft.Azure.RecoveryServices.VMSnapshotLinux/extension.log"
# The spool's size bound (telemetry.spool re-exports it as DEFAULT_MAX_BYTES).
DEFAULT_SPOOL_MAX_BYTES = 64 * 1024 * 1024
# JobOptions' snapshot backends by registry name (snapshot.registry's
# DEFAULT_BACKENDS, kept equal by tests/job/test_startup_imports.py): the
# options are built at start-up, before the backend table is imported.
DEFAULT_SNAPSHOT_BACKENDS: tuple[str, ...] = ("azure_blob",)
# The reference's published extension name: the status documents' default name
# (job.status_document re-exports it).
REFERENCE_NAME = "Microsoft.Azure.RecoveryServices.VMSnapshotLinux"
# The reference keeps 60 .status/.settings files in the agent's folders
# (core.retention re-exports both).
DEFAULT_RETENTION_KEEP = 60
DEFAULT_RETENTION_DAYS = 90.0
