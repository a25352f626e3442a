"""Built-in database quiescing (workload.conf): one driver-held session per job."""

from .checks import WorkloadCheck as WorkloadCheck
from .checks import workload_checks as workload_checks
from .quiescer import QuiesceError as QuiesceError
from .quiescer import QuiesceFacts as QuiesceFacts
from .quiescer import Quiescer as Quiescer
from .quiescer import ReleaseFacts as ReleaseFacts
from .select import open_quiescer as open_quiescer

__all__ = [
    "QuiesceError",
    "QuiesceFacts",
    "Quiescer",
    "ReleaseFacts",
    "WorkloadCheck",
    "open_quiescer",
    "workload_checks",
]
