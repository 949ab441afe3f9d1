"""The backup script, rendered, against the tools of the base the nodes run: bash parses it,
every program it calls is installed there, it refuses to run without a repository, and its own
functions, run against a local repository, make a compressed (format 2) repository, keep one
snapshot with every message of a maildir that changed under restic, and fail, naming the file,
on any other read error."""

from __future__ import annotations

import dataclasses
import re
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


def rendered_script() -> str:
    plan = build_host_plan(lab_topology("dc1"), "dc1-svr1", SECRETS, "lab")
    return {f.path: f for f in plan.files}[backup.BACKUP_SCRIPT].content


@pytest.mark.checkers
def test_backup_script_parses_and_its_tools_are_in_the_base() -> None:
    parsed = in_base("bash", "-n", input=rendered_script())
    assert parsed.returncode == 0, parsed.stderr
    for tool in ("restic", "flock", "mariadb-dump", "mariadb", "doveadm", "logger"):
        found = in_base("bash", "-c", f"command -v {tool}")
        assert found.returncode == 0, f"{tool} is not in the base"
    # restic 0.17 gave backup --json's errors the shape VANISHED reads ({"message": ...}).
    version = in_base("restic", "version")
    number = re.match(r"restic (\d+)\.(\d+)\.", version.stdout)
    assert number and (int(number[1]), int(number[2])) >= (0, 17), version.stdout


@pytest.mark.checkers
def test_backup_script_refuses_to_run_without_a_repository() -> None:
    script = rendered_script()
    empty = backup.env_file("", "", "")
    # The script with its env file swapped for an empty one in /tmp (shared with the base).
    d = Path(tempfile.mkdtemp())
    (d / "backup.env").write_text(empty)
    (d / "script").write_text(script.replace(backup.ENV_FILE, str(d / "backup.env")))
    proc = in_base("bash", str(d / "script"), "run")
    assert proc.returncode == 1
    assert "no backup repository or key pair" in proc.stderr and "backupRepository" in proc.stderr


# The rendered script's own functions, run in the base against a local repository.
FUNCTIONS = (
    r"/^explain() {/,/^}/p; /^VANISHED=/p; /^open_repository() {/,/^}/p;"
    r" /^backup_snapshot() {/,/^}/p"
)
HARNESS_HEAD = f"""set -euo pipefail
WORK=$1; HOST_TAG=mailcluster
export RESTIC_REPOSITORY=$WORK/repo RESTIC_PASSWORD=harness RESTIC_CACHE_DIR=$WORK/cache
log() {{ echo "log: $*" >&2; }}
fail() {{ echo "fail: $*" >&2; exit 1; }}
eval "$(sed -n '{FUNCTIONS}' "$WORK/script")"
"""

# restic as a busy maildir makes it run, deterministically: its first backup saves the tree,
# then Dovecot renames every message (new flags) and restic reports the first one gone, as
# restic 0.18 reports a file that vanished under it (an "error" line, exit 3, a snapshot saved).
# Every other call is restic itself.
RESTIC_WRAPPER = r"""#!/bin/bash
if [ "$1" = backup ] && [ ! -e "$WORK/vanished" ]; then
  touch "$WORK/vanished"
  /usr/bin/restic "$@"
  gone=$M/cur/m1:2,S
  for f in "$M"/cur/*:2,S; do mv "$f" "${f%:2,S}:2,RS"; done
  printf '{"message_type":"error","error":{"message":"lstat %s: no such file or directory"},' \
    "$gone" >&2
  printf '"during":"archival","item":"%s"}\n' "$gone" >&2
  printf '{"message_type":"exit_error","code":3,%s}\n' \
    '"message":"Warning: at least one source file could not be read"' >&2
  exit 3
fi
exec /usr/bin/restic "$@"
"""

CHANGING = r"""
open_repository
echo "version=$(restic cat config | grep -o '"version": *[0-9]*' | grep -o '[0-9]*$')"
export WORK M=$WORK/vmail/example.com/u PATH=$WORK/bin:$PATH
snap=$(backup_snapshot)
echo "snapshot=$snap"
echo "snapshots=$(restic snapshots --json | grep -o '"short_id"' | wc -l)"
restic ls --json "$snap" | grep -o '"path":"[^"]*"' | sed 's/"path":"//; s/"$//' > "$WORK/listed"
"""


