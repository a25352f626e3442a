"""handler_env and job_guard: the agent's files, the sequence rules, the guards."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from snapshot_runtime.core import defaults
from snapshot_runtime.core.command_deadline import COMMAND_DEADLINE, command_too_late
from snapshot_runtime.core.errors import ConfigError, ErrorCode
from snapshot_runtime.core.retention import RetentionPolicy
from snapshot_runtime.handler.config import (
    DEFAULT_HANDLER_RUN_DIR,
    DEFAULT_HANDLER_STATE_DIR,
    HandlerConfig,
    load_handler_config,
    merge_job_config,
    parse_handler_config,
)
from snapshot_runtime.handler.environment import load_handler_environment, parse_handler_environment
from snapshot_runtime.handler.guards import MAX_PROCESSED, ProcessedTasks
from snapshot_runtime.handler.settings_files import (
    SettingsFile,
    choose_sequence,
    is_sanitised,
    list_settings_files,
    parse_sequence_number,
    read_last_sequence,
    rewrite_settings_file,
    sanitised,
    write_last_sequence,
)
from snapshot_runtime.inputs.vmbackup_conf import (
    CustomSettings,
    VmBackupConf,
    parse_custom_settings,
    parse_vmbackup_conf,
)
from snapshot_runtime.job.lock import JobLock
from tests.support.processes import stop_process

REPO = Path(__file__).resolve().parents[2]
ENV = {
    "logFolder": "/var/log/azure/x",
    "configFolder": "config",
    "statusFolder": "/var/lib/waagent/x/status",
    "heartbeatFile": "/var/lib/waagent/x/heartbeat.log",
}


# --- HandlerEnvironment.json ---------------------------------------------------------


def test_environment_list_shape_and_relative_paths() -> None:
    env = parse_handler_environment(
        [{"name": "n", "version": 1.0, "handlerEnvironment": ENV}], handler_dir="/h"
    )
    assert env.config_folder == "/h/config"
    assert env.status_path(3) == "/var/lib/waagent/x/status/3.status"
    assert env.settings_path(3) == "/h/config/3.settings"
    assert env.log_path == "/var/log/azure/x/extension.log"
    assert (env.name, env.version) == ("n", "1.0")


@pytest.mark.parametrize(
    "doc",
    [
        [],
        "x",
        [{"version": 1.0}],
        [{"handlerEnvironment": {**ENV, "statusFolder": ""}}],
        [{"handlerEnvironment": {k: v for k, v in ENV.items() if k != "configFolder"}}],
        [{"handlerEnvironment": {**ENV, "logFolder": 3}}],
    ],
)
def test_environment_errors(doc: object) -> None:
    with pytest.raises(ConfigError) as info:
        parse_handler_environment(doc, handler_dir="/h")
    assert info.value.code is ErrorCode.HANDLER_ENVIRONMENT_INVALID


def test_environment_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_handler_environment(str(tmp_path))
    (tmp_path / "HandlerEnvironment.json").write_text("[{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_handler_environment(str(tmp_path))


# --- sequence numbers ------------------------------------------------------------------


def test_sequence_from_environment_wins() -> None:
    assert choose_sequence("7", [SettingsFile(9, 10)]) == 7
    assert choose_sequence(" 0 ", []) == 0


def test_newest_settings_file_by_mtime_then_number() -> None:
    assert choose_sequence(None, [SettingsFile(9, 10), SettingsFile(2, 20)]) == 2
    assert choose_sequence("", [SettingsFile(4, 20), SettingsFile(5, 20)]) == 5


@pytest.mark.parametrize("text", ["x", "-1", "1.0", "99999999999", "٣"])
def test_bad_sequence_numbers(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_sequence_number(text)
    assert info.value.code is ErrorCode.HANDLER_ENVIRONMENT_INVALID


def test_no_settings_at_all() -> None:
    with pytest.raises(ConfigError, match=r"holds no N\.settings"):
        choose_sequence(None, [])


def test_listing_ignores_renamed_and_foreign_files(tmp_path: Path) -> None:
    for name in ("0.settings", "1_settings", "12.settings", "x.settings", "3.settings.tmp"):
        (tmp_path / name).write_text("{}")
    assert sorted(f.seq for f in list_settings_files(str(tmp_path))) == [0, 12]


def test_last_sequence_round_trip(tmp_path: Path) -> None:
    assert read_last_sequence(str(tmp_path)) is None
    write_last_sequence(str(tmp_path), 41)
    assert read_last_sequence(str(tmp_path)) == 41
    (tmp_path / "mrseq").write_text("garbage")
    assert read_last_sequence(str(tmp_path)) is None


# --- sanitising -----------------------------------------------------------------------


def _doc(protected: object) -> dict[str, object]:
    return {
        "runtimeSettings": [
            {
                "handlerSettings": {
                    "protectedSettingsCertThumbprint": "AB" * 20,
                    "protectedSettings": protected,
                    "publicSettings": {"taskId": "t"},
                }
            }
        ]
    }


def test_sanitised_removes_only_protected_settings() -> None:
    doc = _doc("MIIB...")
    clean = sanitised(doc)
    assert clean is not None
    handler = clean["runtimeSettings"][0]["handlerSettings"]  # type: ignore[index]
    assert handler == {
        "protectedSettingsCertThumbprint": "AB" * 20,
        "publicSettings": {"taskId": "t"},
    }
    assert doc["runtimeSettings"][0]["handlerSettings"]["protectedSettings"] == "MIIB..."  # type: ignore[index]
    assert is_sanitised(clean) and not is_sanitised(doc)
    assert sanitised(_doc(None)) is None and not is_sanitised(_doc(None))


def test_rewrite_keeps_name_mode_and_mtime(tmp_path: Path) -> None:
    path = tmp_path / "5.settings"
    path.write_text(json.dumps(_doc("MIIB")))
    path.chmod(0o600)
    os.utime(path, (1_700_000_000, 1_700_000_000))
    clean = sanitised(json.loads(path.read_text()))
    assert clean is not None
    rewrite_settings_file(str(path), clean)
    info = path.stat()
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert info.st_mtime == 1_700_000_000
    assert json.loads(path.read_text()) == clean
    assert sorted(p.name for p in tmp_path.iterdir()) == ["5.settings"]


# --- handler.conf -----------------------------------------------------------------------


def test_handler_config_values() -> None:
    config = parse_handler_config(
        "[handler]\ninclude_mounts = /data, /srv/db\nexclude_mounts=/tmp2\n"
        "freeze_timeout_seconds = 30\nplugin_config = /etc/x.json\nstate_dir=/s\nrun_dir=/r\n",
        source="t",
    )
    assert config.include_mounts == ("/data", "/srv/db")
    assert config.exclude_mounts == ("/tmp2",)
    assert config.freeze_timeout_seconds == 30.0
    assert (config.plugin_config, config.state_dir, config.run_dir) == ("/etc/x.json", "/s", "/r")
    assert parse_handler_config("", source="t").include_mounts is None


@pytest.mark.parametrize(
    "text",
    [
        "[handler]\nmounts = /a\n",
        "[other]\n",
        "[handler]\ninclude_mounts = data\n",
        "[handler]\nfreeze_timeout_seconds = 0\n",
        "[handler]\nfreeze_timeout_seconds = soon\n",
        "[handler]\nstate_dir = relative\n",
        "[handler]\nsnapshot_method = sideways\n",
        "[handler]\nvmbackup_conf = relative.conf\n",
        "not ini",
    ],
)
def test_handler_config_errors(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_handler_config(text, source="t")
    assert info.value.code is ErrorCode.HANDLER_ENVIRONMENT_INVALID


def test_handler_config_file_rules(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_handler_config(str(tmp_path / "absent.conf"))
    path = tmp_path / "handler.conf"
    path.write_text("[handler]\nexclude_mounts = /x\n")
    path.chmod(0o666)
    with pytest.raises(ConfigError, match="writable by group or other"):
        load_handler_config(str(path))
    path.chmod(0o644)
    assert load_handler_config(str(path)).exclude_mounts == ("/x",)


def test_defaults_match_the_job() -> None:
    assert DEFAULT_HANDLER_STATE_DIR == defaults.DEFAULT_STATE_DIR
    assert DEFAULT_HANDLER_RUN_DIR == defaults.DEFAULT_RUN_DIR
    assert HandlerConfig().freeze_timeout_seconds == defaults.DEFAULT_FREEZE_TIMEOUT


# --- guards ----------------------------------------------------------------------------


def test_command_too_late_boundary() -> None:
    now = dt.datetime(2026, 1, 1, 12, tzinfo=dt.timezone.utc)
    assert not command_too_late(None, now)
    assert not command_too_late(now - COMMAND_DEADLINE, now)
    assert command_too_late(now - COMMAND_DEADLINE - dt.timedelta(seconds=1), now)
    assert not command_too_late(now + dt.timedelta(hours=5), now)


def test_processed_tasks_are_bounded(tmp_path: Path) -> None:
    registry = ProcessedTasks(str(tmp_path / "state" / "processed.json"))
    assert "t0" not in registry
    for i in range(MAX_PROCESSED + 5):
        registry.add(f"t{i}")
    tasks = registry.tasks()
    assert len(tasks) == MAX_PROCESSED
    assert "t4" not in registry and f"t{MAX_PROCESSED + 4}" in registry
    registry.add("t10")  # re-adding moves it to the end
    assert registry.tasks()[-1] == "t10"
    assert stat.S_IMODE(os.stat(registry.path).st_mode) == 0o600


def test_processed_tasks_survive_a_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "processed.json"
    path.write_text("{not json")
    registry = ProcessedTasks(str(path))
    assert registry.tasks() == []
    registry.add("a")
    assert registry.tasks() == ["a"]


_HOLDER = r"""
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(60)
"""


def test_lock_is_exclusive_and_dies_with_its_holder(tmp_path: Path) -> None:
    path = tmp_path / "run" / "handler.lock"
    path.parent.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        lock = JobLock(str(path))
        assert not lock.try_acquire()
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=10)
        assert lock.try_acquire()  # the kernel dropped the dead holder's lock
        lock.set_holder(pid=os.getpid(), task_id="task-9", seq=4)
        seen = JobLock(str(path)).holder()
        assert seen is not None and (seen.pid, seen.task_id, seen.seq) == (os.getpid(), "task-9", 4)
        assert not JobLock(str(path)).try_acquire()
        lock.release()
        other = JobLock(str(path))
        assert other.try_acquire()
        other.release()
    finally:
        stop_process(holder, sig=signal.SIGKILL)


def test_a_handed_over_lock_survives_the_parent_and_not_the_child(tmp_path: Path) -> None:
    path = str(tmp_path / "handler.lock")
    lock = JobLock(path)
    assert lock.try_acquire()
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], pass_fds=(lock.fd,)
    )
    try:
        # The parent lets go, as enable does. Nothing to wait for: the child has had
        # the descriptor (and so the lock) since Popen returned, after its exec.
        lock.release()
        assert not JobLock(path).try_acquire()  # the child still holds it
        child.kill()
        child.wait(timeout=10)
        assert JobLock(path).try_acquire()
    finally:
        stop_process(child, sig=signal.SIGKILL)


def test_adopt_makes_the_descriptor_close_on_exec(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "l", os.O_RDWR | os.O_CREAT)
    os.set_inheritable(fd, True)
    lock = JobLock.adopt(str(tmp_path / "l"), fd)
    assert not os.get_inheritable(lock.fd)
    lock.release()


# --- the deployable manifest ------------------------------------------------------------


def test_handler_manifest_maps_every_command() -> None:
    manifest = json.loads((REPO / "deploy" / "extension" / "HandlerManifest.json").read_text())
    assert isinstance(manifest, list) and len(manifest) == 1
    handler = manifest[0]["handlerManifest"]
    for verb in ("install", "enable", "disable", "uninstall", "update"):
        command = handler[f"{verb}Command"]
        script, arg = command.split()
        assert arg == verb
        path = REPO / "deploy" / "extension" / script
        assert path.exists() and os.access(path, os.X_OK)
    assert handler["reportHeartbeat"] is False
    assert handler["rebootAfterInstall"] is False
    assert handler["updateMode"] == "UpdateWithInstall"


# --- handler.conf over vmbackup.conf over customSettings (issue 12) -------------------------


def _conf(text: str = "") -> HandlerConfig:
    return parse_handler_config("[handler]\n" + text, source="handler.conf")


def _vmbackup(text: str = "") -> VmBackupConf:
    return parse_vmbackup_conf("[SnapshotThread]\n" + text, source="vmbackup.conf")


def test_handler_config_new_keys() -> None:
    config = _conf(
        "snapshot_method = onlyHost\nvmbackup_conf = /srv/vmbackup.conf\n"
        "product_uuid_file = /x/uuid\nhosting_environment_config = /x/hec.xml\n"
    )
    assert config.snapshot_method == "onlyHost"
    assert (config.vmbackup_conf, config.product_uuid_file) == ("/srv/vmbackup.conf", "/x/uuid")
    assert config.hosting_environment_config == "/x/hec.xml"
    defaults_ = _conf()
    assert defaults_.vmbackup_conf == "/etc/azure/vmbackup.conf"
    assert defaults_.product_uuid_file == "/sys/class/dmi/id/product_uuid"
    assert defaults_.hosting_environment_config == "/var/lib/waagent/HostingEnvironmentConfig.xml"
    assert defaults_.explicit == frozenset()


def test_snapshot_method_conf_over_custom_settings() -> None:
    custom = parse_custom_settings('{"takeSnapshotFrom": "firstHostThenGuest"}')
    only_custom = merge_job_config(_conf(), _vmbackup(), custom)
    assert (only_custom.snapshot_method, only_custom.snapshot_method_from) == (
        "firstHostThenGuest",
        "customSettings",
    )
    conf_wins = merge_job_config(_conf(), _vmbackup("SnapshotMethod = onlyGuest\n"), custom)
    assert (conf_wins.snapshot_method, conf_wins.snapshot_method_from) == (
        "onlyGuest",
        "vmbackup.conf",
    )
    ours_win = merge_job_config(
        _conf("snapshot_method = onlyHost\n"), _vmbackup("SnapshotMethod = onlyGuest\n"), custom
    )
    assert (ours_win.snapshot_method, ours_win.snapshot_method_from) == ("onlyHost", "handler.conf")
    none = merge_job_config(_conf(), _vmbackup(), CustomSettings())
    assert (none.snapshot_method, none.snapshot_method_from) == (None, "default")


def test_mounts_to_skip_below_handler_conf() -> None:
    skip = _vmbackup("MountsToSkip = /mnt/resource,/data\n")
    from_conf = merge_job_config(_conf(), skip, CustomSettings())
    assert (from_conf.exclude_mounts, from_conf.exclude_mounts_from) == (
        ("/mnt/resource", "/data"),
        "vmbackup.conf",
    )
    ours = merge_job_config(_conf("exclude_mounts = /srv\n"), skip, CustomSettings())
    assert (ours.exclude_mounts, ours.exclude_mounts_from) == (("/srv",), "handler.conf")
    # Set to nothing in handler.conf is still set: it wins (freeze everything eligible).
    cleared = merge_job_config(_conf("exclude_mounts =\n"), skip, CustomSettings())
    assert (cleared.exclude_mounts, cleared.exclude_mounts_from) == ((), "handler.conf")
    neither = merge_job_config(_conf(), _vmbackup(), CustomSettings())
    assert (neither.exclude_mounts, neither.exclude_mounts_from) == ((), "default")


def test_freeze_timeout_below_handler_conf() -> None:
    conf_timeout = _vmbackup("timeout = 45\n")
    merged = merge_job_config(_conf(), conf_timeout, CustomSettings())
    assert (merged.freeze_timeout_seconds, merged.freeze_timeout_from) == (45.0, "vmbackup.conf")
    ours = merge_job_config(_conf("freeze_timeout_seconds = 20\n"), conf_timeout, CustomSettings())
    assert (ours.freeze_timeout_seconds, ours.freeze_timeout_from) == (20.0, "handler.conf")
    default = merge_job_config(_conf(), _vmbackup(), CustomSettings())
    assert (default.freeze_timeout_seconds, default.freeze_timeout_from) == (60.0, "default")


def test_logging_switches() -> None:
    on = merge_job_config(_conf(), _vmbackup(), CustomSettings())
    assert (on.write_log, on.upload_status) == (True, True)
    off = merge_job_config(
        _conf(), _vmbackup("WriteLog = False\nUploadStatusAndLog = False\n"), CustomSettings()
    )
    assert (off.write_log, off.upload_status) == (False, False)
    assert "write_log=False" in off.describe() and "vmbackup.conf" not in off.describe()


def test_handler_config_retention_keys() -> None:
    """retention_keep / retention_days: defaults 60 and 90 days; 0 turns a limit off."""
    assert _conf().retention == RetentionPolicy(keep=60, max_age_days=90.0)
    assert _conf("retention_keep = 5\nretention_days = 7.5\n").retention == RetentionPolicy(
        keep=5, max_age_days=7.5
    )
    assert _conf("retention_keep = 0\nretention_days = 0\n").retention == RetentionPolicy(
        keep=None, max_age_days=None
    )


@pytest.mark.parametrize(
    "text",
    [
        "retention_keep = -1\n",
        "retention_keep = 2.5\n",
        "retention_keep = many\n",
        "retention_days = -3\n",
        "retention_days = nan\n",
        "retention_days = forever\n",
        "retention_days = 99999\n",
    ],
)
def test_handler_config_retention_errors(text: str) -> None:
    with pytest.raises(ConfigError, match="retention_") as info:
        _conf(text)
    assert info.value.code is ErrorCode.HANDLER_ENVIRONMENT_INVALID
