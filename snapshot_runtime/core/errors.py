"""The product's error codes: one enum for status, metric labels and span error.type.

Each member's value is its public name. The documented pre/post-script names
(Pre-ScriptTimeout, ...) keep their spelling and the reference's numeric codes
(VMBackup main/common.py, ExtensionErrorCodeHelper.py) so that a status consumer
keyed on either the name or the number keeps working. Later phases add their own
names with the reference's numbers where one exists.

Pure module: no I/O.

Exception tree::

    SnapshotError (.code: ErrorCode, .exit_code)
     +-- ConfigError          plugin config / settings invalid
     +-- ScriptError          a pre/post-script could not be run to success
     +-- FreezeError          FIFREEZE failed or timed out
     +-- BlobError            a blob request failed (message never holds the SAS)
"""

from __future__ import annotations

import enum

__all__ = [
    "ERROR_GROUPS",
    "OTHER_ERROR_GROUP",
    "BlobError",
    "ConfigError",
    "ErrorCode",
    "FreezeError",
    "Health",
    "ScriptError",
    "SnapshotError",
    "error_group",
]


class Health(enum.IntEnum):
    """vmHealthStatusCode colours as the reference reports them."""

    GREEN = 0
    YELLOW = 128
    RED = 256


class ErrorCode(enum.Enum):
    """Every failure the product reports. ``value`` is the public name."""

    # Documented names (seeds), reference codes 300-309.
    PRE_SCRIPT_FAILED = "Pre-ScriptExecutionFailed"
    POST_SCRIPT_FAILED = "Post-ScriptExecutionFailed"
    PRE_SCRIPT_NOT_FOUND = "Pre-ScriptNotFound"
    POST_SCRIPT_NOT_FOUND = "Post-ScriptNotFound"
    INCORRECT_PLUGINHOST_FILE = "IncorrectPluginhostFile"
    INCORRECT_JSON_CONFIG = "IncorrectJSONConfigFile"
    PRE_SCRIPT_PERMISSION = "InsufficientPermissionforPre-Script"
    POST_SCRIPT_PERMISSION = "InsufficientPermissionforPost-Script"
    PRE_SCRIPT_TIMEOUT = "Pre-ScriptTimeout"
    POST_SCRIPT_TIMEOUT = "Post-ScriptTimeout"
    # Warnings only: a plugin config the reference runs, which we run too,
    # with the value we used and the fix named (docs/scripts.md).
    PLUGIN_CONFIG_VALUE_ADJUSTED = "PluginConfigValueAdjusted"
    PLUGIN_CONFIG_VALUE_CONVERTED = "PluginConfigValueConverted"
    # Built-in database quiescing (workload.conf), the reference's 500-512
    # (docs/workloads.md); all yellow: the snapshot is kept, filesystem-consistent.
    WORKLOAD_PRE_ERROR = "FailedWorkloadPreError"
    WORKLOAD_CONF_PARSING = "FailedWorkloadConfParsingError"
    WORKLOAD_INVALID_ROLE = "FailedWorkloadInvalidRole"
    WORKLOAD_INVALID_NAME = "FailedWorkloadInvalidWorkloadName"
    WORKLOAD_POST_ERROR = "FailedWorkloadPostError"
    WORKLOAD_AUTH_MISSING = "FailedWorkloadAuthorizationMissing"
    WORKLOAD_CONNECTION = "FailedWorkloadConnectionError"
    WORKLOAD_QUIESCING_ERROR = "FailedWorkloadQuiescingError"
    WORKLOAD_QUIESCING_TIMEOUT = "FailedWorkloadQuiescingTimeout"
    # Ours: a workload recognised but not quiesced by this runtime (Oracle), and
    # a workload.conf that replaces a configured pre/post-script framework.
    WORKLOAD_UNSUPPORTED = "WorkloadUnsupported"
    WORKLOAD_REPLACES_SCRIPTS = "WorkloadReplacesScripts"
    # The job's own codes.
    INVALID_SETTINGS = "InvalidSettings"
    INVALID_DISK_LIST = "InvalidDiskList"
    COMMAND_TOO_LATE = "CommandTooLate"
    ALREADY_PROCESSED = "AlreadyProcessed"
    JOB_ALREADY_RUNNING = "JobAlreadyRunning"
    FS_FREEZE_FAILED = "FsFreezeFailed"
    FS_FREEZE_TIMEOUT = "FsFreezeTimeout"
    FS_FREEZE_NOT_OWNED = "FsFreezeNotOwned"
    UNABLE_TO_OPEN_MOUNT = "UnableToOpenMount"
    THAW_FAILED = "ThawFailed"
    SNAPSHOT_FAILED = "SnapshotFailed"
    SNAPSHOT_PARTIALLY_FAILED = "SnapshotPartiallyFailed"
    SNAPSHOT_RATE_EXCEEDED = "SnapshotRateExceeded"
    SNAPSHOT_LIMIT_REACHED = "SnapshotLimitReached"
    STATUS_UPLOAD_FAILED = "StatusUploadFailed"
    HANDLER_ENVIRONMENT_INVALID = "HandlerEnvironmentInvalid"
    CERTIFICATE_NOT_FOUND = "CertificateNotFound"
    PROTECTED_SETTINGS_INVALID = "ProtectedSettingsInvalid"
    INTERNAL_ERROR = "InternalError"

    @property
    def code(self) -> int:
        """The reference's numeric code (as reported in status ``code``)."""
        return _NUMBERS[self]

    @property
    def health(self) -> Health:
        return _HEALTH.get(self.code, Health.YELLOW)


