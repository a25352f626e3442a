"""End to end (issue 6): real jobs -> spool -> snapshot-sidecar -> Prometheus -> rules, alerts
and every dashboard query.

One module-scoped setup starts every part for real, on loopback only:

* Azurite (the session fixture) holds the disks' page blobs;
* a loop ext4 filesystem that the jobs really freeze (``--mounts``);
* ``snapshot-sidecar`` (the console script) on the workspace's spool and its own
  state directory, serving /metrics on a free 127.0.0.1 port; its span export
  goes to an OTLP receiver that rejects every request (HTTP 400);
* Debian's ``prometheus`` with exemplar storage, scraping the sidecar every
  second as job "vmsnap-sidecar" with the region/cluster target labels the
  dashboards' variables read (and the instance relabelling of
  deploy/prometheus/prometheus.static.yml), evaluating copies of the project's
  rule files every second with every ``for:`` set to 0s.

Then real jobs run through ``snapshot-runtime run`` (after Prometheus scraped the
zero-initialised series once, so that ``increase()`` sees each job as a step):
two application-consistent successes, a pre-script timeout with
continueBackupOnFailure (filesystem-consistent, Pre-ScriptTimeout warning), a
pre-script that fails once and succeeds on its retry, a job with a missing disk
blob and a tiny spool cap (a disk failure, dropped log lines and spans), and a
job SIGKILLed while the filesystem is frozen (the watchdog thaws, the sidecar
counts it abandoned). One job's logsBlobUri points at a closed loopback port,
and one job directory holds a record of an unknown schema version (a runtime
newer than its sidecar). Those failure paths are there so that the panels
that show them have something to show.

The tests then require: the sidecar and Prometheus agree on every job; every
PromQL expression of every panel of every dashboard in dashboards/json/
returns data (instant, and over the test's time range for time-series
panels), with the variables resolved the way Grafana resolves them; the
freeze histogram's exemplars carry the jobs' trace ids; the pre-script
timeout alert fires and the alerts with no cause stay silent.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import re
import signal
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from snapshot_runtime.snapshot.host import VMBACKUP_CONF_ENV
from snapshot_runtime.snapshot.wireserver import WIRESERVER_ENV
from tests.freeze_support import wait_frozen, writable_within
from tests.support import jobkit
from tests.support.azurite import Azurite
from tests.support.faultproxy import FaultProxy
from tests.support.host_service import BlobDisk, HostService, host_settings
from tests.support.jobkit import SIDECAR, Workspace
from tests.support.loopfs import loop_filesystem
from tests.support.otlp_receiver import OtlpReceiver
from tests.support.processes import stop_process
from tests.support.prometheus import Prometheus, free_port, run_prometheus_config
from tests.support.requirements import require_root
from tests.support.waiting import wait_until
from tests.test_rules import RULE_FILES

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = sorted((ROOT / "dashboards" / "json").glob("*.json"))

SCRAPE_SECONDS = 1
JOB_NAME = "vmsnap-sidecar"  # the alerts and dashboards select it
REGION, CLUSTER = "e2e-westeurope", "e2e-sql"
INSTANCE = "127.0.0.1"  # the sidecar's host: instance after the static config's relabelling
RANGE_STEP = 2.0  # seconds between points of the range queries
WAIT = 30.0  # the bound of every wait below
POLL = 0.1  # each poll queries Prometheus or scrapes the sidecar: not faster

PRE_TIMEOUT = """\
#!/bin/sh
echo "pre-script: sleeping past timeoutInSeconds"
sleep 5
"""

PRE_RETRY = """\
#!/bin/sh
marks="$1"
if [ ! -e "$marks/retry.first-attempt" ]; then
  : > "$marks/retry.first-attempt"
  echo "pre-script: first attempt fails" >&2
  exit 1
