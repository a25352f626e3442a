"""Every family has an honest face, and no module re-exports a sibling's names.

Like httpx's tests/test_exported_members.py: a package's ``__all__`` lists what
it offers and each name resolves; a module's ``__all__`` lists only names the
module itself defines, so every name has exactly one import path.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import snapshot_sidecar

import snapshot_runtime

FAMILIES = [
    "core",
    "inputs",
    "scripts",
    "freeze",
    "snapshot",
    "quiesce",
    "telemetry",
    "job",
    "handler",
]
ROOTS = [snapshot_runtime, snapshot_sidecar]


def _modules() -> list[str]:
    names: list[str] = []
    for root in ROOTS:
        for info in pkgutil.walk_packages(root.__path__, root.__name__ + "."):
            if not info.name.endswith("__main__"):
                names.append(info.name)
    return sorted(names)


def _defined_names(path: Path) -> set[str]:
    """Top-level names a module binds itself (not by import)."""
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def test_the_families_are_the_documented_ones() -> None:
    found = sorted(
        p.name
        for p in Path(snapshot_runtime.__file__).parent.iterdir()
        if (p / "__init__.py").exists()
    )
    assert found == sorted(FAMILIES)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_face_lists_sorted_unique_names_that_resolve(family: str) -> None:
    face = importlib.import_module(f"snapshot_runtime.{family}")
    exported = list(face.__all__)
    assert exported, f"{family} has an empty face"
    assert exported == sorted(set(exported)), f"{family}.__all__ unsorted or repeated"
    for name in exported:
        value = getattr(face, name)
        home = getattr(value, "__module__", None)
        if home is not None and home.startswith("snapshot_runtime."):
            assert home.startswith(f"snapshot_runtime.{family}."), (name, home)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_face_loads_nothing_until_asked(family: str) -> None:
    # The face is lazy: importing it imports none of its modules (start-up cost).
    code = (
        f"import sys, snapshot_runtime.{family} as face; "
        f"loaded = [m for m in sys.modules if m.startswith('snapshot_runtime.{family}.')]; "
        "print(len(loaded))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0", out.stdout


@pytest.mark.parametrize("name", _modules())
def test_a_module_exports_only_what_it_defines(name: str) -> None:
    module = importlib.import_module(name)
    path = Path(module.__file__ or "")
    if path.name == "__init__.py":
        return  # faces are checked above
    assert hasattr(module, "__all__"), f"{name} has no __all__"
    defined = _defined_names(path)
    foreign = [n for n in module.__all__ if n not in defined]
    assert not foreign, f"{name} re-exports names defined elsewhere: {foreign}"


def test_the_wheel_installs_two_named_packages_and_their_faces(tmp_path: Path) -> None:
    # The folder exporters/ is a search root, never an import package of its own:
    # a generic "exporters" package would clash with another distribution's, and
    # a module reachable under two names would mean two metric registries.
    here = Path(snapshot_sidecar.__file__).resolve().parent
    assert here.parent.name == "exporters"
    assert not (here.parent / "__init__.py").exists()
    repo = Path(snapshot_runtime.__file__).resolve().parents[1]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(repo), "-w", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"snapshot_runtime", "snapshot_sidecar"}
    for family in FAMILIES:
        assert f"snapshot_runtime/{family}/__init__.pyi" in names  # the face's one list


# Records and decisions are data: importing them must not load the storage SDK or
# OpenTelemetry (the re-housing found a "pure data" module importing 108 azure
# modules through a re-export).
DATA_MODULES = [
    "snapshot_runtime.core.consistency",
    "snapshot_runtime.inputs.settings",
    "snapshot_runtime.job.records",
    "snapshot_runtime.job.state",
    "snapshot_runtime.snapshot.blob_policy",
    "snapshot_runtime.snapshot.registry",
    "snapshot_runtime.snapshot.results",
    "snapshot_runtime.telemetry.record",
]


@pytest.mark.parametrize("name", DATA_MODULES)
def test_records_and_decisions_import_no_sdk(name: str) -> None:
    code = (
        f"import sys, {name}; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'azure', 'opentelemetry'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