_NUMBERS: dict[ErrorCode, int] = {
    ErrorCode.PRE_SCRIPT_FAILED: 300,
    ErrorCode.POST_SCRIPT_FAILED: 301,
    ErrorCode.PRE_SCRIPT_NOT_FOUND: 302,
    ErrorCode.POST_SCRIPT_NOT_FOUND: 303,
    ErrorCode.INCORRECT_PLUGINHOST_FILE: 304,
    ErrorCode.INCORRECT_JSON_CONFIG: 305,
    ErrorCode.PRE_SCRIPT_PERMISSION: 306,
    ErrorCode.POST_SCRIPT_PERMISSION: 307,
    ErrorCode.PRE_SCRIPT_TIMEOUT: 308,
    ErrorCode.POST_SCRIPT_TIMEOUT: 309,
    # Next free numbers after the reference's pre/post range (300-318); 3xx is yellow.
    ErrorCode.PLUGIN_CONFIG_VALUE_ADJUSTED: 319,
    ErrorCode.PLUGIN_CONFIG_VALUE_CONVERTED: 320,
    ErrorCode.WORKLOAD_PRE_ERROR: 500,
    ErrorCode.WORKLOAD_CONF_PARSING: 501,
    ErrorCode.WORKLOAD_INVALID_ROLE: 502,
    ErrorCode.WORKLOAD_INVALID_NAME: 503,
    ErrorCode.WORKLOAD_POST_ERROR: 504,
    ErrorCode.WORKLOAD_AUTH_MISSING: 505,
    ErrorCode.WORKLOAD_CONNECTION: 506,
    ErrorCode.WORKLOAD_QUIESCING_ERROR: 509,
    ErrorCode.WORKLOAD_QUIESCING_TIMEOUT: 510,
    # Next free numbers after the reference's workload range (500-512).
    ErrorCode.WORKLOAD_UNSUPPORTED: 513,
    ErrorCode.WORKLOAD_REPLACES_SCRIPTS: 514,
    ErrorCode.INVALID_SETTINGS: 11,
    ErrorCode.INVALID_DISK_LIST: 17,
    ErrorCode.COMMAND_TOO_LATE: 402,
    ErrorCode.ALREADY_PROCESSED: 3,
    ErrorCode.JOB_ALREADY_RUNNING: 14,
    ErrorCode.FS_FREEZE_FAILED: 121,
    ErrorCode.FS_FREEZE_TIMEOUT: 122,
    # Ours, next to the reference's freeze codes: a mount was already frozen by
    # someone else (FIFREEZE: EBUSY), so the job did not hold the freeze.
    ErrorCode.FS_FREEZE_NOT_OWNED: 124,
    ErrorCode.UNABLE_TO_OPEN_MOUNT: 123,
    ErrorCode.THAW_FAILED: 2,
    ErrorCode.SNAPSHOT_FAILED: 76,
    ErrorCode.SNAPSHOT_PARTIALLY_FAILED: 761,
    ErrorCode.SNAPSHOT_RATE_EXCEEDED: 173,
    ErrorCode.SNAPSHOT_LIMIT_REACHED: 85,
    ErrorCode.STATUS_UPLOAD_FAILED: 15,
    ErrorCode.HANDLER_ENVIRONMENT_INVALID: 12,
    ErrorCode.CERTIFICATE_NOT_FOUND: 16,
    ErrorCode.PROTECTED_SETTINGS_INVALID: 16,
    ErrorCode.INTERNAL_ERROR: 2,
}

