"""The frozen window's observers: who must know when filesystems freeze and thaw.

A pure Protocol, low enough that the job (which runs the window) and
telemetry or the log gate (which must stop writing inside it) can both use it
without knowing each other. The window notifies, in this order:

* ``before_freeze()``: the last moment for I/O (a spool flush, closing a log
  gate); the mounts are not frozen yet. Called in subscription order.
* ``frozen()``: every mount is frozen (I1 from here): memory only, no file
  writes, no imports, no threads, no network.
* ``after_thaw()``: the last FITHAW has returned; deferred work may run.
  Called in reverse subscription order (the first to close is the last to
  reopen), and always, once ``before_freeze`` was called (I4's ``finally``).

An observer must not raise: the window does not guard them.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["WindowObserver"]


class WindowObserver(Protocol):
    """Told when the frozen window starts, is frozen, and ends (see the module doc)."""

    def before_freeze(self) -> None: ...

    def frozen(self) -> None: ...

    def after_thaw(self) -> None: ...
