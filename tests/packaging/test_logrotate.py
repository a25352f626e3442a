"""deploy/logrotate/snapshot-runtime: checked by logrotate itself, then a real forced rotation.

The rules are read by the real ``logrotate`` (``-d``: parse and plan, change
nothing), then applied for real (``-f -s STATE``) to copies of the rules whose
paths point into a temporary directory, while the runtime's own writers are
writing: the job log (``JobLog``, which holds its file open for the job) and
the sidecar's ``--log-file`` handler. Every line must survive, exactly once
and in order, across the rotated and the new file.
"""

from __future__ import annotations

import gzip
import json
import logging
import logging.handlers
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path

from snapshot_runtime.core.redact import Redactor
from snapshot_runtime.telemetry.job_log import JobLog
from tests.support.handlerkit import REPO
from tests.support.requirements import require
from tests.support.waiting import wait_until

RULES = REPO / "deploy" / "logrotate" / "snapshot-runtime"
EXTENSION_DIR = "/var/log/azure/Microsoft.Azure.RecoveryServices.VMSnapshotLinux"
SIDECAR_DIR = "/var/log/snapshot-sidecar"


def _logrotate() -> str:
    path = shutil.which("logrotate") or "/usr/sbin/logrotate"
    require(os.path.exists(path), "needs logrotate (scripts/install-system-deps.sh)")
    return path


def _rules_in(tmp_path: Path) -> tuple[Path, Path, Path]:
    """The shipped rules with their directories moved under tmp_path; (conf, ext, sidecar)."""
    ext, sidecar = tmp_path / "azure-ext", tmp_path / "sidecar"
    ext.mkdir(mode=0o755)
    sidecar.mkdir(mode=0o750)
    text = RULES.read_text()
    assert EXTENSION_DIR in text and SIDECAR_DIR in text
    conf = tmp_path / "logrotate.conf"
    conf.write_text(text.replace(EXTENSION_DIR, str(ext)).replace(SIDECAR_DIR, str(sidecar)))
    conf.chmod(0o644)  # logrotate ignores a config others may write
    return conf, ext, sidecar


def _rotate(conf: Path, state: Path) -> None:
    done = subprocess.run(
        [_logrotate(), "-f", "-s", str(state), str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "error" not in done.stderr.lower(), done.stderr


def test_logrotate_accepts_the_shipped_rules() -> None:
    """`logrotate -d` parses the rules and plans both groups without an error."""
    done = subprocess.run(
        [_logrotate(), "-d", str(RULES)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout + done.stderr
    assert "error" not in out.lower(), out
    assert f"considering log {EXTENSION_DIR}/extension.log" in out
    assert f"considering log {SIDECAR_DIR}/*.log" in out
    # No copytruncate anywhere: it loses what is written between copy and truncate.
    assert "copytruncate" not in "\n".join(
        line for line in RULES.read_text().splitlines() if not line.lstrip().startswith("#")
    )


def _seqs(text: str) -> list[int]:
    return [json.loads(line)["seq"] for line in text.splitlines()]


def test_a_job_writing_across_a_forced_rotation_loses_no_line(tmp_path: Path) -> None:
    """The job log keeps its file open: rotated mid-job, the job finishes into
    extension.log.1 (left uncompressed), and the next job writes the new file."""
    conf, ext, _ = _rules_in(tmp_path)
    path = ext / "extension.log"
    first = JobLog(path=str(path), task_id="job-1", redactor=Redactor())
    stop = threading.Event()
    written = [0]

    def write() -> None:
        while not stop.is_set() or written[0] < 400:
            first.logger.info("line {}", written[0] + 1)
            written[0] += 1

    writer = threading.Thread(target=write)
    writer.start()
    try:
        wait_until(lambda: written[0] >= 200, 30, "200 lines before the rotation")
        _rotate(conf, tmp_path / "state")
        at_rotation = written[0]
        wait_until(lambda: written[0] >= at_rotation + 200, 30, "200 lines after the rotation")
    finally:
        stop.set()
        writer.join(30)
    first.close()
    second = JobLog(path=str(path), task_id="job-2", redactor=Redactor())
    for n in range(20):
        second.logger.info("next job {}", n)
    second.close()

    rotated = ext / "extension.log.1"
    assert rotated.exists(), sorted(p.name for p in ext.iterdir())
    assert not (ext / "extension.log.1.gz").exists()  # delaycompress
    assert _seqs(rotated.read_text()) == list(range(1, written[0] + 1))
    assert at_rotation < written[0]  # lines really were written after the rename
    current = path.read_text()
    assert _seqs(current) == list(range(1, 21))
    assert all(json.loads(line)["task_id"] == "job-2" for line in current.splitlines())
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_the_sidecar_log_file_reopens_after_rotation_and_loses_no_line(tmp_path: Path) -> None:
    """The sidecar's --log-file handler (WatchedFileHandler), written by a thread
    without pause through two forced rotations: every line once, in order."""
    conf, _, sidecar_dir = _rules_in(tmp_path)
    path = sidecar_dir / "sidecar.log"
    handler = logging.handlers.WatchedFileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("test_logrotate.sidecar")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    stop = threading.Event()
    written = [0]

    def write() -> None:
        while not stop.is_set():
            written[0] += 1
            logger.info("%d", written[0])

    writer = threading.Thread(target=write)
    writer.start()
    try:
        for round_ in (1, 2):
            target = written[0] + 300
            wait_until(lambda t=target: written[0] >= t, 30, f"300 lines before rotation {round_}")
            _rotate(conf, tmp_path / "state")
        target = written[0] + 300
        wait_until(lambda: written[0] >= target, 30, "300 lines after the last rotation")
    finally:
        stop.set()
        writer.join(30)
        logger.removeHandler(handler)
        handler.close()

    older = gzip.decompress((sidecar_dir / "sidecar.log.2.gz").read_bytes()).decode()
    newer = (sidecar_dir / "sidecar.log.1").read_text()
    current = path.read_text()
    assert older and newer and current  # each file got its share
    lines = [int(n) for n in (older + newer + current).splitlines()]
    assert lines == list(range(1, written[0] + 1))


def test_the_real_sidecar_with_log_file_writes_the_new_file_after_rotation(
    tmp_path: Path,
) -> None:
    """`snapshot-sidecar --log-file`: started, rotated by logrotate, stopped; the
    start line is in sidecar.log.1, the stop line in the new sidecar.log."""
    conf, _, sidecar_dir = _rules_in(tmp_path)
    path = sidecar_dir / "sidecar.log"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "snapshot_sidecar.cli",
            "--spool",
            str(tmp_path / "spool"),
            "--state-dir",
            str(tmp_path / "state"),
            "--listen",
            "127.0.0.1:0",
            "--poll-interval",
            "0.05",
            "--log-file",
            str(path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until(
            lambda: path.exists() and "/metrics on" in path.read_text(), 60, "the start line"
        )
        _rotate(conf, tmp_path / "state-logrotate")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert out == b"" and err == b""  # everything went to the file
    rotated = (sidecar_dir / "sidecar.log.1").read_text()
    assert "/metrics on" in rotated and "stopping" not in rotated
    assert "signal SIGTERM: stopping" in path.read_text()
