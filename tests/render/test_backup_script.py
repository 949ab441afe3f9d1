"""The backup script and its cron file, rendered, against the tools of the base the nodes run:
bash parses the script, and every program it calls is installed there (restic, flock,
mariadb-dump, doveadm, logger)."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import pytest
from rendertools import in_base

from cluster.hostplan import build_host_plan
from cluster.lab.model import lab_topology
from cluster.material import generate
from cluster.services import backup

SECRETS = dataclasses.replace(
    generate("example.com", ["dc1", "dc2"], {"dc1": ["mail.example.com"],
                                             "dc2": ["mail.example.com"]}),
    backup_repository="s3:http://192.0.2.100:9000/mailcluster-backup",
    backup_access_key="AKIAEXAMPLE",
    backup_secret_key="SecretKeyExample",
)  # fmt: skip


@pytest.mark.checkers
def test_backup_script_parses_and_its_tools_are_in_the_base() -> None:
    plan = build_host_plan(lab_topology("dc1"), "dc1-svr1", SECRETS, "lab")
    script = {f.path: f for f in plan.files}[backup.BACKUP_SCRIPT].content
    parsed = in_base("bash", "-n", input=script)
    assert parsed.returncode == 0, parsed.stderr
    for tool in ("restic", "flock", "mariadb-dump", "mysql", "doveadm", "logger", "crontab"):
        found = in_base("bash", "-c", f"command -v {tool}")
        assert found.returncode == 0, f"{tool} is not in the base"
    version = in_base("restic", "version")
    assert version.returncode == 0 and version.stdout.startswith("restic 0.14"), version.stdout


@pytest.mark.checkers
def test_backup_script_refuses_to_run_without_a_repository() -> None:
    plan = build_host_plan(lab_topology("dc1"), "dc1-svr1", SECRETS, "lab")
    script = {f.path: f for f in plan.files}[backup.BACKUP_SCRIPT].content
    empty = backup.env_file("", "", "")
    # The script with its env file swapped for an empty one in /tmp (shared with the base).
    d = Path(tempfile.mkdtemp())
    (d / "backup.env").write_text(empty)
    (d / "script").write_text(script.replace(backup.ENV_FILE, str(d / "backup.env")))
    proc = in_base("bash", str(d / "script"), "run")
    assert proc.returncode == 1
    assert "no backup repository or key pair" in proc.stderr and "backupRepository" in proc.stderr
