"""docs/telemetry.md "Metrics (sidecar)" documents exactly the catalogue."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client.utils import floatToGoString
from snapshot_sidecar.metrics import FAMILIES

DOC = Path(__file__).resolve().parents[2] / "docs" / "telemetry.md"


def _section() -> str:
    text = DOC.read_text()
    start = text.index("## Metrics (sidecar)")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def test_every_metric_is_documented_with_its_type_and_labels() -> None:
    section = _section()
    rows = {
        m.group(1): (m.group(2), m.group(3))
        for m in re.finditer(r"^\| `(vmsnap_\w+)` \| (\w+) \| ([^|]*) \|", section, re.M)
    }
    for family in FAMILIES:
        assert family.name in rows, f"{family.name} is not documented"
        kind, labels = rows[family.name]
        assert kind == family.kind, family.name
        documented = re.findall(r"`(\w+)`", labels)
        assert documented == list(family.labels), family.name
    names = {f.name for f in FAMILIES}
    assert set(rows) <= names, f"documented but not exported: {set(rows) - names}"


def test_buckets_are_documented() -> None:
    section = _section()
    for family in FAMILIES:
        if family.kind != "histogram":
            continue
        if not family.buckets:
            # +Inf only (issue 16): the row says so instead of listing bounds.
            assert re.search(rf"^\| `{family.name}` \| \+Inf only", section, re.M), family.name
            continue
        row = next(
            line
            for line in section.splitlines()
            if line.startswith("| `")
            and f"`{family.name}`" in line.split("|")[1]
            and "," in line.split("|")[2]
        )
        bounds = [b.strip() for b in row.split("|")[2].split(",")]
        expected = [floatToGoString(b).removesuffix(".0") for b in family.buckets]
        assert bounds == expected, family.name


def test_every_label_value_is_documented() -> None:
    section = _section()
    for family in FAMILIES:
        for values in family.label_values:
            for value in values:
                assert f"`{value}`" in section, f"{family.name}: {value}"
