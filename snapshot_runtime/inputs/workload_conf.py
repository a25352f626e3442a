"""The reference's ``/etc/azure/workload.conf``, parsed (``[workload]``).

Same keys and meanings as the reference (docs/workloads.md has the table),
with our defaults where the reference's installed template is unusable:

* ``workload_name``: exactly ``mysql``, ``mariadb``, ``postgres`` or
  ``oracle`` turns the built-in quiescing on, and it **replaces** the pre/post
  scripts; any other value (the template's empty one included) leaves it off.
* ``credString``: the client arguments the reference spliced into a shell
  command. We never run a client: the recognised options (user, host, port,
  socket, database, password, defaults file) become the driver's connection
  parameters. A password found there is a secret (redacted like SAS).
* ``option_file`` (ours): a MariaDB/MySQL option file (``[client]``) or a
  libpq password file, so no password needs to sit in workload.conf.
* ``timeout``: the hold deadline in seconds (default 90; empty keeps 90).
* ``role``/``enforceSlaveOnly``: ``master`` only; a replica role is refused
  (503: not quiesced by this runtime), an invalid one is 502, as in the reference.
* ``command_path``, ``ipc_folder``, ``linux_user``, ``dbnames``,
  ``customScriptEnabled``, ``configuration_path``: accepted, not needed by a
  driver-held session; each is listed in ``notes``.

Without credentials the defaults are socket authentication as the runtime's
own user on the distribution's socket (the reference would raise 505 instead).

``parse_workload_conf`` is pure; ``load_workload_conf`` reads the file
(root-owned, not group/other-writable, at most 64 KiB) and never raises.
"""

from __future__ import annotations

import configparser
import os
import shlex
import stat
from dataclasses import dataclass, field
from typing import Literal

from snapshot_runtime.core.errors import ErrorCode
from snapshot_runtime.core.untrusted_file import read_at_most

__all__ = [
    "DEFAULT_HOLD_SECONDS",
    "DEFAULT_WORKLOAD_CONF",
    "WORKLOAD_CONF_ENV",
    "WORKLOAD_NAMES",
    "DbCredentials",
    "WorkloadConf",
    "WorkloadName",
    "load_workload_conf",
    "parse_cred_string",
    "parse_workload_conf",
]

DEFAULT_WORKLOAD_CONF = "/etc/azure/workload.conf"
# Tests and staged machines point the job at another file (never the machine's own).
WORKLOAD_CONF_ENV = "SNAPSHOT_WORKLOAD_CONF"
DEFAULT_HOLD_SECONDS = 90
_MAX_BYTES = 64 * 1024

WorkloadName = Literal["mysql", "mariadb", "postgres", "oracle"]
WORKLOAD_NAMES: tuple[WorkloadName, ...] = ("mysql", "mariadb", "postgres", "oracle")
_UNNEEDED_KEYS = (
    "command_path",
    "ipc_folder",
    "linux_user",
    "dbnames",
    "customscriptenabled",
    "configuration_path",
    "command",
)


@dataclass(frozen=True)
class DbCredentials:
    """Connection parameters for the driver; ``password`` is a secret (never logged)."""

    user: str | None = None
    password: str | None = field(default=None, repr=False)
    host: str | None = None
    port: int | None = None
    socket: str | None = None
    database: str | None = None
    option_file: str | None = None


@dataclass(frozen=True)
class WorkloadConf:
    """The parsed file. ``name`` None: the feature is off (``error`` may say why)."""

    name: WorkloadName | None = None
    error: ErrorCode | None = None
    problem: str | None = None
    hold_seconds: int = DEFAULT_HOLD_SECONDS
    credentials: DbCredentials = field(default_factory=DbCredentials)
    notes: tuple[str, ...] = ()
    source: str | None = None

    @property
    def active(self) -> bool:
        """A workload is named: it replaces the pre/post scripts (even if in error)."""
        return self.name is not None

    @property
    def secrets(self) -> tuple[str, ...]:
        password = self.credentials.password
        return (password,) if password else ()


