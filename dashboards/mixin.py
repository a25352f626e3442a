"""The mixin's one config: what the dashboards and the rules share.

deploy/mixin/config.json holds the defaults. A team overrides any of it with
its own JSON file (``--config my.json`` on dashboards/build.py and
dashboards/build_rules.py): keys it sets replace the defaults, ``thresholds``
key by key (docs/dashboards.md, "Overriding the mixin").

* ``selector``: the label matchers that pick the sidecar's series out of a
  shared Prometheus (every metric of every rule and panel carries it);
* ``runbookBaseUrl``: alerts' runbook_url is this plus ``#<alertname>``;
* ``grafanaBaseUrl``: alerts' dashboard links are this plus ``/d/<uid>``;
* ``thresholds``: alert thresholds and ``for:`` durations.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_CONFIG", "MixinConfig", "Thresholds", "load"]

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "mixin" / "config.json"


@dataclass(frozen=True)
class Thresholds:
    pre_script_timeout_ratio: float
    frozen_window_seconds: float
    frozen_window_p99_seconds: float
    no_success_hours: int
    sidecar_down_for: str
    sidecar_vanished_for: str
    host_fallback_ratio: float
    host_fallback_min_jobs: int


@dataclass(frozen=True)
class MixinConfig:
    selector: str
    runbook_base_url: str
    grafana_base_url: str
    thresholds: Thresholds

    def runbook(self, alert: str) -> str:
        return f"{self.runbook_base_url}#{alert.lower()}"

    def dashboard(self, path: str) -> str:
        """An absolute link to a dashboard; ``path`` starts at /d/<uid>."""
        return f"{self.grafana_base_url.rstrip('/')}{path}"


def _merged(defaults: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    unknown = set(override) - set(defaults)
    if unknown:
        raise ValueError(f"unknown mixin config keys: {sorted(unknown)}")
    out = dict(defaults)
    for key, value in override.items():
        out[key] = _merged(defaults[key], value) if isinstance(defaults[key], dict) else value
    return out


def load(override: Path | None = None) -> MixinConfig:
    """The defaults, with ``override``'s keys (a JSON file) laid over them."""
    raw: dict[str, Any] = json.loads(DEFAULT_CONFIG.read_text(encoding="utf-8"))
    if override is not None:
        raw = _merged(raw, json.loads(override.read_text(encoding="utf-8")))
    t = raw["thresholds"]
    return MixinConfig(
        selector=raw["selector"],
        runbook_base_url=raw["runbookBaseUrl"],
        grafana_base_url=raw["grafanaBaseUrl"],
        thresholds=Thresholds(
            pre_script_timeout_ratio=float(t["preScriptTimeoutRatio"]),
            frozen_window_seconds=float(t["frozenWindowSeconds"]),
            frozen_window_p99_seconds=float(t["frozenWindowP99Seconds"]),
            no_success_hours=int(t["noSuccessHours"]),
            sidecar_down_for=str(t["sidecarDownFor"]),
            sidecar_vanished_for=str(t["sidecarVanishedFor"]),
            host_fallback_ratio=float(t["hostFallbackRatio"]),
            host_fallback_min_jobs=int(t["hostFallbackMinJobs"]),
        ),
    )