def harness_dir(script: str) -> tuple[Path, Path]:
    """A work directory holding the script, whose backup paths become one maildir root:
    (work, that root)."""
    work = Path(tempfile.mkdtemp())
    vmail = work / "vmail"
    for path in backup.PATHS:
        script = script.replace(f"{path} ", f"{vmail} " if path == storage.VMAIL_DIR else "")
    (work / "script").write_text(script.replace(storage.VMAIL_DIR, str(vmail)))
    return work, vmail


@pytest.mark.checkers
def test_a_backup_of_a_changing_maildir_saves_one_snapshot_with_every_message() -> None:
    work, vmail = harness_dir(rendered_script())
    (work / "bin").mkdir()
    (work / "bin" / "restic").write_text(RESTIC_WRAPPER)
    (work / "bin" / "restic").chmod(0o755)
    mailbox = vmail / "example.com" / "u"
    for sub in ("cur", "new", "tmp"):
        (mailbox / sub).mkdir(parents=True)
    (mailbox / "new" / "kept").write_text("Subject: kept\n\nbody\n")
    for i in range(1, 201):
        (mailbox / "cur" / f"m{i}:2,S").write_text(f"Subject: {i}\n\nbody\n")
    # What Dovecot holds for milliseconds, or is still writing: never in a snapshot.
    (mailbox / "dovecot-uidlist.lock").write_text("")
    (mailbox / "tmp" / "delivery").write_text("half a message")
    proc = in_base("bash", "-c", HARNESS_HEAD + CHANGING, "harness", str(work))
    assert proc.returncode == 0, proc.stderr
    out = dict(line.split("=", 1) for line in proc.stdout.split())
    # A new repository is restic's format 2: compressed.
    assert out["version"] == "2", out
    # The vanished file made exactly one retry, and the partial snapshot it replaced is gone.
    assert proc.stderr.count("files vanished while it ran") == 1, proc.stderr
    assert out["snapshot"] and out["snapshots"] == "1", (out, proc.stderr)
    listed = (work / "listed").read_text().splitlines()
    messages = [p.rsplit("/", 1)[1] for p in listed if p.startswith(f"{mailbox}/cur/")]
    # Every message, under the name it has after the renames: the retry's snapshot is kept.
    assert {re.sub(r":2,R?S$", "", m) for m in messages} == {f"m{i}" for i in range(1, 201)}
    assert all(m.endswith(":2,RS") for m in messages), messages
    assert f"{mailbox}/new/kept" in listed
    assert f"{mailbox}/tmp" in listed, "tmp/ itself is kept (Dovecot needs it)"
    assert not [p for p in listed if p.endswith(".lock") or p.startswith(f"{mailbox}/tmp/")], listed


UNREADABLE = r"""
open_repository
if snap=$(backup_snapshot); then echo "snapshot=$snap"; exit 0; fi
# restic's own error line, with a vanished file's reason in it: what VANISHED must match.
line=$(grep '"message_type":"error"' "$WORK/backup.err" | head -n 1)
echo "$line" >&2
echo "matches=$(sed 's/: permission denied"/: no such file or directory"/' <<<"$line" \
  | grep -c "$VANISHED")" >&2
exit 1
"""


@pytest.mark.checkers
def test_a_file_restic_cannot_read_fails_the_backup_naming_it() -> None:
    """Real restic, as a user that cannot read one message: an error other than a vanished file
    fails the run with restic's message; and restic's own error line, with a vanished file's
    reason in it, is what VANISHED matches."""
    work, vmail = harness_dir(rendered_script())
    mailbox = vmail / "example.com" / "u"
    (mailbox / "cur").mkdir(parents=True)
    (mailbox / "cur" / "m1:2,S").write_text("Subject: 1\n\nbody\n")
    unreadable = mailbox / "cur" / "m2:2,S"
    unreadable.write_text("Subject: 2\n\nbody\n")
    unreadable.chmod(0)
    as_nobody = f"""chown -R nobody: {work}; chown root: {unreadable}
exec setpriv --reuid=nobody --regid=nogroup --clear-groups env HOME={work} bash -c "$0" harness "$@"
"""
    proc = in_base("bash", "-c", as_nobody, HARNESS_HEAD + UNREADABLE, str(work))
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "fail: backup failed:" in proc.stderr, proc.stderr
    assert f"open {unreadable}: permission denied" in proc.stderr, proc.stderr
    assert "matches=1" in proc.stderr, proc.stderr