fi
echo "pre-script: second attempt succeeds"
"""

# Queries that may legitimately have no data after this test's jobs, with the
# reason. They are still run, and must return NO data: if one ever has data,
# either the exemption is stale or something went wrong (both worth a look).
EXEMPT: dict[tuple[str, str, str], str] = {
    ("vmsnap-job-detail", "Thaw layers", "C"): (
        "backstop thaws: the third thaw layer acts only when the runtime AND its watchdog "
        "died while frozen and the freeze deadline passed; this test requires the "
        "VmsnapBackstopThaw alert not to fire (the killed job's watchdog thaws at once)"
    ),
    ("vmsnap-job-detail", "Sidecar memory and errors", "B"): (
        "vmsnap_sidecar_errors_total counts unexpected exceptions the sidecar's loops "
        "survived; no input makes a healthy sidecar raise one, and none may happen here"
    ),
}


# -- the scenario ----------------------------------------------------------------------


@dataclass
class Scenario:
    prom: Prometheus
    metrics_url: str
    sidecar_log: Path
    started_at: float  # wall clock just before Prometheus started
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> `run --json`
    trace_ids: dict[str, str] = field(default_factory=dict)  # name -> the record's trace id
    timings: dict[str, float] = field(default_factory=dict)

    def log(self) -> str:
        return self.sidecar_log.read_text(errors="replace")[-3000:]


# The operator's telemetry and runtime settings never reach the sidecar or the jobs.
SCRUBBED_ENV = ("OTEL_", "SNAPSHOT_RUNTIME_", "TRACEPARENT")


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def _sidecar_sum(metrics_url: str, name: str) -> float:
    """Sum of a family's samples on the sidecar's /metrics (Prometheus text format)."""
    total = 0.0
    for line in _get(metrics_url).splitlines():
        if re.match(rf"{re.escape(name)}(\{{| )", line):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _test_rule_files() -> dict[str, str]:
    """Copies of deploy/prometheus/rules/ for a test that cannot wait minutes.

    Every ``for:`` becomes 0s and every group ``interval:`` one scrape interval.
    The ``for`` semantics (pending, then firing) are proven by promtool's unit
    tests in tests/test_rules.py (deploy/prometheus/tests/); here only the
    expressions meet a real sidecar. The real rule files are never edited.
    """
    files = {}
    for path in RULE_FILES:
        text = path.read_text()
        text = re.sub(r"^(\s*)for:\s*\S+[ \t]*$", r"\1for: 0s", text, flags=re.MULTILINE)
        text = re.sub(
            r"^(\s*)interval:\s*\S+[ \t]*$",
            rf"\g<1>interval: {SCRAPE_SECONDS}s",
            text,
            flags=re.MULTILINE,
        )
        assert set(re.findall(r"^\s*for:\s*(\S+)", text, re.MULTILINE)) <= {"0s"}, path
        files[f"rules/{path.name}"] = text
    return files


def _prometheus_config(sidecar_port: int, rule_files: list[str]) -> dict[str, Any]:
    interval = f"{SCRAPE_SECONDS}s"
    return {
        "global": {
            "scrape_interval": interval,
            "scrape_timeout": interval,
            "evaluation_interval": interval,
        },
        "storage": {"exemplars": {"max_exemplars": 100000}},
        "rule_files": rule_files,
        "scrape_configs": [
            {
                "job_name": JOB_NAME,
                "static_configs": [
                    {
                        "targets": [f"127.0.0.1:{sidecar_port}"],
                        "labels": {"region": REGION, "cluster": CLUSTER},
                    }
                ],
                # As deploy/prometheus/prometheus.static.yml: instance = the host part.
                "relabel_configs": [
                    {
                        "source_labels": ["__address__"],
                        "regex": "([^:]+)(?::\\d+)?",
                        "target_label": "instance",
                        "replacement": "$1",
                    }
                ],
            }
        ],
    }


def _start_sidecar(
    ws: Workspace, state_dir: Path, port: int, otlp_endpoint: str, log: Path
) -> subprocess.Popen[bytes]:
    env = dict(os.environ)  # already without SCRUBBED_ENV (the fixture)
    env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = otlp_endpoint
    env["OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"] = "2"
    with open(log, "wb") as out:
        proc = ws.spawn(
            [
                SIDECAR,
                "--spool",
                str(ws.spool_dir),
                "--state-dir",
                str(state_dir),
                "--listen",
                f"127.0.0.1:{port}",
                "--poll-interval",
                "0.2",
                "--blob-timeout",
                "2",
                "--log-level",
                "INFO",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd="/",
        )
    return proc


def _run(
    ws: Workspace,
    name: str,
    disks: list[str],
    config: str,
    mount: str,
    *,
    logs_url: str | None = None,
    extra: tuple[str, ...] = (),
) -> dict[str, Any]:
    settings = ws.settings(disks, logs_url=logs_url, name=f"{name}.settings")
    result = ws.cli(
        *ws.run_args(settings, config=config, mounts=[mount], extra=["--quiet", *extra]),
        timeout=60,
    )
    doc = result.json
    doc["_returncode"] = result.returncode
    doc["_stderr"] = result.stderr[-2000:]
    return doc


def _run_host(ws: Workspace, azurite: Azurite, config: str, mount: str) -> dict[str, Any]:
    """One application-consistent job on the host path (docs/host-snapshot.md)."""
    container = azurite.container()
    azurite.create_page_blob(container, "host-lun0.vhd")
    settings, _ = host_settings(ws, luns=[0], task_id=f"{uuid.uuid4()}_1", name="host.settings")
    with (
        HostService(
            {0: BlobDisk(container, "host-lun0.vhd")},
            blob_connection_string=azurite.connection_string,
            blob_endpoint=azurite.endpoint,
        ) as host,
        pytest.MonkeyPatch.context() as mp,
    ):
        mp.setenv(WIRESERVER_ENV, host.address)
        mp.setenv(VMBACKUP_CONF_ENV, str(ws.root / "no-vmbackup.conf"))
        result = ws.cli(
            *ws.run_args(settings, config=config, mounts=[mount], extra=["--quiet"]),
            timeout=60,
        )
        assert len(host.calls_of("dosnapshot")) == 1, result.stderr[-2000:]
    doc = result.json
    doc["_returncode"] = result.returncode
    doc["_stderr"] = result.stderr[-2000:]
    return doc


def _trace_id(ws: Workspace, task_id: str) -> str:
    """The trace id the runtime recorded (``<state-dir>/jobs/<taskId>.json``).

    (``run --json`` does not print it: its summary has no trace id.)
    """
    doc = json.loads((ws.state_dir / "jobs" / f"{task_id}.json").read_text())
    trace_id = doc["record"]["trace_id"]
    # docs/telemetry.md: a `<UUID>_<N>` taskId's trace id is the UUID's 32 hex digits.
    assert trace_id == task_id.partition("_")[0].replace("-", ""), (task_id, trace_id)
    return str(trace_id)


def _run_jobs(scenario: Scenario, ws: Workspace, azurite: Azurite, mount: str) -> None:
    jobs, t0 = scenario.jobs, time.monotonic()
    std_config = ws.config(name="std.json")
    container = azurite.container()

    # Two application-consistent successes. ok-1's log is mirrored to Azurite; ok-2's
    # logsBlobUri points at a closed loopback port: mirror errors and a backlog that
    # does not drain (the panels and alerts about log mirroring).
    jobs["ok-1"] = _run(
        ws,
        "ok-1",
        jobkit.make_disks(azurite, 2),
        std_config,
        mount,
        logs_url=azurite.sas_url(container, f"logs-{uuid.uuid4().hex}.log"),
    )
    dead = f"http://127.0.0.1:{free_port()}/devstoreaccount1"
    jobs["ok-2"] = _run(
        ws,
        "ok-2",
        jobkit.make_disks(azurite, 1),
        std_config,
        mount,
        logs_url=azurite.sas_url(container, "unreachable.log", endpoint=dead),
    )
    # A pre-script timeout; continueBackupOnFailure -> filesystem-consistent snapshot.
    jobs["timeout"] = _run(
        ws,
        "timeout",
        jobkit.make_disks(azurite, 1),
        ws.config(
            pre=ws.script("pre-timeout.sh", PRE_TIMEOUT),
            post=ws.script("post.sh", jobkit.POST_SCRIPT),
            name="timeout.json",
            timeoutInSeconds=1,
            continueBackupOnFailure=True,
        ),
        mount,
    )
    # A pre-script that fails once and succeeds on its one retry.
    jobs["retry"] = _run(
        ws,
        "retry",
        jobkit.make_disks(azurite, 1),
        ws.config(
            pre=ws.script("pre-retry.sh", PRE_RETRY),
            post=ws.script("post.sh", jobkit.POST_SCRIPT),
            name="retry.json",
            preScriptNoOfRetries=1,
        ),
        mount,
    )
    # A managed-disk VM on the host path (the WireServer emulator over an Azurite
    # page blob): the "Snapshot path" panel's host series. Before disk-fault, which
    # must stay the last completed job (VmsnapJobFailed).
    jobs["host"] = _run_host(ws, azurite, std_config, mount)
    # One disk whose blob does not exist (a disk failure, by kind), and a spool cap
    # the spool already exceeds (the job's log lines and spans are dropped, counted).
    disk_container = azurite.container()
    faulty = [
        *jobkit.make_disks(azurite, 1, container=disk_container),
        azurite.sas_url(disk_container, "missing.vhd"),
    ]
    jobs["disk-fault"] = _run(
        ws, "disk-fault", faulty, std_config, mount, extra=("--spool-max-bytes", "4096")
    )
    scenario.timings["jobs"] = time.monotonic() - t0


def _run_killed_job(scenario: Scenario, ws: Workspace, azurite: Azurite, mount: str) -> None:
    """A job SIGKILLed while frozen: its watchdog thaws; the sidecar counts it abandoned.

    Last of all, so that no later job is frozen when the sidecar's backstop looks at
    this one's mounts (its deadline is 20 s away; the watchdog has thawed by then).
    """
    t0 = time.monotonic()
    with FaultProxy(azurite.host, azurite.port, max_lifetime=60) as proxy:
        proxy.set_latency(30.0, match="comp=snapshot")  # the job sits frozen in the snapshot
        disks = jobkit.make_disks(azurite, 1, endpoints={0: proxy.endpoint()})
        args = ws.run_args(
            ws.settings(disks, name="killed.settings"),
            config=ws.config(name="killed.json"),
            mounts=[mount],
            extra=["--freeze-timeout", "20", "--quiet"],
        )
        proc = ws.start_cli(*args)
        blocked = wait_frozen(mount, proc, within=WAIT)
        for pid in jobkit.child_pids(proc.pid):
            ws.adopt_pid(pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert blocked.wait(5.0), "still frozen 5 s after the runtime was SIGKILLed"
    assert writable_within(mount, 1.0)
    scenario.timings["killed job"] = time.monotonic() - t0


def _inject_newer_record(ws: Workspace) -> None:
    """A job directory whose record has a schema version this sidecar does not know.

    The runtime writes records atomically, so an unreadable record only comes from
    outside this runtime: here, a newer runtime than the sidecar (docs/spool.md:
    readers refuse a schema_version they do not know).
    """
    job_dir = ws.spool_dir / "jobs" / f"{uuid.uuid4()}_1"
    job_dir.mkdir(mode=0o700, parents=True)
    record = job_dir / "record.json"
    record.write_text(json.dumps({"schema": "snapshot-runtime/job-record", "schema_version": 99}))
    record.chmod(0o600)


@pytest.fixture(scope="module")
def scenario(azurite: Azurite) -> Iterator[Scenario]:
    require_root()
    began = time.monotonic()
    with contextlib.ExitStack() as stack:
        mp = stack.enter_context(pytest.MonkeyPatch.context())
        for name in list(os.environ):  # the CLI jobs inherit this environment
            if name.startswith(SCRUBBED_ENV):
                mp.delenv(name)
        fs = stack.enter_context(loop_filesystem("ext4"))
        ws = stack.enter_context(jobkit.workspace())  # closed before the unmount
        receiver = stack.enter_context(OtlpReceiver(status=400))  # a collector that rejects

        # Prometheus first: it discovers its targets on a 5 s tick after it starts,
        # so the sidecar comes up meanwhile (the scrapes before that fail: up == 0).
        sidecar_port = free_port()
        rule_files = _test_rule_files()
        started_at = time.time()
        prom = stack.enter_context(
            run_prometheus_config(
                _prometheus_config(sidecar_port, sorted(rule_files)), files=rule_files
            )
        )
        state_dir = ws.root / "sidecar-state"
        sidecar_log = ws.root / "sidecar.log"
        sidecar = _start_sidecar(ws, state_dir, sidecar_port, receiver.endpoint, sidecar_log)
        stack.callback(stop_process, sidecar)
        metrics_url = f"http://127.0.0.1:{sidecar_port}/metrics"

        def sidecar_up() -> bool:
            assert sidecar.poll() is None, sidecar_log.read_text(errors="replace")
            try:
                return _get(f"http://127.0.0.1:{sidecar_port}/healthz").strip() == "ok"
            except OSError:
                return False

        wait_until(sidecar_up, WAIT, "the sidecar's /healthz", interval=POLL)
        # Jobs started from here seal their logsBlobUri to the sidecar (docs/spool.md).
        assert (ws.spool_dir / "sidecar.pub").is_file()
        scenario = Scenario(prom, metrics_url, sidecar_log, started_at=started_at)
        scenario.timings["start"] = time.monotonic() - began

        # The zero-initialised series scraped once before any job: each job is then
        # a step that increase() sees, not a series appearing at 1.
        prom.wait_for('vmsnap_script_timeouts_total{script="pre"} == 0', bool, timeout=WAIT)
        scenario.timings["first scrape"] = time.monotonic() - began
        _inject_newer_record(ws)
        _run_jobs(scenario, ws, azurite, fs.mountpoint)
        _run_killed_job(scenario, ws, azurite, fs.mountpoint)
        for name, doc in scenario.jobs.items():
            scenario.trace_ids[name] = _trace_id(ws, doc["taskId"])

        # The sidecar has ingested everything ...
        t0 = time.monotonic()
        complete = len(scenario.jobs)
        wait_until(
            lambda: (
                _sidecar_sum(metrics_url, "vmsnap_jobs_total") == complete
                and _sidecar_sum(metrics_url, "vmsnap_jobs_abandoned_total") == 1
                and _sidecar_sum(metrics_url, "vmsnap_watchdog_thaws_total") >= 1
                and _sidecar_sum(metrics_url, "vmsnap_sidecar_records_invalid_total") >= 1
                and _sidecar_sum(metrics_url, "vmsnap_sidecar_span_export_errors_total") >= 1
                and _sidecar_sum(metrics_url, "vmsnap_sidecar_log_mirror_errors_total") >= 1
            ),
            WAIT,
            f"the sidecar to count {complete} jobs, 1 abandoned, 1 watchdog thaw, 1 invalid record",
            interval=POLL,
            detail=scenario.log,
        )
        # ... Prometheus has scraped it ...
        scraped = [
            f"sum(vmsnap_jobs_total) == {complete}",
            "vmsnap_jobs_abandoned_total == 1",
            "sum(vmsnap_watchdog_thaws_total) >= 1",
            "sum(vmsnap_sidecar_records_invalid_total) >= 1",
            "sum(vmsnap_sidecar_span_export_errors_total) >= 1",
            "sum(vmsnap_sidecar_log_mirror_errors_total) >= 1",
        ]
        for expr in scraped:
            prom.wait_for(expr, bool, timeout=WAIT)
        seen_at = time.time()

        # ... and every rule group has been evaluated since.
        def evaluated() -> bool:
            groups = prom.api("rules")["groups"]
            return bool(groups) and all(
                _epoch(g["lastEvaluation"]) > seen_at + SCRAPE_SECONDS for g in groups
            )

        wait_until(
            evaluated, WAIT, "every rule group to be evaluated after the last scrape", interval=POLL
        )
        scenario.timings["ingest+scrape+rules"] = time.monotonic() - t0
        scenario.timings["setup"] = time.monotonic() - began
        yield scenario


def _epoch(rfc3339: str) -> float:
    """Prometheus' RFC 3339 timestamps (nanosecond fractions) as epoch seconds."""
    match = re.fullmatch(r"(.+?)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", rfc3339)
    assert match, rfc3339
    base = datetime.fromisoformat(match[1] + ("+00:00" if match[3] == "Z" else match[3]))
    return base.timestamp() + float(f"0.{match[2] or 0}")


