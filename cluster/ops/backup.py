"""Backups and restores, through ``mailcluster-backup`` on the node that serves mail (the writer):
it holds the repository's settings (0600 files), runs restic, and restores through Dovecot and
MariaDB so the other nodes follow by replication. Nothing secret passes through here.

Restores fetch everything from the repository before they change anything, so a damaged
repository or a wrong password stops them with the live data untouched.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

from cluster.ops.accounts import check_address, flush_auth_cache
from cluster.ops.status import writer_of
from cluster.ops.target import OpsError, Target
from cluster.services.backup import BACKUP_SCRIPT, LOCK_WAIT_S

# A backup or restore of a big mailbox store takes long; this bounds a hung one.
BACKUP_TIMEOUT_S = 4 * 3600 + LOCK_WAIT_S

_SNAPSHOT = re.compile(r"^([0-9a-f]{8,64}|latest)$")
_FOLDER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}$")
# What mailcluster-backup's exit statuses mean (its header says the same).
_STATUS = {
    3: "not the writer (the node that serves mail changed while this ran? try again)",
    4: f"another backup or restore still runs on the node that serves mail after {LOCK_WAIT_S} s; "
    "try again later",
}


def check_snapshot(snapshot: str) -> str:
    if not _SNAPSHOT.match(snapshot):
        raise OpsError(
            f"--snapshot {snapshot!r}: a snapshot id (8 to 64 hex digits, as `backup list` "
            "shows) or 'latest'"
        )
    return snapshot


def check_folder(folder: str) -> str:
    if not _FOLDER.match(folder):
        raise OpsError(
            f"--to-folder {folder!r}: a folder name of letters, digits, space, '.', '_' or "
            "'-' (at most 64)"
        )
    return folder


@dataclass(frozen=True)
class Snapshot:
    id: str
    time: str
    node: str
    paths: int


def parse_snapshots(text: str) -> list[Snapshot]:
    """restic's ``snapshots --json`` (oldest first) as our rows."""
    try:
        data: list[dict[str, Any]] = json.loads(text or "[]")
    except json.JSONDecodeError as e:
        raise OpsError(f"restic's snapshot list is not JSON: {e}") from e
    out = []
    for snap in data:
        tags = snap.get("tags") or []
        node = next((t.removeprefix("node=") for t in tags if t.startswith("node=")), "?")
        out.append(Snapshot(snap["short_id"], snap["time"][:19] + "Z", node,
                            len(snap.get("paths") or [])))  # fmt: skip
    return out


def render_snapshots(snaps: list[Snapshot]) -> str:
    if not snaps:
        return "no snapshots yet"
    lines = [f"{'ID':10} {'TIME (UTC)':21} NODE"]
    lines += [f"{s.id:10} {s.time:21} {s.node}" for s in snaps]
    return "\n".join(lines)


# An error's text is kept whole up to this; longer (restic lists every damaged pack), its
# head (the script's own line: what failed) and its tail (restic's last words) are kept.
MESSAGE_MAX = 800
MESSAGE_HEAD = 200


def failure_message(text: str) -> str:
    """The script's error for the operator, on one screen: a long one keeps its first
    MESSAGE_HEAD characters and its end (the tail alone lost "repository check failed")."""
    text = text.removeprefix("mailcluster-backup: ") or "failed"
    if len(text) <= MESSAGE_MAX:
        return text
    return f"{text[:MESSAGE_HEAD]} [...] {text[-(MESSAGE_MAX - MESSAGE_HEAD) :]}"


class Backups:
    def __init__(self, target: Target) -> None:
        self.target = target
        writer = writer_of(target, target.nodes())
        if writer is None:
            raise OpsError(
                f"{target.description}: no node serves mail (backups and restores run there; "
                "`status` shows why)"
            )
        self.node = writer

    def _run(self, *args: str) -> str:
        res = self.target.run(self.node, [BACKUP_SCRIPT, *args], timeout=BACKUP_TIMEOUT_S)
        if res.returncode in _STATUS:
            raise OpsError(_STATUS[res.returncode])
        if res.returncode != 0:
            raise OpsError(failure_message(res.stderr.strip() or res.stdout.strip()))
        return res.stdout

    def run(self) -> str:
        """A backup now; returns the new snapshot's id."""
        return self._run("run").strip()

    def check(self) -> str:
        return self._run("check").strip()

    def snapshots(self) -> list[Snapshot]:
        return parse_snapshots(self._run("snapshots"))

    def snapshots_json(self) -> list[dict[str, Any]]:
        return [s.__dict__ for s in self.snapshots()]

    def restore_mailbox(self, user: str, snapshot: str = "latest", folder: str = "") -> str:
        args = ["restore-mailbox", check_snapshot(snapshot), check_address(user)]
        if folder:
            args.append(check_folder(folder))
        return self._run(*args)

    def restore_database(self, snapshot: str = "latest") -> str:
        out = self._run("restore-db", check_snapshot(snapshot))
        flush_auth_cache(self.target)  # the restored passwords count at once
        return out

    def restore_cluster(self, snapshot: str) -> str:
        """Disaster recovery into freshly built nodes: every maildir, then the databases (the
        accounts: replication then finds whole mailboxes), then every mailbox pushed to the
        other nodes."""
        started = time.monotonic()
        snap = check_snapshot(snapshot)
        out = self._run("restore-maildirs", snap) + self._run("restore-db", snap)
        out += self._run("sync-all")
        took = time.monotonic() - started
        return out + f"cluster restored from snapshot {snap} in {took:.0f} s\n"
