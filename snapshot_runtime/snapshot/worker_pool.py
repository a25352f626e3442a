"""A fixed set of daemon worker threads, all started up front.

Built before the freeze, so no thread is created inside it (I1). Tasks run
in submission order on whichever worker is free and must catch their own
exceptions. ``shutdown`` waits at most ``wait_seconds`` and never for a task
that hangs: the workers are daemon threads, so one stuck in a request can
never hold the process at exit.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

__all__ = ["WorkerPool"]


class WorkerPool:
    """Fixed daemon worker threads, all started up front (none inside the freeze).

    Not ``ThreadPoolExecutor``: it starts threads lazily, on submit, and its
    threads are joined at interpreter exit, so a request hanging past the
    deadline would hold the process.
    """

    def __init__(self, size: int, name: str) -> None:
        self._tasks: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True) for i in range(size)
        ]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        while True:
            task = self._tasks.get()
            if task is None:
                return
            task()  # tasks catch their own exceptions and report them

    def submit(self, task: Callable[[], None]) -> None:
        self._tasks.put(task)

    def shutdown(self, wait_seconds: float) -> None:
        for _ in self._threads:
            self._tasks.put(None)
        deadline = time.monotonic() + wait_seconds
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
