"""Rewrite the module map at the end of docs/architecture.md from the code.

Each row is a module and the first paragraph of its docstring, grouped by
package; tests/test_docs_architecture.py fails when a module is missing, and
this script is the fix: ``python scripts/module_map.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
MARKER = "## Module map\n"
INTRO = (
    "Generated from each module's docstring by `python scripts/module_map.py`;\n"
    "tests/test_docs_architecture.py fails when a module is missing here.\n"
)


def _summary(path: Path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    return " ".join(doc.split("\n\n")[0].split()).replace("|", "\\|")


def module_map() -> str:
    out: list[str] = []
    for base in (ROOT / "snapshot_runtime", ROOT / "exporters" / "snapshot_sidecar"):
        subpackages = sorted(
            p for p in base.iterdir() if p.is_dir() and (p / "__init__.py").exists()
        )
        packages = [base, *subpackages]
        for package in packages:
            out.append(f"\n#### `{package.relative_to(ROOT)}/`\n")
            out.append("| module | what it holds |\n|---|---|")
            for module in sorted(package.glob("*.py")):
                if module.name != "__init__.py":
                    out.append(f"| `{module.stem}` | {_summary(module)} |")
    return "\n".join(out) + "\n"


def main() -> None:
    text = DOC.read_text()
    head = text.split(MARKER, 1)[0]
    DOC.write_text(head + MARKER + "\n" + INTRO + module_map())


if __name__ == "__main__":
    main()
