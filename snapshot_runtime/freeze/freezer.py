"""The freezer seam: what the job's frozen window needs from a freeze implementation.

``FreezeSession`` implements it (FIFREEZE/FITHAW with the thaw watchdog behind
it); the job is handed a ``FreezerFactory`` so another implementation (a
different guard, a test's own) plugs in without touching the window code.

Contract (docs/freeze.md has the operator's view):

* ``prepare()`` before the window: open, start and arm everything the freeze
  needs (mount fds, lanes, the watchdog); raises ``FreezeError``, after which
  ``thaw()`` reports the same error.
* ``freeze()`` freezes every planned mount; ``False``: it failed and rolled
  back what it froze. A mount frozen by someone else is left as is and
  reported ``already_frozen``.
* ``already_frozen`` (after ``freeze()``, memory only, may be read inside the
  window): the mountpoints FIFREEZE found frozen by someone else (EBUSY). The
  job does not hold their freeze and claims no consistency from it.
* ``thaw()`` thaws what this freezer froze, proves it and returns the
  ``FreezeResult``; idempotent, safe to call after any of the above (I4).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from snapshot_runtime.freeze.mounts import FreezePlan
from snapshot_runtime.freeze.state import FreezeResult

__all__ = ["Freezer", "FreezerFactory"]


class Freezer(Protocol):
    """Freeze a plan's mounts for a bounded window; always thawed (see the module doc)."""

    def prepare(self) -> None: ...

    def freeze(self) -> bool: ...

    @property
    def already_frozen(self) -> tuple[str, ...]: ...

    def thaw(self) -> FreezeResult: ...


# Builds the freezer for a plan; called in the prepare phase, before any freeze.
FreezerFactory = Callable[[FreezePlan], Freezer]
