"""loguru's root logger, imported without asyncio.

Why: loguru 0.7 imports ``loguru._asyncio_loop`` when it is first imported,
and that module imports asyncio: ~15 ms of CPU and ~1.5 MiB on every job's
start-up (python -X importtime, issue 15, docs/startup.md), for a feature the
runtime never uses (coroutine sinks and ``logger.complete()``). Before
loguru's first import, a stand-in for that module is registered whose two
functions import asyncio when first called, so a coroutine sink would still
work, only paying for asyncio then.

Every module of the runtime takes loguru's logger from here
(``from snapshot_runtime.telemetry.loguru_logger import logger``).
"""

from __future__ import annotations

import sys
import types
from typing import Any

__all__ = ["logger"]

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


if "loguru" not in sys.modules:  # once loguru is loaded, its own module is in place
    sys.modules.setdefault(_ASYNCIO_LOOP, _lazy_asyncio_loop())

from loguru import logger  # noqa: E402 - after the stand-in, on purpose