# -- the scenario happened -------------------------------------------------------------


@pytest.mark.root
@pytest.mark.azurite
def test_the_jobs_ended_as_planned_and_prometheus_agrees(scenario: Scenario) -> None:
    jobs = scenario.jobs
    for name in ("ok-1", "ok-2", "retry", "host"):
        assert jobs[name]["consistency"] == "application", (name, jobs[name])
        assert jobs[name]["snapshotTaken"] is True
    assert jobs["retry"]["scripts"]["pre"]["attempts"] == 2, jobs["retry"]["scripts"]
    timeout = jobs["timeout"]
    assert timeout["consistency"] == "filesystem", timeout
    assert "Pre-ScriptTimeout" in timeout["warnings"], timeout
    fault = jobs["disk-fault"]
    assert [d["ok"] for d in fault["disks"]] == [True, False], fault["disks"]

    q = scenario.prom.value
    # ok-1, ok-2, retry and the host-path job.
    assert q('sum(vmsnap_jobs_total{consistency="application"})') == 4
    assert q('vmsnap_snapshot_jobs_total{path="host",outcome="success"}') == 1
    # ok-1, ok-2, timeout, retry succeeded on the guest path; disk-fault failed on it.
    assert q('vmsnap_snapshot_jobs_total{path="guest",outcome="success"}') == 4
    assert q('vmsnap_snapshot_jobs_total{path="guest",outcome="failed"}') == 1
    assert q('vmsnap_snapshot_runs_total{path="host"}') == 1
    assert q("sum(vmsnap_snapshot_fallbacks_total)") == 0
    assert q('sum(vmsnap_jobs_total{consistency="filesystem"})') == 1
    assert q('vmsnap_script_timeouts_total{script="pre"}') == 1
    assert q('vmsnap_script_retries_total{script="pre"}') == 1
    # Warnings by group; the exact code is in the job record (checked above).
    assert q('vmsnap_job_warnings_total{group="pre_script"}') == 1
    assert q("count(vmsnap_last_job_info)") == 1
    assert (q('vmsnap_phase_seconds_total{phase="snapshot"}') or 0) > 0
    assert q("sum(vmsnap_disk_snapshot_failures_total)") == 1
    assert (q("sum(vmsnap_spool_dropped_total)") or 0) > 0
    assert q("vmsnap_sidecar_records_invalid_total") == 1  # the schema one
    assert q('vmsnap_watchdog_thaws_total{reason="eof"}') == 1
    assert q("vmsnap_backstop_thaws_total") == 0
    assert q("sum(vmsnap_sidecar_errors_total)") == 0, scenario.log()
    # The target labels the dashboards' variables read.
    (build,) = scenario.prom.query("vmsnap_build_info")
    labels = build["metric"]
    assert (labels["job"], labels["instance"]) == (JOB_NAME, INSTANCE)
    assert (labels["region"], labels["cluster"]) == (REGION, CLUSTER)
    print(f"\n[e2e] timings (s): { {k: round(v, 1) for k, v in scenario.timings.items()} }")


