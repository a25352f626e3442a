"""Private MariaDB and PostgreSQL servers for the workload tests (real servers, no mocks).

Each instance lives in a data directory the test chooses (typically on a
loop-mounted ext4 the job freezes), listens on its own Unix socket and its own
free port on 127.0.0.1, runs as the distribution's service user, and is
always stopped (``with`` block). The distribution services are never started
(scripts/install-system-deps.sh installs with policy-rc.d 101).

``Writer`` commits numbered rows as fast as one session can and records each
acknowledged id with its ``time.monotonic()``, so a test can set the ids
against the job's quiesce and freeze instants.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pymysql

from tests.support.waiting import wait_until

MARIADBD = "/usr/sbin/mariadbd"
MARIADB_INSTALL_DB = "/usr/bin/mariadb-install-db"


def pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise FileNotFoundError(f"PostgreSQL {name} (scripts/install-system-deps.sh)")
    return found[-1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _traversable(path: str) -> None:
    """Let the service user reach ``path``: pytest's tmp dirs are 0700 root."""
    here = os.path.dirname(os.path.abspath(path))
    while here != "/":
        mode = os.stat(here).st_mode
        if not mode & 0o001:
            os.chmod(here, mode | 0o011)
        here = os.path.dirname(here)


def _chown_tree(path: str, user: str) -> None:
    shutil.chown(path, user, user)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            shutil.chown(os.path.join(root, name), user, user)


