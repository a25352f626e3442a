"""workload.conf read as the reference reads it, with our defaults where its template fails."""

from __future__ import annotations

import os
from pathlib import Path

from snapshot_runtime.core.errors import ErrorCode
from snapshot_runtime.inputs.workload_conf import (
    DEFAULT_HOLD_SECONDS,
    DbCredentials,
    load_workload_conf,
    parse_cred_string,
    parse_workload_conf,
)

TEMPLATE = """[workload]
#workload_name valid values- mysql, oracle, mariadb, postgres
workload_name =
command_path =
credString =
ipc_folder =
timeout =
linux_user =
"""


def test_the_reference_template_leaves_the_feature_off() -> None:
    conf = parse_workload_conf(TEMPLATE)
    assert not conf.active
    assert conf.error is None


def test_names_are_exact_and_case_sensitive() -> None:
    for name in ("mysql", "mariadb", "postgres", "oracle"):
        assert parse_workload_conf(f"[workload]\nworkload_name = {name}\n").name == name
    for other in ("MySQL", "postgresql", "mssql", ""):
        assert not parse_workload_conf(f"[workload]\nworkload_name = {other}\n").active


def test_filled_template_with_unusable_keys_gets_our_defaults() -> None:
    # The template's empty command_path/ipc_folder/linux_user break the reference
    # (/mysql, a relative IPC file, "sudo -u" with no user); a driver needs none of them.
    conf = parse_workload_conf(TEMPLATE.replace("workload_name =", "workload_name = mariadb"))
    assert conf.active and conf.error is None
    assert conf.hold_seconds == DEFAULT_HOLD_SECONDS  # empty timeout keeps 90
    assert conf.credentials == DbCredentials()  # socket auth by default


def test_mysql_cred_string_becomes_driver_parameters_and_the_password_a_secret() -> None:
    cred, notes = parse_cred_string(
        "-u backup -pS3cr3t! -h 10.0.0.5 -P 3307 --defaults-file=/etc/x.cnf", "mysql"
    )
    assert cred == DbCredentials(
        user="backup", password="S3cr3t!", host="10.0.0.5", port=3307, option_file="/etc/x.cnf"
    )
    assert any("password" in n for n in notes)
    assert all("S3cr3t" not in n for n in notes)
    conf = parse_workload_conf("[workload]\nworkload_name = mysql\ncredString = -uroot -pS3cr3t!\n")
    assert conf.secrets == ("S3cr3t!",)
    assert "S3cr3t" not in repr(conf)


def test_postgres_cred_string_reads_libpq_options() -> None:
    cred, _ = parse_cred_string("-U postgres -h /var/run/postgresql -p 5433 -d app", "postgres")
    assert cred == DbCredentials(
        user="postgres", socket="/var/run/postgresql", port=5433, database="app"
    )


def test_roles_and_timeouts_as_the_reference_codes_them() -> None:
    base = "[workload]\nworkload_name = mariadb\n"
    assert parse_workload_conf(base + "role = primary\n").error is ErrorCode.WORKLOAD_INVALID_ROLE
    assert (
        parse_workload_conf(base + "enforceSlaveOnly = 1\n").error
        is ErrorCode.WORKLOAD_INVALID_ROLE
    )
    assert parse_workload_conf(base + "role = slave\n").error is ErrorCode.WORKLOAD_INVALID_NAME
    assert parse_workload_conf(base + "timeout = soon\n").error is ErrorCode.WORKLOAD_CONF_PARSING
    assert parse_workload_conf(base + "timeout = 240\n").hold_seconds == 240
    assert "ignored" in parse_workload_conf(base + "ipc_folder = /tmp\n").notes[0]


def test_load_refuses_a_file_others_may_write(tmp_path: Path) -> None:
    path = tmp_path / "workload.conf"
    path.write_text("[workload]\nworkload_name = postgres\n")
    os.chmod(path, 0o644)
    assert load_workload_conf(str(path)).name == "postgres"
    os.chmod(path, 0o666)
    refused = load_workload_conf(str(path))
    assert not refused.active
    assert refused.problem is not None and "writable" in refused.problem
    assert not load_workload_conf(str(tmp_path / "absent.conf")).active
