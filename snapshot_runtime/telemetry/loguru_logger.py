"""loguru's root logger, imported without asyncio.

Why: loguru 0.7 imports ``loguru._asyncio_loop`` when it is first imported,
and that module imports asyncio: ~15 ms of CPU and ~1.5 MiB on every job's
start-up (python -X importtime, issue 15, docs/startup.md), for a feature the
runtime never uses (coroutine sinks and ``logger.complete()``). Before
loguru's first import, a stand-in for that module is registered whose two
functions import asyncio when first called, so a coroutine sink would still
work, only paying for asyncio then.

Each ``logger.add`` also builds an exception formatter that asks sysconfig for
every install scheme's library paths: 3-5 ms per handler, and a job adds two
before its first phase, after loguru's own default stderr handler. The answer
depends only on ``sys.path``, so it is computed once per ``sys.path``
(``_memoize_lib_dirs``), and loguru is imported without its default handler
(``LOGURU_AUTOINIT=False`` for the import only, the environment restored after):
every entry point removed it at once anyway (cli.main, the handler's daemon:
it writes to stderr, outside the freeze gate, I1).

Every module of the runtime takes loguru's logger from here (``root_logger()``).
"""

from __future__ import annotations

import functools
import os
import sys
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loguru import Logger

__all__ = ["root_logger"]

_ASYNCIO_LOOP = "loguru._asyncio_loop"


def _get_task_loop(task: Any) -> Any:
    return task.get_loop()


def _get_running_loop() -> Any:
    import asyncio  # noqa: PLC0415 - only a coroutine sink gets here

    return asyncio.get_running_loop()


def _lazy_asyncio_loop() -> types.ModuleType:
    """What loguru's ``_asyncio_loop`` exports, without importing asyncio up front."""
    module = types.ModuleType(_ASYNCIO_LOOP, "loguru's asyncio helpers, asyncio imported on use")
    vars(module).update(get_task_loop=_get_task_loop, get_running_loop=_get_running_loop)
    return module


def _import_loguru() -> Logger:
    """loguru's logger: on its first import, with the stand-in and no default handler."""
    if "loguru" in sys.modules:  # loaded already: its own modules and handlers stand
        from loguru import logger  # noqa: PLC0415

        return logger
    sys.modules.setdefault(_ASYNCIO_LOOP, _lazy_asyncio_loop())
    # Read once, by loguru's import; the environment is restored right after
    # (the scripts the job runs inherit it).
    previous = os.environ.get("LOGURU_AUTOINIT")
    os.environ["LOGURU_AUTOINIT"] = "False"
    try:
        from loguru import logger  # noqa: PLC0415

        return logger
    finally:
        if previous is None:
            del os.environ["LOGURU_AUTOINIT"]
        else:
            os.environ["LOGURU_AUTOINIT"] = previous


_logger = _import_loguru()


def root_logger() -> Logger:
    """loguru's root logger, loaded without asyncio."""
    return _logger


def _memoize_lib_dirs() -> None:
    try:
        from loguru._better_exceptions import ExceptionFormatter  # noqa: PLC0415
    except ImportError:  # another loguru layout: leave it as it is
        return
    compute: Callable[[], list[str]] | None = getattr(ExceptionFormatter, "_get_lib_dirs", None)
    if compute is None or getattr(compute, "_memoized_by_snapshot_runtime", False):
        return

    @functools.lru_cache(maxsize=4)
    def lib_dirs_for(path: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(compute())  # reads sys.path, which ``path`` is a copy of

    def lib_dirs() -> list[str]:
        return list(lib_dirs_for(tuple(sys.path)))

    vars(lib_dirs)["_memoized_by_snapshot_runtime"] = True
    # setattr: loguru's class has no annotation for its private staticmethod.
    setattr(ExceptionFormatter, "_get_lib_dirs", staticmethod(lib_dirs))  # noqa: B010


_memoize_lib_dirs()