@dataclass
class MariaDb:
    """A private mariadbd: ``datadir`` (binlog on), ``socket``, ``port``."""

    datadir: str
    rundir: str
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> str:
        return os.path.join(self.rundir, "mysqld.sock")

    def install(self) -> MariaDb:
        os.makedirs(self.datadir, exist_ok=True)
        os.makedirs(self.rundir, exist_ok=True)
        _traversable(self.datadir)
        _traversable(self.rundir)
        _chown_tree(self.datadir, "mysql")
        shutil.chown(self.rundir, "mysql", "mysql")
        done = subprocess.run(
            [
                MARIADB_INSTALL_DB,
                "--no-defaults",
                "--user=mysql",
                f"--datadir={self.datadir}",
                "--skip-test-db",
                "--auth-root-authentication-method=socket",
            ],
            check=False,
            capture_output=True,
            text=True,
            timeout=180,
        )
        if done.returncode != 0:
            raise RuntimeError(f"mariadb-install-db: {done.stdout[-2000:]}{done.stderr[-2000:]}")
        return self

    def start(self, *, extra: tuple[str, ...] = ()) -> MariaDb:
        # Also for a restored copy: a fresh run dir, and a mount point mysqld can reach.
        os.makedirs(self.rundir, exist_ok=True)
        _traversable(self.datadir)
        _traversable(self.rundir)
        shutil.chown(self.rundir, "mysql", "mysql")
        self.proc = subprocess.Popen(
            [
                MARIADBD,
                "--no-defaults",
                "--user=mysql",
                f"--datadir={self.datadir}",
                f"--socket={self.socket}",
                f"--port={self.port}",
                "--bind-address=127.0.0.1",
                f"--pid-file={os.path.join(self.datadir, 'mariadbd.pid')}",
                "--log-bin=binlog",
                "--server-id=1",
                "--innodb-buffer-pool-size=32M",
                "--innodb-log-file-size=16M",
                f"--log-error={os.path.join(self.rundir, 'error.log')}",
                *extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._answers, timeout=120, what="mariadbd answers")
        return self

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"mariadbd exited {self.proc.returncode}: {self.error_log()}")
        try:
            self.connect().close()
        except pymysql.err.OperationalError:
            return False
        return True

    def error_log(self) -> str:
        try:
            with open(os.path.join(self.rundir, "error.log")) as fh:
                return fh.read()[-4000:]
        except OSError:
            return ""

    def connect(self, **kw: Any) -> pymysql.connections.Connection[Any]:
        return pymysql.connect(unix_socket=self.socket, user="root", autocommit=True, **kw)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)

    def __enter__(self) -> MariaDb:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class Postgres:
    """A private PostgreSQL cluster: ``datadir``, socket in ``rundir``, ``port``."""

    datadir: str
    rundir: str
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def install(self) -> Postgres:
        os.makedirs(self.datadir, exist_ok=True)
        os.makedirs(self.rundir, exist_ok=True)
        _traversable(self.datadir)
        _traversable(self.rundir)
        shutil.chown(self.datadir, "postgres", "postgres")
        os.chmod(self.datadir, 0o700)
        shutil.chown(self.rundir, "postgres", "postgres")
        subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                pg_bin("initdb"),
                "-D",
                self.datadir,
                "-A",
                "trust",
                "-U",
                "postgres",
            ],
            check=True,
            capture_output=True,
            timeout=180,
        )
        return self

    def start(self) -> Postgres:
        os.makedirs(self.rundir, exist_ok=True)
        _traversable(self.datadir)
        _traversable(self.rundir)
        shutil.chown(self.rundir, "postgres", "postgres")
        # As the postgres user directly (not through runuser): our signals reach it.
        self.proc = subprocess.Popen(
            [
                pg_bin("postgres"),
                "-D",
                self.datadir,
                "-k",
                self.rundir,
                "-p",
                str(self.port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "shared_buffers=32MB",
                "-c",
                f"log_directory={self.rundir}",
                "-c",
                "logging_collector=off",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(self.rundir, "server.log"), "ab"),  # noqa: SIM115
            user="postgres",
            group="postgres",
            extra_groups=[],
        )
        wait_until(self._answers, timeout=120, what="postgres answers")
        return self

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"postgres exited {self.proc.returncode}: {self.server_log()}")
        try:
            self.connect().close()
        except psycopg.OperationalError:
            return False
        return True

    def server_log(self) -> str:
        try:
            with open(os.path.join(self.rundir, "server.log")) as fh:
                return fh.read()[-4000:]
        except OSError:
            return ""

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(
            host=self.rundir, port=self.port, user="postgres", dbname="postgres", autocommit=True
        )

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)  # fast shutdown
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)

    def __enter__(self) -> Postgres:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class Writer:
    """Commits numbered rows in one session; ``acked`` holds (id, monotonic) per ack."""

    insert: Callable[[int], None]
    first: int = 1  # ids first, first + step, ...: several writers share one table
    step: int = 1
    acked: list[tuple[int, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Writer:
        self._thread = threading.Thread(target=self._run, name="db-writer", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        n = self.first - self.step
        while not self._stop.is_set():
            n += self.step
            try:
                self.insert(n)
            except Exception as exc:  # the test reports it; the writer stops
                self.errors.append(f"{type(exc).__name__}: {exc}")
                return
            self.acked.append((n, time.monotonic()))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=120)

    def acks_within(self, seconds: float) -> int:
        """Watch for ``seconds`` (the passing time is the point: an observation window,
        not synchronisation); how many commits were acknowledged meanwhile."""
        before = len(self.acked)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and len(self.acked) == before:
            time.sleep(0.02)
        return len(self.acked) - before

    def rate(self) -> float:
        """Commits per second over the writer's life so far."""
        return combined_rate([self])


def combined_rate(writers: list[Writer]) -> float:
    """Commits per second of several writers together, over their common life."""
    acks = sorted(at for w in writers for _, at in w.acked)
    if len(acks) < 2 or acks[-1] <= acks[0]:
        return 0.0
    return (len(acks) - 1) / (acks[-1] - acks[0])


@contextlib.contextmanager
def attached(clone: str) -> Iterator[str]:
    """Attach a cloned ext4 disk image read-write and mount it; yields the mountpoint.

    Read-write, unlike ``host_service.restored``: a database started on the copy
    replays its own redo/WAL and writes. The clone is a copy; the live disk is untouched.
    """
    mnt = tempfile.mkdtemp(prefix="restored-db-")
    device = subprocess.run(
        ["losetup", "--find", "--show", clone], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        subprocess.run(["mount", "-t", "ext4", device, mnt], check=True, capture_output=True)
        try:
            yield mnt
        finally:
            subprocess.run(["umount", mnt], capture_output=True, check=False)
    finally:
        subprocess.run(["losetup", "-d", device], capture_output=True, check=False)
        os.rmdir(mnt)
