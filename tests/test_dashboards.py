"""Grafana dashboards (dashboards/build.py -> dashboards/json/) and their provisioning.

* the committed JSON is exactly what build.py generates (CI fails on any drift);
* uids are the fixed, documented ones;
* every PromQL expression of every panel parses (promtool, as recording rules)
  and uses only catalogued metrics and labels and defined recording rules;
* datasources, exemplar links and alert dashboard links are wired consistently.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from snapshot_sidecar.metrics import FAMILIES

from tests.support.requirements import require
from tests.test_rules import (
    MIXIN_CONFIG,
    PROM_DIR,
    RULE_FILES,
    raw_series_selectors,
    recorded_names,
    run_promtool,
    unknown_names,
)

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "dashboards" / "build.py"
JSON_DIR = ROOT / "dashboards" / "json"
PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"

UIDS = {"vmsnap-fleet-freeze", "vmsnap-script-health", "vmsnap-job-detail"}

# Grafana's variables, replaced by something promtool accepts. $window takes
# each of its values so that every recorded name it builds is checked.
WINDOWS = ("1h", "6h", "1d")
GRAFANA_VARS = {
    "$__range": "1d",
    "$__interval": "15m",
    "$__rate_interval": "2m",
    "$job": ".*",
    "$region": ".*",
    "$cluster": ".*",
    "$instance": "vm-a",
}


@pytest.fixture(scope="module")
def build() -> ModuleType:
    require(
        importlib.util.find_spec("grafana_foundation_sdk") is not None,
        "needs grafana-foundation-sdk (pip install -e '.[test]')",
    )
    spec = importlib.util.spec_from_file_location("vmsnap_dashboards_build", BUILD)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def committed() -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(JSON_DIR.glob("*.json"))}


def panels(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in doc["panels"]:
        yield panel
        yield from panel.get("panels", [])


def targets() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for uid, doc in committed().items():
        for panel in panels(doc):
            for target in panel.get("targets", []):
                yield uid, panel["title"], target


def expanded(expr: str) -> list[str]:
    out = expr
    for name, value in GRAFANA_VARS.items():
        out = out.replace(name, value)
    variants = [out.replace("$window", w) for w in WINDOWS] if "$window" in out else [out]
    for variant in variants:
        assert "$" not in variant, f"unexpanded variable in {expr}"
    return variants


# -- generated == committed -----------------------------------------------------------


def test_committed_json_is_what_build_py_generates(build: ModuleType) -> None:
    files = {p.stem for p in JSON_DIR.glob("*.json")}
    assert files == set(build.DASHBOARDS), "dashboards/json/ holds a file build.py does not make"
    stale = [
        uid
        for uid in build.DASHBOARDS
        if (JSON_DIR / f"{uid}.json").read_text(encoding="utf-8") != build.render(uid)
    ]
    assert stale == [], f"regenerate with: .venv/bin/python dashboards/build.py ({stale})"


def test_build_is_deterministic(build: ModuleType) -> None:
    for uid in build.DASHBOARDS:
        assert build.render(uid) == build.render(uid)


def test_check_mode_reports_drift(build: ModuleType, tmp_path: Path) -> None:
    assert build.main(["--check"]) == 0
    original = build.JSON_DIR
    try:
        build.JSON_DIR = tmp_path
        assert build.main(["--check"]) == 1  # nothing generated there
    finally:
        build.JSON_DIR = original


# -- uids, ids, variables ---------------------------------------------------------------


def test_uids_are_stable() -> None:
    docs = committed()
    assert set(docs) == UIDS
    for name, doc in docs.items():
        assert doc["uid"] == name
        assert doc["id"] is None
        assert "vmsnap" in doc["tags"]


def test_panel_ids_are_unique_and_sequential() -> None:
    for doc in committed().values():
        ids = [p["id"] for p in panels(doc)]
        assert ids == list(range(1, len(ids) + 1))


def test_variables() -> None:
    docs = committed()
    for doc in docs.values():
        names = [v["name"] for v in doc["templating"]["list"]]
        assert names[:5] == ["datasource", "job", "region", "cluster", "instance"]
    detail = {v["name"]: v for v in docs["vmsnap-job-detail"]["templating"]["list"]}
    assert not detail["instance"].get("multi") and not detail["instance"].get("includeAll")


def test_every_query_uses_the_datasource_variable() -> None:
    for uid, title, target in targets():
        assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, (uid, title)
    for doc in committed().values():
        for panel in panels(doc):
            if panel["type"] != "row":
                assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


# -- PromQL ------------------------------------------------------------------------------


def test_every_expression_parses(tmp_path: Path) -> None:
    exprs = [e for _, _, t in targets() for e in expanded(t["expr"])]
    for doc in committed().values():
        for var in doc["templating"]["list"]:
            if var["type"] == "query":
                # label_values(<selector>, label): check the selector.
                m = re.fullmatch(r"label_values\((.*),\s*\w+\)", var["query"])
                assert m, var["query"]
                exprs.extend(expanded(m.group(1)))
    assert len(exprs) > 60
    lines = ["groups:", "  - name: dashboards", "    rules:"]
    for i, expr in enumerate(exprs):
        lines.append(f"      - record: dashboard:check:{i}")
        lines.append(f"        expr: {json.dumps(expr)}")
    rules = tmp_path / "dashboards.rules.yml"
    rules.write_text("\n".join(lines) + "\n")
    result = run_promtool("check", "rules", rules)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_bad_expression_is_caught(tmp_path: Path) -> None:
    rules = tmp_path / "bad.rules.yml"
    rules.write_text(
        'groups: [{name: x, rules: [{record: "a:b:c", expr: "sum by (le (rate(x[5m]))"}]}]\n'
    )
    assert run_promtool("check", "rules", rules).returncode != 0


def test_every_metric_and_label_is_catalogued() -> None:
    exprs = [e for _, _, t in targets() for e in expanded(t["expr"])]
    assert unknown_names(exprs, recorded_names()) == []


def test_exemplar_queries_select_histogram_buckets() -> None:
    # Exemplars hang on histogram buckets only (docs/telemetry.md): a query
    # with "exemplar": true over anything else shows no points.
    exemplar = [(uid, t["expr"]) for uid, _, t in targets() if t.get("exemplar")]
    assert {uid for uid, _ in exemplar} == {"vmsnap-fleet-freeze", "vmsnap-job-detail"}
    histograms = {f.name for f in FAMILIES if f.kind == "histogram"}
    for _, expr in exemplar:
        selected = set(re.findall(r"\b(vmsnap_\w+)_bucket\{", expr))
        assert selected and selected <= histograms, expr
    assert any("vmsnap_freeze_duration_seconds_bucket{" in e for _, e in exemplar)


def test_sparse_panels_use_long_intervals() -> None:
    # Jobs come a few times a day: a per-$__interval panel needs a minimum
    # interval, or most of its points are empty scrapes.
    for uid, doc in committed().items():
        for panel in panels(doc):
            exprs = [t["expr"] for t in panel.get("targets", [])]
            if any("[$__interval]" in e for e in exprs):
                assert panel.get("interval") in {"5m", "15m", "1h"}, (uid, panel["title"])


# -- provisioning and links -----------------------------------------------------------


def test_provisioning_wires_datasources_and_exemplars() -> None:
    text = (PROVISIONING / "datasources" / "vmsnap.yml").read_text()
    uids = re.findall(r"^\s*uid:\s*(\S+)\s*$", text, re.MULTILINE)
    assert uids == ["vmsnap-prometheus", "vmsnap-tempo"]
    assert re.search(
        r"exemplarTraceIdDestinations:\s*\n\s*- name: trace_id\s*\n\s*datasourceUid: vmsnap-tempo",
        text,
    )
    for doc in committed().values():
        ds = next(v for v in doc["templating"]["list"] if v["name"] == "datasource")
        assert ds["current"]["value"] == "vmsnap-prometheus"


def test_dashboard_provider_points_at_a_folder() -> None:
    text = (PROVISIONING / "dashboards" / "vmsnap.yml").read_text()
    assert "type: file" in text and "path: /var/lib/grafana/dashboards/vmsnap" in text
    assert "allowUiUpdates: false" in text


def test_alert_dashboard_links_name_real_dashboards() -> None:
    text = (PROM_DIR / "rules" / "vmsnap.alerts.yml").read_text()
    # Absolute: the mixin's grafanaBaseUrl, then /d/<uid>.
    base = json.loads((ROOT / "deploy" / "mixin" / "config.json").read_text())["grafanaBaseUrl"]
    assert base.startswith("https://")
    annotations = re.findall(r'dashboard:\s*"([^"]*)"', text)
    links = re.findall(rf'dashboard:\s*"{re.escape(base.rstrip("/"))}/d/([\w-]+)', text)
    assert links and len(links) == len(annotations) and set(links) <= UIDS


def test_recording_rules_used_by_dashboards_exist() -> None:
    used = {
        name
        for _, _, t in targets()
        for e in expanded(t["expr"])
        for name in re.findall(r"\b(?:cluster|job):vmsnap_\w+:\w+", e)
    }
    assert used and used <= recorded_names(), used - recorded_names()
    assert RULE_FILES


# -- the mixin config, the job variable, rate windows ------------------------------------


def panel_exprs(docs: dict[str, dict[str, Any]]) -> list[str]:
    exprs = [t["expr"] for doc in docs.values() for p in panels(doc) for t in p.get("targets", [])]
    for doc in docs.values():
        for var in doc["templating"]["list"]:
            if var["type"] == "query":
                exprs.append(var["query"])
    return exprs


def test_every_raw_series_carries_the_selector_and_the_job_variable() -> None:
    selector = MIXIN_CONFIG["selector"]
    found = raw_series_selectors(panel_exprs(committed()))
    assert len(found) > 60
    for name, matchers in found:
        assert matchers.startswith("{" + selector), (name, matchers)
        if matchers != "{" + selector + "}":  # the job variable's own query
            assert 'job=~"$job"' in matchers, (name, matchers)
    # Recorded series were selected by the rules: the job variable only.
    recorded = [
        m
        for e in panel_exprs(committed())
        for m in re.findall(r"\b(?:cluster|job):vmsnap_\w+:[\w$]+(\{[^}]*\})", e)
    ]
    assert recorded and all(m.startswith('{job=~"$job"') for m in recorded), recorded


def test_the_job_variable_lists_the_selected_scrape_jobs() -> None:
    for doc in committed().values():
        job = next(v for v in doc["templating"]["list"] if v["name"] == "job")
        assert job["query"] == f"label_values(vmsnap_build_info{{{MIXIN_CONFIG['selector']}}}, job)"
        assert job["includeAll"] and job["allValue"] == ".*"


def test_per_second_panels_use_rate_interval_and_sparse_ones_say_why() -> None:
    rates = 0
    for uid, doc in committed().items():
        for panel in panels(doc):
            exprs = [t["expr"] for t in panel.get("targets", [])]
            for expr in exprs:
                # A rate over a fixed or $__interval window misses or double-counts
                # scrapes; Grafana's $__rate_interval is the window a rate needs.
                for window in re.findall(r"\brate\([^\[]*\[([^\]]+)\]", expr):
                    assert window == "$__rate_interval", (uid, panel["title"], expr)
                    rates += 1
            description = panel.get("description", "")
            if any("[$__rate_interval]" in e for e in exprs):
                assert "Per second" in description, (uid, panel["title"])
            if any("increase(" in e and "[$__interval]" in e for e in exprs) and panel.get(
                "interval"
            ) in {"15m", "1h"}:
                assert "not as a per-second rate" in description, (uid, panel["title"])
    assert rates >= 2


def test_an_overridden_config_changes_every_selector(build: ModuleType, tmp_path: Path) -> None:
    override = tmp_path / "team.json"
    override.write_text(json.dumps({"selector": 'job="backup-agents", team="storage"'}))
    out = tmp_path / "json"
    assert build.main(["--config", str(override), "--out", str(out)]) == 0
    docs = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json"))}
    assert set(docs) == UIDS
    text = json.dumps(docs)
    assert text.count("vmsnap-sidecar") == 0, "the default selector leaked into an override"
    found = raw_series_selectors(panel_exprs(docs))
    assert len(found) > 60
    for name, matchers in found:
        assert matchers.startswith('{job="backup-agents", team="storage"'), (name, matchers)
    # The default build is untouched by the override (no state leaks between renders).
    assert build.main(["--check"]) == 0


def test_trace_to_metrics_maps_host_name_to_a_label_every_scrape_config_sets() -> None:
    text = (PROVISIONING / "datasources" / "vmsnap.yml").read_text()
    m = re.search(r"tags:\s*\n\s*- key: host\.name\s*\n\s*value: (\w+)", text)
    assert m, "tracesToMetrics maps host.name"
    label = m.group(1)
    # Not instance: with a static scrape config that is an address, not a host name.
    assert label == "host"
    static = (PROM_DIR / "prometheus.static.yml").read_text()
    groups = static.split("- targets:")[1:]
    assert groups and all(f"{label}: " in g for g in groups)
    assert all(len(re.findall(r'"[^"]+:\d+"', g.split("\n")[0])) == 1 for g in groups)
    azure = (PROM_DIR / "prometheus.azure-sd.yml").read_text()
    assert re.search(
        rf"source_labels: \[__meta_azure_machine_computer_name\]\s*\n\s*target_label: {label}",
        azure,
    )
