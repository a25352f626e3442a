"""Prometheus rules and scrape configs (deploy/prometheus/), checked with the real promtool.

* ``promtool check rules`` / ``check config`` on every file, ``promtool test rules``
  on the unit tests;
* every alert has a firing and a not-firing case, a runbook section in
  docs/operations.md, and a runbook_url pointing at it;
* every metric and label a rule uses is in the sidecar's catalogue
  (exporters/metrics.py, documented in docs/telemetry.md), every recorded
  name it uses is defined.

The helpers at the top are shared with tests/test_dashboards.py.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

import pytest
from snapshot_sidecar.metrics import FAMILIES

from tests.support.requirements import require

ROOT = Path(__file__).resolve().parent.parent
PROM_DIR = ROOT / "deploy" / "prometheus"
RULE_FILES = sorted((PROM_DIR / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROM_DIR / "tests").glob("*.test.yml"))
CONFIGS = sorted(PROM_DIR.glob("prometheus.*.yml"))
OPERATIONS = ROOT / "docs" / "operations.md"
MIXIN_CONFIG = json.loads((ROOT / "deploy" / "mixin" / "config.json").read_text())
RUNBOOK_BASE: str = MIXIN_CONFIG["runbookBaseUrl"]

# Labels every sidecar series has or may have: the scrape's target labels
# (deploy/prometheus/*.yml relabelling; host: the VM's host name, for the
# trace-to-metrics link) plus le on histogram buckets.
TARGET_LABELS = frozenset(
    {
        "job", "instance", "host", "region", "cluster", "resource_group", "subscription_id",
        "scale_set",
    }
)  # fmt: skip

# Series that are not in the catalogue but are on every scrape: Prometheus's own
# up, prometheus-client's process collector.
EXTRA_SERIES: dict[str, frozenset[str]] = {
    "up": frozenset(),
    "process_resident_memory_bytes": frozenset(),
    "process_cpu_seconds_total": frozenset(),
    "process_start_time_seconds": frozenset(),
}

PROMQL_WORDS = frozenset(
    {
        "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
        "and", "or", "unless", "inf", "nan",
    }
)  # fmt: skip


def catalogue() -> dict[str, frozenset[str]]:
    """Every series name the sidecar exposes -> its label names (target labels included)."""
    names: dict[str, frozenset[str]] = {}
    for family in FAMILIES:
        labels = frozenset(family.labels) | TARGET_LABELS
        if family.kind == "histogram":
            names[f"{family.name}_bucket"] = labels | {"le"}
            names[f"{family.name}_sum"] = labels
            names[f"{family.name}_count"] = labels
        else:
            names[family.name] = labels
    for name, labels in EXTRA_SERIES.items():
        names[name] = labels | TARGET_LABELS
    return names


_RECORDED = re.compile(r"\b(?:instance|cluster|job):vmsnap_\w+:\w+")
_SELECTOR = re.compile(r"([a-zA-Z_:][\w:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


def recorded_names() -> set[str]:
    names: set[str] = set()
    for path in RULE_FILES:
        names |= set(re.findall(r"^\s*- record:\s*(\S+)\s*$", path.read_text(), re.MULTILINE))
    return names


def rule_exprs(paths: Iterable[Path] = RULE_FILES) -> list[str]:
    """Every expr: of every rule (block scalars included), as text."""
    exprs: list[str] = []
    for path in paths:
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            m = re.match(r"^(\s*)expr:\s*(.*)$", line)
            if not m:
                continue
            indent, rest = len(m.group(1)), m.group(2)
            if rest not in {"|", ">", "|-", ">-"}:
                exprs.append(rest)
                continue
            body = []
            for follow in lines[i + 1 :]:
                if follow.strip() and len(follow) - len(follow.lstrip()) <= indent:
                    break
                body.append(follow.strip())
            exprs.append(" ".join(body))
    return exprs


def unknown_names(exprs: Iterable[str], recorded: set[str]) -> list[str]:
    """Metric names, recorded names and label names in ``exprs`` that nothing defines."""
    known = catalogue()
    all_labels = frozenset().union(*known.values())
    problems: list[str] = []
    for expr in exprs:
        for name in _RECORDED.findall(expr):
            if name not in recorded:
                problems.append(f"recorded series {name!r} is not defined ({expr})")
        bare = _STRING.sub('""', expr)
        for token in re.findall(r"(?<![\w:])(vmsnap_\w+|up|process_\w+)\b", bare):
            if token not in known:
                problems.append(f"metric {token!r} is not in the catalogue ({expr})")
        for name, matchers in _SELECTOR.findall(_STRING.sub('""', expr)):
            labels = set(_MATCHER.findall(matchers)) - {"__name__"}
            allowed = known.get(name, all_labels if ":" in name else None)
            if allowed is None:
                continue  # an unknown name is reported above
            for label in labels - allowed:
                problems.append(f"label {label!r} is not on {name} ({expr})")
        for group in _GROUPING.findall(bare):
            for label in filter(None, (x.strip() for x in group.split(","))):
                if label not in all_labels:
                    problems.append(f"grouping label {label!r} exists on no series ({expr})")
    return problems


def promtool() -> str:
    path = shutil.which("promtool")
    require(path is not None, "needs promtool (Debian package prometheus)")
    assert path is not None
    return path


def run_promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


# -- promtool ------------------------------------------------------------------------


def test_there_are_rules_tests_and_configs() -> None:
    assert {p.name for p in RULE_FILES} == {"vmsnap.rules.yml", "vmsnap.alerts.yml"}
    assert RULE_TESTS and CONFIGS


def test_promtool_check_rules() -> None:
    result = run_promtool("check", "rules", *RULE_FILES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules() -> None:
    result = run_promtool("test", "rules", *RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_TESTS)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_promtool_check_config(config: Path) -> None:
    result = run_promtool("check", "config", config)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_broken_expectation_fails(tmp_path: Path) -> None:
    # promtool really evaluates: a case expecting silence from a firing alert fails.
    rules = ", ".join(f'"{p}"' for p in RULE_FILES)
    series = 'vmsnap_backstop_thaws_total{job="vmsnap-sidecar",instance="vm-a"}'
    path = tmp_path / "broken.test.yml"
    path.write_text(
        f"rule_files: [{rules}]\n"
        "evaluation_interval: 1m\n"
        "tests:\n"
        "  - interval: 1m\n"
        f"    input_series: [{{series: '{series}', values: '0x29 1x100'}}]\n"
        "    alert_rule_test:\n"
        "      - {eval_time: 1h, alertname: VmsnapBackstopThaw, exp_alerts: []}\n"
    )
    result = run_promtool("test", "rules", path)
    assert result.returncode != 0, result.stdout
    assert "VmsnapBackstopThaw" in result.stdout + result.stderr


# -- alerts: coverage, runbooks ------------------------------------------------------


def alert_names() -> list[str]:
    text = (PROM_DIR / "rules" / "vmsnap.alerts.yml").read_text()
    return re.findall(r"^\s*- alert:\s*(\w+)\s*$", text, re.MULTILINE)


# The 1-minute group (pages, short windows), then the 5-minute group (tickets over a day).
FAST_ALERTS = [
    "VmsnapPreScriptTimeoutRateHigh",
    "VmsnapPostScriptTimeout",
    "VmsnapFrozenWindowTooLong",
    "VmsnapFrozenWindowP99High",
    "VmsnapBackstopThaw",
    "VmsnapWatchdogThaw",
    "VmsnapJobFailed",
    "VmsnapNoRecentSuccess",
    "VmsnapLogMirrorFailing",
    "VmsnapLogMirrorBacklogGrowing",
    "VmsnapSidecarDown",
    "VmsnapSidecarMetricsMissing",
]
LONG_ALERTS = [
    "VmsnapHostFallbacksRising",
    "VmsnapConsistencyDowngraded",
    "VmsnapJobAbandoned",
    "VmsnapSpoolDropped",
    "VmsnapRecordsInvalid",
    "VmsnapLogMirrorConflict",
    "VmsnapLogMirrorAbandoned",
    "VmsnapSidecarVanished",
]


def test_alert_list() -> None:
    assert alert_names() == FAST_ALERTS + LONG_ALERTS


def alert_groups() -> dict[str, tuple[str, str]]:
    """Group name -> (its interval, its text) in vmsnap.alerts.yml."""
    text = (PROM_DIR / "rules" / "vmsnap.alerts.yml").read_text()
    groups = re.split(r"^  - name:\s*", text, flags=re.MULTILINE)[1:]
    found = {}
    for group in groups:
        name = group.split()[0]
        interval = re.search(r"^    interval:\s*(\S+)", group, re.MULTILINE)
        assert interval, name
        found[name] = (interval.group(1), group)
    return found


def _seconds(duration: str) -> int:
    return int(duration[:-1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[duration[-1]]


def test_the_one_minute_group_reads_no_long_window() -> None:
    # A [6h] or [1d] range reads every sample in it (1,440 per series a day at 60 s
    # scrapes): evaluated every minute over every VM it was the group's main cost
    # (docs/operations.md "Scaling to a fleet"). At most an hour here.
    groups = alert_groups()
    assert set(groups) == {"vmsnap-alerts", "vmsnap-alerts-long"}
    interval, text = groups["vmsnap-alerts"]
    assert interval == "1m"
    assert re.findall(r"^      - alert:\s*(\w+)$", text, re.MULTILINE) == FAST_ALERTS
    assert "- record:" not in text
    ranges = re.findall(r"\[(\d+[smhd])\]", text)
    assert ranges and max(map(_seconds, ranges)) <= 3600, ranges


def test_the_five_minute_group_pages_no_one() -> None:
    # Its alerts may fire or resolve up to 5 min late: tickets only.
    interval, text = alert_groups()["vmsnap-alerts-long"]
    assert interval == "5m"
    assert re.findall(r"^      - alert:\s*(\w+)$", text, re.MULTILINE) == LONG_ALERTS
    assert re.findall(r"severity:\s*(\w+)", text) == ["warning"] * len(LONG_ALERTS)
    # Its records come before the alerts that read them (same evaluation).
    assert text.rindex("- record:") < text.index("- alert:")


def test_every_alert_has_firing_and_not_firing_cases() -> None:
    text = "\n".join(p.read_text() for p in RULE_TESTS)
    cases = re.findall(r"alertname:\s*(\w+)\s*\n\s*exp_alerts:\s*(\[\])?", text)
    firing = {name for name, empty in cases if not empty}
    quiet = {name for name, empty in cases if empty}
    for name in alert_names():
        assert name in firing, f"{name}: no firing case"
        assert name in quiet, f"{name}: no not-firing case"


def test_every_alert_has_severity_and_runbook() -> None:
    text = (PROM_DIR / "rules" / "vmsnap.alerts.yml").read_text()
    blocks = re.split(r"^\s*- alert:\s*", text, flags=re.MULTILINE)[1:]
    for block in blocks:
        name = block.split()[0]
        assert re.search(r"severity:\s*(critical|warning)\b", block), name
        # Absolute, from the mixin's runbook base, anchored at the runbook section.
        assert f'runbook_url: "{RUNBOOK_BASE}#{name.lower()}"' in block, name
        assert RUNBOOK_BASE.startswith("https://") and RUNBOOK_BASE.endswith("docs/operations.md")
        assert "summary:" in block and "description:" in block, name


def test_every_alert_has_a_runbook_section() -> None:
    require(OPERATIONS.exists(), "docs/operations.md")
    text = OPERATIONS.read_text()
    assert "## Alerts runbook" in text
    runbook = text.split("## Alerts runbook", 1)[1].split("\n## ", 1)[0]
    headings = re.findall(r"^### (\w+)\s*$", runbook, re.MULTILINE)
    assert headings == alert_names()


# -- names ------------------------------------------------------------------------


def test_rules_use_only_catalogued_metrics_and_labels() -> None:
    exprs = rule_exprs()
    assert len(exprs) == len(recorded_names()) + len(alert_names())
    assert unknown_names(exprs, recorded_names()) == []


def test_the_name_check_catches_unknown_names() -> None:
    problems = unknown_names(
        [
            'rate(vmsnap_nonexistent_total{job="x"}[5m])',
            'vmsnap_jobs_total{colour="red"}',
            "sum by (flavour) (vmsnap_jobs_total)",
            "cluster:vmsnap_undefined:rate1h",
        ],
        recorded_names(),
    )
    assert len(problems) == 4, problems


def test_recording_rule_names_follow_level_metric_operations() -> None:
    for name in recorded_names():
        level, metric, ops = name.split(":")
        # instance: per VM (only where it had an event: the alerts' long windows).
        assert level in {"instance", "cluster", "job"}, name
        assert metric.startswith("vmsnap_") and ops, name


def test_freeze_buckets_include_the_alert_thresholds() -> None:
    # VmsnapFrozenWindowTooLong counts jobs above le=10 exactly: 10 must be a boundary.
    freeze = next(f for f in FAMILIES if f.name == "vmsnap_freeze_duration_seconds")
    assert 10.0 in freeze.buckets and 5.0 in freeze.buckets


def test_docs_name_only_real_series() -> None:
    # The runbook and the dashboards doc tell operators what to query: every
    # vmsnap_* name they mention must exist (recorded names aside).
    require(OPERATIONS.exists(), "docs/operations.md")
    known = catalogue()
    bases = {f.name for f in FAMILIES}
    for doc in (OPERATIONS, ROOT / "docs" / "dashboards.md"):
        text = re.sub(r"\b(?:instance|cluster|job):vmsnap_\w+", "", doc.read_text())
        for name in set(re.findall(r"\bvmsnap_[a-z0-9_]+", text)):
            assert name in known or name in bases, f"{doc.name}: {name}"


# -- generated from the mixin config ----------------------------------------------------

BUILD_RULES = ROOT / "dashboards" / "build_rules.py"
# Raw series in an expression: a metric name not preceded by a recorded name's colon.
_RAW_SERIES = re.compile(r"(?<![\w:])(vmsnap_\w+|up)\b(\{[^}]*\})?")


@pytest.fixture(scope="module")
def build_rules() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vmsnap_build_rules", BUILD_RULES)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the module executes.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def raw_series_selectors(exprs: Iterable[str]) -> list[tuple[str, str]]:
    """(metric, its {matchers} or "") for every raw series in ``exprs``."""
    return [(name, matchers) for expr in exprs for name, matchers in _RAW_SERIES.findall(expr)]


def test_committed_rules_are_what_build_rules_generates(build_rules: ModuleType) -> None:
    assert build_rules.main(["--check"]) == 0, "run: .venv/bin/python dashboards/build_rules.py"
    for path in RULE_FILES:
        assert path.read_text().startswith("# GENERATED by dashboards/build_rules.py"), path.name


def test_build_rules_check_reports_drift(build_rules: ModuleType, tmp_path: Path) -> None:
    assert build_rules.main(["--check", "--out", str(tmp_path)]) == 1  # nothing there
    assert build_rules.main(["--out", str(tmp_path)]) == 0
    assert build_rules.main(["--check", "--out", str(tmp_path)]) == 0
    (tmp_path / "vmsnap.alerts.yml").write_text("groups: []\n")
    assert build_rules.main(["--check", "--out", str(tmp_path)]) == 1


def test_every_raw_series_in_the_rules_carries_the_selector() -> None:
    selector = MIXIN_CONFIG["selector"]
    found = raw_series_selectors(rule_exprs())
    assert len(found) > 30
    for name, matchers in found:
        assert matchers.startswith("{" + selector), (name, matchers)


def test_an_overridden_config_changes_selector_urls_and_thresholds(
    build_rules: ModuleType, tmp_path: Path
) -> None:
    # A team's override: its own scrape job, runbook copy, Grafana and one threshold.
    override = tmp_path / "team.json"
    override.write_text(
        json.dumps(
            {
                "selector": 'job="backup-agents", team="storage"',
                "runbookBaseUrl": "https://wiki.example.com/vmsnap/runbook",
                "grafanaBaseUrl": "https://grafana.example.com/",
                "thresholds": {"noSuccessHours": 50},
            }
        )
    )
    out = tmp_path / "rules"
    assert build_rules.main(["--config", str(override), "--out", str(out)]) == 0
    alerts = (out / "vmsnap.alerts.yml").read_text()
    rules = (out / "vmsnap.rules.yml").read_text()
    assert "vmsnap-sidecar" not in alerts + rules
    found = raw_series_selectors(rule_exprs([out / "vmsnap.rules.yml", out / "vmsnap.alerts.yml"]))
    assert len(found) > 30
    for name, matchers in found:
        assert matchers.startswith('{job="backup-agents", team="storage"'), (name, matchers)
    names = re.findall(r"^\s*- alert:\s*(\w+)$", alerts, re.MULTILINE)
    runbooks = re.findall(r'runbook_url: "([^"]*)"', alerts)
    assert runbooks == [f"https://wiki.example.com/vmsnap/runbook#{n.lower()}" for n in names]
    dashboards = re.findall(r'dashboard: "([^"]*)"', alerts)
    assert len(dashboards) == len(names)
    assert all(d.startswith("https://grafana.example.com/d/vmsnap-") for d in dashboards)
    assert "> 50 * 3600" in alerts and "offset 49h" in alerts
    # Untouched thresholds keep their defaults.
    assert "> 0.05" in alerts
    # The result is still valid Prometheus rules.
    result = run_promtool("check", "rules", out / "vmsnap.rules.yml", out / "vmsnap.alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_unknown_config_key_is_refused(build_rules: ModuleType, tmp_path: Path) -> None:
    # A misspelt key would otherwise be ignored and the default used silently.
    override = tmp_path / "typo.json"
    override.write_text(json.dumps({"thresholds": {"noSucessHours": 50}}))
    with pytest.raises(ValueError, match="noSucessHours"):
        build_rules.main(["--config", str(override), "--out", str(tmp_path)])
