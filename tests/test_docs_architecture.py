"""docs/architecture.md maps every module of the runtime and the sidecar."""

from __future__ import annotations

import pkgutil
from pathlib import Path

import pytest
import snapshot_sidecar

import snapshot_runtime

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"


def _modules() -> list[str]:
    names: list[str] = []
    for root in (snapshot_runtime, snapshot_sidecar):
        for info in pkgutil.walk_packages(root.__path__, root.__name__ + "."):
            if not info.ispkg and not info.name.endswith("__main__"):
                names.append(info.name)
    return sorted(names)


@pytest.mark.parametrize("name", _modules())
def test_every_module_is_in_the_module_map(name: str) -> None:
    text = DOC.read_text()
    package, _, module = name.rpartition(".")
    folder = package.replace(".", "/")
    if folder.startswith("snapshot_sidecar"):
        folder = "exporters/" + folder
    heading = f"#### `{folder}/`"
    assert heading in text, f"no section {heading}"
    section = text.split(heading, 1)[1].split("\n#### ", 1)[0]
    assert f"| `{module}` |" in section, (
        f"{name} is missing from docs/architecture.md: run python scripts/module_map.py"
    )