def parse_cred_string(text: str, workload: WorkloadName) -> tuple[DbCredentials, tuple[str, ...]]:
    """The reference's ``credString`` as driver parameters, and notes (never values)."""
    notes: list[str] = []
    try:
        tokens = shlex.split(text)
    except ValueError:
        return DbCredentials(), ("credString is not valid shell words; ignored",)
    postgres = workload == "postgres"
    # option -> field; libpq's -p is the port, MySQL's -p the password.
    short = (
        {"-U": "user", "-h": "host", "-p": "port", "-d": "database"}
        if postgres
        else {"-u": "user", "-h": "host", "-P": "port", "-S": "socket", "-D": "database"}
    )
    long = {
        "--user": "user",
        "--username": "user",
        "--host": "host",
        "--port": "port",
        "--socket": "socket",
        "--database": "database",
        "--dbname": "database",
        "--password": "password",
        "--defaults-file": "option_file",
        "--defaults-extra-file": "option_file",
    }
    found: dict[str, str] = {}
    unknown = 0
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        i += 1
        if tok.startswith("--") and "=" in tok:
            key, _, value = tok.partition("=")
            if key in long:
                found[long[key]] = value
            else:
                unknown += 1
        elif tok[:2] in short:
            value = tok[2:]
            if not value and i < len(tokens):
                value = tokens[i]
                i += 1
            found[short[tok[:2]]] = value
        elif not postgres and tok.startswith("-p") and len(tok) > 2:
            found["password"] = tok[2:]
        else:
            unknown += 1
    if unknown:
        notes.append(f"credString: {unknown} unrecognised word(s) ignored")
    if "password" in found:
        notes.append("credString carries a password: prefer option_file or socket authentication")
    port: int | None = None
    if "port" in found:
        try:
            port = int(found["port"])
        except ValueError:
            notes.append("credString: the port is not a number; ignored")
    host = found.get("host")
    socket = found.get("socket")
    if host is not None and host.startswith("/"):
        # libpq's -h takes a socket directory; it is a socket path, not a TCP host.
        socket, host = host, None
    return (
        DbCredentials(
            user=found.get("user"),
            password=found.get("password"),
            host=host,
            port=port,
            socket=socket,
            database=found.get("database"),
            option_file=found.get("option_file"),
        ),
        tuple(notes),
    )


def parse_workload_conf(text: str, *, source: str | None = None) -> WorkloadConf:
    """The file's text as a ``WorkloadConf``; never raises."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text)
    except configparser.Error as exc:
        return WorkloadConf(
            source=source, problem=f"not an INI file: {type(exc).__name__}; workload off"
        )
    if not parser.has_section("workload"):
        return WorkloadConf(source=source)
    section = parser["workload"]
    raw_name = section.get("workload_name", "").strip()
    if raw_name not in WORKLOAD_NAMES:
        # The reference's test is exact and case-sensitive; the template's empty value is "off".
        return WorkloadConf(source=source)
    name: WorkloadName = raw_name  # checked just above
    notes = [
        f"{key} is not needed by a driver session; ignored"
        for key in _UNNEEDED_KEYS
        if key in section and section[key].strip()
    ]
    role = section.get("role", "master").strip() or "master"
    enforce_slave_only = section.get("enforceSlaveOnly", "0").strip() or "0"
    if role not in ("master", "slave") or (role == "master" and enforce_slave_only != "0"):
        return WorkloadConf(
            name=name,
            error=ErrorCode.WORKLOAD_INVALID_ROLE,
            problem=f"invalid role {role!r} (enforceSlaveOnly={enforce_slave_only})",
            source=source,
        )
    if role == "slave":
        return WorkloadConf(
            name=name,
            error=ErrorCode.WORKLOAD_INVALID_NAME,
            problem="role=slave: replicas are not quiesced by this runtime",
            source=source,
        )
    hold = DEFAULT_HOLD_SECONDS
    raw_timeout = section.get("timeout", "").strip()
    if raw_timeout:
        try:
            hold = int(raw_timeout)
            if hold <= 0:
                raise ValueError(raw_timeout)
        except ValueError:
            return WorkloadConf(
                name=name,
                error=ErrorCode.WORKLOAD_CONF_PARSING,
                problem="timeout is not a positive whole number of seconds",
                source=source,
            )
    credentials, cred_notes = parse_cred_string(section.get("credString", ""), name)
    notes.extend(cred_notes)
    option_file = section.get("option_file", "").strip()
    if option_file:
        credentials = DbCredentials(**{**credentials.__dict__, "option_file": option_file})
    return WorkloadConf(
        name=name,
        hold_seconds=hold,
        credentials=credentials,
        notes=tuple(notes),
        source=source,
    )


def load_workload_conf(path: str = DEFAULT_WORKLOAD_CONF) -> WorkloadConf:
    """The file at ``path`` (absent: workload off). Never raises.

    An unsafe file (not root's, writable by others) is refused with 501: it
    decides which database the job holds locked, and its credentials.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return WorkloadConf()
    except OSError as exc:
        return WorkloadConf(source=path, problem=f"cannot be opened: {exc.strerror}")
    try:
        info = os.fstat(fd)
        problem = None
        if not stat.S_ISREG(info.st_mode):
            problem = "is not a regular file"
        elif info.st_uid != 0 and os.geteuid() == 0:
            problem = "is not owned by root"
        elif info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            problem = "is writable by group or other"
        data = b"" if problem else read_at_most(fd, _MAX_BYTES + 1)
    except OSError as exc:
        problem, data = f"cannot be read: {exc.strerror}", b""
    finally:
        os.close(fd)
    if problem is None and len(data) > _MAX_BYTES:
        problem = f"is larger than {_MAX_BYTES} bytes"
    if problem is not None:
        return WorkloadConf(problem=f"{path} {problem}; workload off", source=path)
    return parse_workload_conf(data.decode("utf-8", errors="replace"), source=path)