# -- every dashboard query has data ------------------------------------------------------


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str  # uid
    panel: str  # title
    ref: str  # the target's refId
    expr: str  # as committed, with Grafana's variables
    is_range: bool  # a range query in Grafana (time-series, heatmap...)
    min_interval: str | None  # the panel's "interval" (Grafana's minimum $__interval)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.dashboard, self.panel, self.ref)


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # rows, collapsed or not


def _panel_queries(doc: dict[str, Any]) -> list[PanelQuery]:
    out = []
    for panel in _panels(doc["panels"]):
        for target in panel.get("targets") or []:
            if "expr" not in target:
                continue
            out.append(
                PanelQuery(
                    dashboard=doc["uid"],
                    panel=panel["title"],
                    ref=target.get("refId", "A"),
                    expr=target["expr"],
                    # Grafana's Prometheus queries are range queries unless instant only.
                    is_range=bool(target.get("range", not target.get("instant", False))),
                    min_interval=panel.get("interval") or None,
                )
            )
    return out


_DURATION = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


def _seconds(duration: str) -> float:
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|[smhdwy])", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * _DURATION[u] for n, u in parts)


def _special_regex_escape(value: str) -> str:
    """Grafana's prometheusSpecialRegexEscape: a value inside a =~ "..." matcher."""
    return re.sub(r"([$^*{}\[\]'+?.()|])", r"\\\\\1", value.replace("\\", "\\\\\\\\"))


