"""Environment requirements: skip locally, FAIL under CI=true (never a silent skip in CI)."""

from __future__ import annotations

import os
import shutil

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require(condition: bool, why: str) -> None:
    """Skip when a real part is missing on a developer machine; fail in CI."""
    if condition:
        return
    if in_ci():
        pytest.fail(f"required for this test under CI=true: {why}")
    pytest.skip(why)


def require_root() -> None:
    require(os.geteuid() == 0, "needs root")
    require(os.path.exists("/dev/loop-control"), "needs loop devices (/dev/loop-control)")
    require(shutil.which("losetup") is not None, "needs losetup")
