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
from cluster.services import backup, storage

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


# The rendered script's own functions, run in the base against a local repository: what
# `backup_snapshot` does with a tree that changes while restic reads it.
HARNESS = r"""
set -euo pipefail
WORK=$1; HOST_TAG=mailcluster
export RESTIC_REPOSITORY=$WORK/repo RESTIC_PASSWORD=harness RESTIC_CACHE_DIR=$WORK/cache
log() { echo "log: $*" >&2; }
fail() { echo "fail: $*" >&2; exit 1; }
eval "$(sed -n '/^explain() {/,/^}/p; /^VANISHED=/p; /^backup_snapshot() {/,/^}/p' "$WORK/script")"
restic init >/dev/null
# A maildir as Dovecot keeps it busy: messages renamed (flags) and lock and tmp files made and
# removed, without pause, while the backup runs.
M=$WORK/vmail/example.com/u
( while :; do
    for i in $(seq 1 200); do
      mv "$M/cur/m$i:2,S" "$M/cur/m$i:2,RS" 2>/dev/null || mv "$M/cur/m$i:2,RS" "$M/cur/m$i:2,S"
    done
    touch "$M/dovecot-uidlist.lock" "$M/tmp/delivery"
    rm -f "$M/dovecot-uidlist.lock" "$M/tmp/delivery"
  done ) &
churn=$!
sleep 0.5
snap=$(backup_snapshot)
kill "$churn"; wait "$churn" 2>/dev/null || true
echo "snapshot=$snap"
echo "snapshots=$(restic snapshots --json | grep -o '"short_id"' | wc -l)"
restic ls --json "$snap" | grep -o '"path":"[^"]*"' | sed 's/"path":"//; s/"$//' > "$WORK/listed"
"""


@pytest.mark.checkers
def test_a_backup_of_a_changing_maildir_saves_one_snapshot_without_locks_or_tmp() -> None:
    plan = build_host_plan(lab_topology("dc1"), "dc1-svr1", SECRETS, "lab")
    script = {f.path: f for f in plan.files}[backup.BACKUP_SCRIPT].content
    work = Path(tempfile.mkdtemp())
    vmail = work / "vmail"
    # The script backs up the nodes' paths: here the maildir root stands for them all.
    for path in backup.PATHS:
        script = script.replace(f"{path} ", f"{vmail} " if path == storage.VMAIL_DIR else "")
    script = script.replace(storage.VMAIL_DIR, str(vmail))
    (work / "script").write_text(script)
    mailbox = vmail / "example.com" / "u"
    for sub in ("cur", "new", "tmp"):
        (mailbox / sub).mkdir(parents=True)
    (mailbox / "new" / "kept").write_text("Subject: kept\n\nbody\n")
    for i in range(1, 201):
        (mailbox / "cur" / f"m{i}:2,S").write_text(f"Subject: {i}\n\nbody\n")
    proc = in_base("bash", "-c", HARNESS, "harness", str(work))
    assert proc.returncode == 0, proc.stderr
    out = dict(line.split("=", 1) for line in proc.stdout.split())
    tries = proc.stderr.count("files vanished while it ran")
    print(f"runs with vanished files: {tries}; stderr: {proc.stderr.strip()[-300:]}")
    # One snapshot, whatever the tries: the partial ones it replaced are forgotten.
    assert out["snapshot"] and out["snapshots"] == "1", (out, proc.stderr)
    listed = (work / "listed").read_text().splitlines()
    assert f"{mailbox}/new/kept" in listed
    assert f"{mailbox}/tmp" in listed, "tmp/ itself is kept (Dovecot needs it)"
    assert not [p for p in listed if p.endswith(".lock") or p.startswith(f"{mailbox}/tmp/")], listed