def _regular_escape(value: str) -> str:
    """Grafana's prometheusRegularEscape: a value inside a = "..." matcher."""
    return value.replace("\\", "\\\\").replace("'", "\\\\'")


_VARIABLE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\$(\w+)|\[\[(\w+)\]\]")


def _render(expr: str, values: dict[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match[1] or match[2] or match[3]
        return values.get(name, match[0])

    return _VARIABLE.sub(replace, expr)


def _variable_choices(
    prom: Prometheus, doc: dict[str, Any], start: float, end: float, failures: list[str]
) -> list[dict[str, str]]:
    """Each set of variable values to run the dashboard with.

    Two selections, as a user makes them: "All" wherever a variable offers it,
    and the first value each query variable finds (Grafana's default when there
    is no All). The query variables are resolved like Grafana does, through the
    label values API, each with the earlier variables substituted; the values
    are escaped as Grafana's Prometheus datasource escapes them. Each value of
    a custom variable ($window) is a choice of its own.
    """
    choices: list[dict[str, str]] = []
    for mode in ("all", "first"):
        values: dict[str, str] = {}
        custom: dict[str, list[str]] = {}
        for var in doc.get("templating", {}).get("list", []):
            name, kind = var["name"], var["type"]
            if kind == "datasource":
                continue
            if kind == "custom":
                options = [o["value"] for o in var.get("options", [])] or [
                    v.strip() for v in str(var["query"]).split(",")
                ]
                custom[name] = options
                values[name] = options[0]
                continue
            assert kind == "query", f"{doc['uid']}: variable {name} of type {kind}"
            definition = var["query"]
            if isinstance(definition, dict):
                definition = definition.get("query", "")
            match = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", definition)
            assert match, f"{doc['uid']}: variable {name}: {definition}"
            selector = _render(match[1], values)
            found = sorted(
                prom.api(
                    f"label/{match[2]}/values",
                    **{"match[]": selector, "start": str(start), "end": str(end)},
                )
            )
            if var.get("regex"):
                found = [v for v in found if re.search(var["regex"], v)]
            if not found:
                failures.append(f"{doc['uid']}: variable ${name} ({definition}) has no values")
                return []
            multi = bool(var.get("multi") or var.get("includeAll"))
            if mode == "all" and var.get("includeAll"):
                values[name] = var.get("allValue") or "|".join(map(re.escape, found))
            else:
                values[name] = (
                    _special_regex_escape(found[0]) if multi else _regular_escape(found[0])
                )
        for combo in itertools.product(*custom.values()):
            choices.append({**values, **dict(zip(custom, combo, strict=True))})
    return choices


def _builtins(doc: dict[str, Any], query: PanelQuery) -> dict[str, str]:
    """Grafana's global variables for this panel.

    $__range: the dashboard's default time range (now-7d). $__interval: the
    panel's minimum interval (15m, 1h, 5m...), or the datasource's scrape
    interval without one. Grafana uses that minimum while range / data points
    is shorter; on longer ranges $__interval only grows, and a longer
    increase() window can only hold more of this test's jobs, not fewer.
    $__rate_interval: max($__interval + scrape interval, 4 x scrape interval).
    """
    match = re.fullmatch(r"now-(\w+)", doc["time"]["from"])
    assert match and doc["time"]["to"] == "now", doc["time"]
    range_s = _seconds(match[1])
    interval = _seconds(query.min_interval) if query.min_interval else SCRAPE_SECONDS
    rate_interval = max(interval + SCRAPE_SECONDS, 4 * SCRAPE_SECONDS)
    return {
        "__range": match[1],
        "__range_s": str(int(range_s)),
        "__range_ms": str(int(range_s * 1000)),
        "__interval": f"{int(interval)}s",
        "__interval_ms": str(int(interval * 1000)),
        "__rate_interval": f"{int(rate_interval)}s",
    }


def _has_data(data: dict[str, Any]) -> bool:
    """At least one sample that is a number (NaN is Grafana's "no value")."""
    kind, result = data["resultType"], data["result"]
    if kind == "scalar":
        return not math.isnan(float(result[1]))
    if kind == "vector":
        return any(not math.isnan(float(s["value"][1])) for s in result)
    if kind == "matrix":
        return any(not math.isnan(float(v)) for s in result for _, v in s["values"])
    return False


def _run_query(prom: Prometheus, expr: str, is_range: bool, start: float, end: float) -> bool:
    if is_range:
        matrix = prom.query_range(expr, start, end, RANGE_STEP)
        return _has_data({"resultType": "matrix", "result": matrix})
    return _has_data(prom.api("query", query=expr, time=str(end)))


@pytest.mark.root
@pytest.mark.azurite
def test_every_dashboard_query_has_data(scenario: Scenario) -> None:
    prom = scenario.prom
    start, end = scenario.started_at, time.time()
    failures: list[str] = []
    checked: list[tuple[PanelQuery, str, bool]] = []  # (query, rendered, range?)
    exempt_seen: set[tuple[str, str, str]] = set()
    assert DASHBOARDS, "no dashboards in dashboards/json/"
    for path in DASHBOARDS:
        doc = json.loads(path.read_text())
        queries = _panel_queries(doc)
        assert queries, f"{path.name}: no panel queries"
        choices = _variable_choices(prom, doc, start, end, failures)
        for query in queries:
            rendered: set[tuple[str, bool]] = set()
            for values in choices:
                expr = _render(query.expr, {**values, **_builtins(doc, query)})
                leftover = _VARIABLE.search(expr)
                if leftover:
                    failures.append(f"{query.key}: variable {leftover[0]} not substituted: {expr}")
                    continue
                # Grafana runs a range panel's query over the time range; every
                # query must also answer at "now" (stats, tables, the last point).
                rendered.add((expr, False))
                if query.is_range:
                    rendered.add((expr, True))
            for expr, is_range in sorted(rendered):
                checked.append((query, expr, is_range))
            if query.key in EXEMPT:
                exempt_seen.add(query.key)

    def run_all(todo: list[tuple[PanelQuery, str, bool]]) -> list[tuple[PanelQuery, str, bool]]:
        wrong = []
        for query, expr, is_range in todo:
            has = _run_query(prom, expr, is_range, start, time.time() if is_range else end)
            if has == (query.key in EXEMPT):
                wrong.append((query, expr, is_range))
        return wrong

    wrong = run_all(checked)
    # Every wait above is done; a short second look only absorbs a scrape in flight.
    deadline = time.monotonic() + 5
    while wrong and time.monotonic() < deadline:
        time.sleep(1)
        end = time.time()
        wrong = run_all(wrong)
    for query, expr, is_range in wrong:
        kind = "query_range" if is_range else "query"
        if query.key in EXEMPT:
            failures.append(
                f"{query.dashboard} / {query.panel!r} [{query.ref}] has data although exempt "
                f"({EXEMPT[query.key]}); {kind}: {expr}"
            )
        else:
            failures.append(
                f"{query.dashboard} / {query.panel!r} [{query.ref}] no data; {kind}: {expr}"
            )
    stale = set(EXEMPT) - exempt_seen
    if stale:
        failures.append(f"exemptions for queries that no dashboard has: {sorted(stale)}")
    panels = {(q.dashboard, q.panel) for q, _, _ in checked}
    targets = {q.key for q, _, _ in checked}
    print(
        f"\n[e2e] {len(DASHBOARDS)} dashboards, {len(panels)} panels, {len(targets)} targets: "
        f"{len(checked)} queries run ({sum(r for _, _, r in checked)} range), "
        f"{len(EXEMPT)} targets exempt (required empty)"
    )
    assert not failures, "\n".join(failures)


@pytest.mark.root
@pytest.mark.azurite
def test_fleet_thaw_panel_shows_the_killed_jobs_watchdog_thaw(scenario: Scenario) -> None:
    """The fleet's "Freezes not ended by the runtime" counts a runtime killed while frozen.

    Its watchdog thawed (report reason eof); the job's record never completed, so
    vmsnap_freezes_total never sees that freeze: the panel must read the watchdog's
    reports too, and it did not before this test (dashboards/build.py).
    """
    prom = scenario.prom
    doc = json.loads((ROOT / "dashboards" / "json" / "vmsnap-fleet-freeze.json").read_text())
    (panel,) = [
        p for p in _panels(doc["panels"]) if p["title"] == "Freezes not ended by the runtime"
    ]
    queries = [q for q in _panel_queries(doc) if q.panel == panel["title"]]
    end = time.time()
    failures: list[str] = []
    choices = _variable_choices(prom, doc, scenario.started_at, end, failures)
    assert choices, failures
    values = choices[0]  # "All" for region, cluster and VM
    shown: dict[str, float] = {}
    for query in queries:
        expr = _render(query.expr, {**values, **_builtins(doc, query)})
        for sample in prom.api("query", query=expr, time=str(end))["result"]:
            shown[f"{query.ref} {sample['metric']}"] = float(sample["value"][1])
    assert sum(shown.values()) >= 1, shown
    assert any("eof" in k and v >= 1 for k, v in shown.items()), shown


# -- exemplars and alerts ---------------------------------------------------------------


@pytest.mark.root
@pytest.mark.azurite
def test_freeze_exemplars_carry_the_jobs_trace_ids(scenario: Scenario) -> None:
    series = scenario.prom.api(
        "query_exemplars",
        query="vmsnap_freeze_duration_seconds_bucket",
        start=str(scenario.started_at - 60),
        end=str(time.time() + 60),
    )
    found = {e["labels"].get("trace_id") for s in series for e in s["exemplars"]}
    ours = set(scenario.trace_ids.values())
    # Each bucket carries the trace id of the latest job that fell into it.
    assert found & ours, (found, scenario.trace_ids)
    # Nothing else is in this fresh sidecar's state: every exemplar is one of our jobs.
    assert found <= ours, (found - ours, scenario.trace_ids)


# Alerts the scenario must not set off: nothing caused them.
SILENT_ALERTS = (
    "VmsnapBackstopThaw",  # the killed job's watchdog thawed: the backstop had nothing to do
    "VmsnapPostScriptTimeout",
    "VmsnapFrozenWindowTooLong",
    "VmsnapFrozenWindowP99High",
    "VmsnapNoRecentSuccess",
    "VmsnapSidecarDown",
    "VmsnapHostFallbacksRising",  # the host-path job's presnapshot was accepted
)


@pytest.mark.root
@pytest.mark.azurite
def test_pre_script_timeout_alert_fires_and_the_others_stay_silent(scenario: Scenario) -> None:
    prom = scenario.prom
    # Every rule of the project's files is loaded and evaluates (no rule errors).
    rules = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
    names = {r["name"] for r in rules}
    for path in RULE_FILES:
        for name in re.findall(r"^\s*- (?:alert|record): (\S+)", path.read_text(), re.MULTILINE):
            assert name in names, f"{name} ({path.name}) not loaded"
    unhealthy = [(r["name"], r.get("lastError")) for r in rules if r.get("health") != "ok"]
    assert not unhealthy, unhealthy

    def alerts() -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for alert in prom.api("alerts")["alerts"]:
            out.setdefault(alert["labels"]["alertname"], []).append(alert)
        return out

    wait_until(
        lambda: any(
            a["state"] == "firing" for a in alerts().get("VmsnapPreScriptTimeoutRateHigh", [])
        ),
        WAIT,
        "VmsnapPreScriptTimeoutRateHigh to fire",
        interval=POLL,
    )
    current = alerts()
    (fired,) = current["VmsnapPreScriptTimeoutRateHigh"]
    labels = fired["labels"]
    assert (labels["job"], labels["region"], labels["cluster"]) == (JOB_NAME, REGION, CLUSTER)
    assert labels["script"] == "pre" and labels["severity"] == "warning"
    assert float(fired["value"]) > 0.05
    # The log mirror failure this scenario made (ok-2's unreachable logsBlobUri).
    assert any(a["state"] == "firing" for a in current.get("VmsnapLogMirrorFailing", [])), current
    for name in SILENT_ALERTS:
        assert name not in current, (name, current[name])
    print(f"\n[e2e] alerts: { {n: [a['state'] for a in v] for n, v in current.items()} }")


# What this scenario does, and the failure alerts it must raise: the SIGKILLed
# job (its watchdog thawed: reason eof; the sidecar abandons it), the record of
# a newer schema (not ingestible), the pre-script timeout that continued to a
# filesystem-consistent snapshot on a VM running pre-scripts, the spool cap the
# disk-fault job ran under (dropped log lines and spans), and that job, the last
# to complete, failing (no restore point: its second disk's blob is missing).
FAILURE_ALERTS: dict[str, dict[str, str]] = {
    "VmsnapJobFailed": {"severity": "critical"},
    "VmsnapWatchdogThaw": {"reason": "eof", "severity": "critical"},
    "VmsnapJobAbandoned": {"severity": "warning"},
    # No reason label (series budget): the sidecar's log names it (checked below).
    "VmsnapRecordsInvalid": {"severity": "warning"},
    "VmsnapConsistencyDowngraded": {"severity": "warning"},
    "VmsnapSpoolDropped": {"severity": "warning"},
}
# And what it does not do: the sidecar is up and exposes its metrics, no foreign
# writer touches a log blob, no log is given up within the test.
SILENT_FAILURE_ALERTS = (
    "VmsnapSidecarMetricsMissing",
    "VmsnapSidecarVanished",
    "VmsnapLogMirrorConflict",
    "VmsnapLogMirrorAbandoned",
)


@pytest.mark.root
@pytest.mark.azurite
def test_failure_alerts_fire_on_a_real_sidecar(scenario: Scenario) -> None:
    prom = scenario.prom

    def firing() -> dict[str, list[dict[str, str]]]:
        out: dict[str, list[dict[str, str]]] = {}
        for alert in prom.api("alerts")["alerts"]:
            if alert["state"] == "firing":
                out.setdefault(alert["labels"]["alertname"], []).append(alert["labels"])
        return out

    wait_until(
        lambda: set(FAILURE_ALERTS) <= set(firing()),
        WAIT,
        f"{sorted(FAILURE_ALERTS)} to fire",
        interval=POLL,
        detail=lambda: str(sorted(firing())),
    )
    current = firing()
    for name, expected in FAILURE_ALERTS.items():
        labels = [a for a in current[name] if a["job"] == JOB_NAME]
        assert labels, (name, current[name])
        for want_label, want in expected.items():
            assert any(a.get(want_label) == want for a in labels), (name, want_label, labels)
        # Per-VM alerts keep the VM and the scrape's region/cluster.
        assert all((a["region"], a["cluster"]) == (REGION, CLUSTER) for a in labels), labels
    assert "not ingestible (schema)" in scenario.sidecar_log.read_text(errors="replace")
    drops = {a["kind"] for a in current["VmsnapSpoolDropped"]}
    assert drops <= {"log_lines", "spans"} and drops, drops
    for name in SILENT_FAILURE_ALERTS:
        assert name not in current, (name, current[name])
    # The rules carry absolute runbook links built from the mixin's base.
    rules = [r for g in prom.api("rules")["groups"] for r in g["rules"] if r["type"] == "alerting"]
    for rule in rules:
        url = rule["annotations"]["runbook_url"]
        assert url.startswith("https://") and url.endswith("#" + rule["name"].lower()), url