# The metric label for an error or warning (issue 16, series budget): a VM pays
# one series per label value, so the counters say which part of a job failed
# (9 values) and the exact code stays in the job record, the status, the spans
# and vmsnap_last_job_info. Every code is in exactly one group (checked below,
# at import). "other" also takes names this runtime does not know.
OTHER_ERROR_GROUP = "other"
ERROR_GROUPS: dict[str, tuple[ErrorCode, ...]] = {
    "settings": (
        ErrorCode.INVALID_SETTINGS,
        ErrorCode.INVALID_DISK_LIST,
        ErrorCode.COMMAND_TOO_LATE,
        ErrorCode.ALREADY_PROCESSED,
        ErrorCode.JOB_ALREADY_RUNNING,
    ),
    "plugin_config": (
        ErrorCode.INCORRECT_PLUGINHOST_FILE,
        ErrorCode.INCORRECT_JSON_CONFIG,
        ErrorCode.PLUGIN_CONFIG_VALUE_ADJUSTED,
        ErrorCode.PLUGIN_CONFIG_VALUE_CONVERTED,
    ),
    "pre_script": (
        ErrorCode.PRE_SCRIPT_FAILED,
        ErrorCode.PRE_SCRIPT_NOT_FOUND,
        ErrorCode.PRE_SCRIPT_PERMISSION,
        ErrorCode.PRE_SCRIPT_TIMEOUT,
    ),
    "post_script": (
        ErrorCode.POST_SCRIPT_FAILED,
        ErrorCode.POST_SCRIPT_NOT_FOUND,
        ErrorCode.POST_SCRIPT_PERMISSION,
        ErrorCode.POST_SCRIPT_TIMEOUT,
    ),
    "freeze": (
        ErrorCode.FS_FREEZE_FAILED,
        ErrorCode.FS_FREEZE_TIMEOUT,
        ErrorCode.FS_FREEZE_NOT_OWNED,
        ErrorCode.UNABLE_TO_OPEN_MOUNT,
        ErrorCode.THAW_FAILED,
    ),
    "snapshot": (
        ErrorCode.SNAPSHOT_FAILED,
        ErrorCode.SNAPSHOT_PARTIALLY_FAILED,
        ErrorCode.SNAPSHOT_RATE_EXCEEDED,
        ErrorCode.SNAPSHOT_LIMIT_REACHED,
    ),
    "workload": (
        ErrorCode.WORKLOAD_PRE_ERROR,
        ErrorCode.WORKLOAD_CONF_PARSING,
        ErrorCode.WORKLOAD_INVALID_ROLE,
        ErrorCode.WORKLOAD_INVALID_NAME,
        ErrorCode.WORKLOAD_POST_ERROR,
        ErrorCode.WORKLOAD_AUTH_MISSING,
        ErrorCode.WORKLOAD_CONNECTION,
        ErrorCode.WORKLOAD_QUIESCING_ERROR,
        ErrorCode.WORKLOAD_QUIESCING_TIMEOUT,
        ErrorCode.WORKLOAD_UNSUPPORTED,
        ErrorCode.WORKLOAD_REPLACES_SCRIPTS,
    ),
    # The extension handler's environment and the status hand-back.
    "host": (
        ErrorCode.HANDLER_ENVIRONMENT_INVALID,
        ErrorCode.CERTIFICATE_NOT_FOUND,
        ErrorCode.PROTECTED_SETTINGS_INVALID,
        ErrorCode.STATUS_UPLOAD_FAILED,
    ),
    OTHER_ERROR_GROUP: (ErrorCode.INTERNAL_ERROR,),
}
_GROUP_BY_NAME: dict[str, str] = {
    code.value: group for group, codes in ERROR_GROUPS.items() for code in codes
}
# A new ErrorCode must be given a group: importing this module fails until it is.
_ungrouped = [code.value for code in ErrorCode if code.value not in _GROUP_BY_NAME]
assert not _ungrouped, f"ErrorCode(s) in no ERROR_GROUPS entry: {_ungrouped}"
assert sum(len(codes) for codes in ERROR_GROUPS.values()) == len(ErrorCode), (
    "an ErrorCode is in more than one ERROR_GROUPS entry"
)


def error_group(code: str | ErrorCode) -> str:
    """The metric group of an error code, given as the enum or its public name."""
    name = code.value if isinstance(code, ErrorCode) else code
    return _GROUP_BY_NAME.get(name, OTHER_ERROR_GROUP)


# Reference ExtensionErrorCodeDict; every number not listed is yellow, which
# also covers the reference's KeyError bug for unlisted codes (556).
_HEALTH: dict[int, Health] = {
    0: Health.GREEN,
    1: Health.GREEN,
    2: Health.GREEN,
    3: Health.GREEN,
    4: Health.GREEN,
    12: Health.GREEN,
    17: Health.GREEN,
    173: Health.GREEN,
    15: Health.RED,
    76: Health.RED,
    85: Health.RED,
    402: Health.RED,
    761: Health.RED,
}


class SnapshotError(Exception):
    """Root of the product's exceptions; carries the error code to report."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def exit_code(self) -> int:
        # Shell exit codes are 8-bit; the reference numbers can exceed that.
        return 1 if self.code.code > 255 or self.code.code == 0 else self.code.code

    def __str__(self) -> str:
        return f"{self.code.value}: {self.message}"


class ConfigError(SnapshotError):
    """Plugin config or handler settings are invalid."""


class ScriptError(SnapshotError):
    """A pre/post-script could not be run to success."""


class FreezeError(SnapshotError):
    """FIFREEZE failed, timed out, or a mount could not be opened."""


class BlobError(SnapshotError):
    """A blob request failed; the message never holds the SAS."""
