"""The backup service's plan and config: secrets only in 0600 files, the schedule and the
retention from config, bad values refused naming the key; the operator CLI's input checks and
snapshot list."""

from __future__ import annotations

import dataclasses
import json

import pytest

from cluster.config import ConfigError, load_config
from cluster.hostplan import build_host_plan
from cluster.lab.model import lab_topology
from cluster.material import generate
from cluster.ops.backup import check_folder, check_snapshot, parse_snapshots, render_snapshots
from cluster.ops.target import OpsError
from cluster.plan import FileSpec
from cluster.services import backup, units
from cluster.stackfiles import read_stack_config
from cluster.topology import Topology

SECRETS = dataclasses.replace(
    generate("example.com", ["dc1", "dc2"], {"dc1": ["mail.example.com"],
                                             "dc2": ["mail.example.com"]}),
    backup_repository="s3:https://us-east-1.linodeobjects.com/b-example",
    backup_access_key="AKIAEXAMPLE",
    backup_secret_key="SecretKeyExample",
)  # fmt: skip


def _files(topo: Topology) -> dict[str, object]:
    plan = build_host_plan(topo, "dc1-svr1", SECRETS, "lab")
    return {f.path: f for f in plan.files}


def test_secrets_reach_the_node_in_0600_files_only() -> None:
    plan = build_host_plan(lab_topology("dc1"), "dc1-svr1", SECRETS, "lab")
    files = {f.path: f for f in plan.files}
    for path, value in ((backup.ENV_FILE, SECRETS.backup_secret_key),
                        (backup.PASSWORD_FILE, SECRETS.backup_password)):  # fmt: skip
        f = files[path]
        assert f.mode == "0600" and f.secret and value in f.content
    assert len(SECRETS.backup_password) == 48
    for step in plan.steps:
        for value in (SECRETS.backup_password, SECRETS.backup_secret_key):
            assert value not in step.command
        if not step.secret:
            assert SECRETS.backup_password not in step.stdin
    script = files[backup.BACKUP_SCRIPT].content
    assert "RESTIC_PASSWORD_FILE=" + backup.PASSWORD_FILE in script
    assert "--password" not in script


def test_schedule_and_retention_come_from_config() -> None:
    files = _files(lab_topology("dc1"))

    def unit(name: str, kind: str) -> str:
        spec = files[units.unit_path(f"{name}.{kind}")]
        assert isinstance(spec, FileSpec)
        return spec.content

    assert f"OnCalendar=*-*-* *:{backup.BACKUP_MINUTE}:00\n" in unit(backup.BACKUP_UNIT, "timer")
    assert f"ExecStart={backup.BACKUP_SCRIPT} scheduled\n" in unit(backup.BACKUP_UNIT, "service")
    assert "OnCalendar=Sun *-*-* 03:47:00\n" in unit(backup.CHECK_UNIT, "timer")
    assert f"ExecStart={backup.BACKUP_SCRIPT} check-scheduled\n" in unit(backup.CHECK_UNIT,
                                                                          "service")  # fmt: skip
    script = files[backup.BACKUP_SCRIPT].content  # type: ignore[attr-defined]
    assert "--keep-hourly 48 --keep-daily 30 --keep-monthly 12" in script
    topo = lab_topology("dc1", {"backupIntervalHours": 6, "backupKeepHourly": 0,
                                "backupKeepMonthly": 24})  # fmt: skip
    files = _files(topo)
    # Every 6 hours from midnight, as cron's */6 was: 00:17, 06:17, 12:17, 18:17.
    assert f"OnCalendar=*-*-* 00/6:{backup.BACKUP_MINUTE}:00\n" in unit(backup.BACKUP_UNIT, "timer")
    script = files[backup.BACKUP_SCRIPT].content  # type: ignore[attr-defined]
    assert "--keep-daily 30 --keep-monthly 24" in script and "--keep-hourly" not in script


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("backupRepository", "https://bucket.example.com", "s3:https://"),
        ("backupRepository", "s3:ftp://host/bucket", "s3:https://"),
        ("backupIntervalHours", 0, "from 1 to 24"),
        ("backupIntervalHours", "hourly", "whole number"),
        ("backupKeepDaily", -1, "from 0 to 10000"),
    ],
)
def test_bad_backup_config_is_refused_naming_the_key(key: str, value: object, says: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config({**read_stack_config("dc1"), key: value}, "dc1")
    assert f"mailcluster:{key}:" in str(e.value) and says in str(e.value)


def test_retention_that_keeps_nothing_is_refused() -> None:
    raw = {**read_stack_config("dc1"), "backupKeepHourly": 0, "backupKeepDaily": 0,
           "backupKeepMonthly": 0}  # fmt: skip
    with pytest.raises(ConfigError, match="would delete every snapshot"):
        load_config(raw, "dc1")


def test_a_good_repository_is_accepted() -> None:
    repo = "s3:https://us-east-1.linodeobjects.com/my-bucket/cluster"
    assert load_config({**read_stack_config("dc1"), "backupRepository": repo},
                       "dc1").backup_repository == repo  # fmt: skip


def test_env_file_refuses_what_the_shell_would_misread() -> None:
    with pytest.raises(ValueError, match="without quotes"):
        backup.env_file("s3:https://h/b", "it's", "x")


@pytest.mark.parametrize("bad", ["", "12345", "abcdefgz", "latest; rm -rf /", "../x"])
def test_snapshot_ids_are_checked(bad: str) -> None:
    with pytest.raises(OpsError, match="snapshot id"):
        check_snapshot(bad)
    assert check_snapshot("latest") == "latest" and check_snapshot("cf4edfc4") == "cf4edfc4"


@pytest.mark.parametrize("bad", ["", "../etc", "a/b", "x" * 65, ".hidden"])
def test_folder_names_are_checked(bad: str) -> None:
    with pytest.raises(OpsError, match="--to-folder"):
        check_folder(bad)


def test_snapshot_list_from_restic_json() -> None:
    snap_json = {"short_id": "cf4edfc4", "time": "2026-11-26T02:10:41.123Z",
                 "paths": ["/a", "/b"], "tags": ["mailcluster", "node=dc1-svr1"]}  # fmt: skip
    text = json.dumps([snap_json])
    (snap,) = parse_snapshots(text)
    assert (snap.id, snap.time, snap.node, snap.paths) == (
        "cf4edfc4", "2026-11-26T02:10:41Z", "dc1-svr1", 2)  # fmt: skip
    assert "cf4edfc4   2026-11-26T02:10:41Z  dc1-svr1" in render_snapshots([snap])
    assert render_snapshots([]) == "no snapshots yet"
    with pytest.raises(OpsError, match="not JSON"):
        parse_snapshots("Fatal: wrong password")
