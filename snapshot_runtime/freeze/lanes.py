"""Per-mount ioctl lanes: one pre-started daemon thread per mount, waited on with a bound.

Each syncfs/FIFREEZE/FITHAW/close of a mount runs on that mount's lane, in
submission order, and the caller waits at most a timeout (``Lane.run``). A
FIFREEZE stuck in the kernel (D state, azure-linux-extensions#1868) cannot be
interrupted: ``run`` returns None, the lane is marked ``stuck`` and
abandoned, and whatever is submitted after it (the FITHAW, the close) runs
the moment the stuck call returns, so a late-completing FIFREEZE is thawed
at once. One lane per mount, rather than one shared worker, keeps a stuck
mount from blocking the thaw of the others without creating a thread while
frozen (I1): lanes are started in ``prepare``.

Thread-safety: ``submit``/``run``/``stop`` may be called from any thread;
results are handed over through ``IoctlCall.done``. An exception from the
call is never lost: it is stored in ``IoctlCall.error``.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

__all__ = ["IoctlCall", "Lane"]


class IoctlCall:
    """One submitted call; ``done`` is set when it returned or raised."""

    __slots__ = ("done", "error", "fd", "fn")

    def __init__(self, fn: Callable[[int], None], fd: int) -> None:
        self.fn = fn
        self.fd = fd
        self.done = threading.Event()
        self.error: BaseException | None = None


class Lane:
    """One pre-started daemon thread running one mount's ioctls in order."""

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[IoctlCall | None] = queue.SimpleQueue()
        self.stuck = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (call := self._queue.get()) is not None:
            try:
                call.fn(call.fd)
            except BaseException as exc:  # reported to the waiter, never lost
                call.error = exc
            finally:
                call.done.set()

    def submit(self, fn: Callable[[int], None], fd: int) -> IoctlCall:
        call = IoctlCall(fn, fd)
        self._queue.put(call)
        return call

    def run(self, fn: Callable[[int], None], fd: int, timeout: float) -> IoctlCall | None:
        """The finished call, or None (and the lane marked stuck) after ``timeout``."""
        call = self.submit(fn, fd)
        if call.done.wait(timeout):
            return call
        self.stuck = True
        return None

    def stop(self) -> None:
        self._queue.put(None)
