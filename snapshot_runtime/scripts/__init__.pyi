"""Pre- and post-scripts: trust checks, the environment contract, launch through
the checked fd, bounded output capture, process-tree kill."""

from .attempt import AttemptResult as AttemptResult
from .runner import ScriptResult as ScriptResult
from .runner import run_script as run_script
from .trust import check_script as check_script

__all__ = [
    "AttemptResult",
    "ScriptResult",
    "check_script",
    "run_script",
]
