"""The lost node's Postfix queue, delivered by this node's Postfix.

Postfix names a queue file after its inode number (short queue IDs, Postfix's default), so a
file copied from another filesystem must take its new inode's name, or a later message here
could get the same one. ``postsuper -s`` does that, and renames the message's delivery logs
(defer, bounce, trace) with it ("Rename files whose name does not match the message file inode
number. This operation is necessary after restoring a mail queue from a different machine",
postsuper(1); ``fix_queue_id`` in src/postsuper/postsuper.c). So the messages go to this node's
hold queue, which nothing delivers from, their logs to the log queues under the same name;
``postsuper -s defer bounce trace hold`` puts the logs in place and renames each message with its
logs (those queues only: the live ones are left alone); then the messages are released by name
(``postsuper -H``, into the deferred queue) and the queue is flushed (``postqueue -f``). What was
on hold on the lost node stays on hold here. Mail still in the maildrop queue has not been
through cleanup: it goes to this node's maildrop queue, where pickup takes it as new.

Only finished files: Postfix makes a queue file ready (mode 0700) before it acknowledges the
message, and never opens one without it (src/global/mail_open_ok.c); a file that is not ready
was never acknowledged and stays on the volume.

Nothing twice, even when a rescue is interrupted and run again: each file is first copied to a
staging directory in this node's queue directory (the queue's own filesystem), and its original
deleted once the copy is on disk; when all are staged, their inode numbers go to a manifest, and
only then are they linked into Postfix's queues. The release reads the manifest. A second run
finds the volume's queue empty and finishes whatever a first run left staged or on hold.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from mailnode.rescue.run import RescueError, Runner

MAILDROP = "maildrop"
HOLD = "hold"
# Postfix's message queues, and the per-message logs kept under the message's name.
MESSAGE_QUEUES = (MAILDROP, "incoming", "active", "deferred", HOLD)
LOG_QUEUES = ("defer", "bounce", "trace")
READY = stat.S_IRWXU  # MAIL_QUEUE_STAT_READY
STAGING = "mailcluster-rescue"
MANIFEST = "manifest.json"  # inode -> the queue the message was in on the lost node


@dataclass(frozen=True)
class Owners:
    """Who owns queue files here: Postfix's mail_owner, and setgid_group for maildrop files."""

    uid: int
    gid: int
    postdrop_gid: int


@dataclass
class QueueReport:
    released: int = 0  # messages handed to this node's queue manager
    held: int = 0  # messages left on hold, as they were on the lost node
    maildrop: int = 0  # messages handed to pickup
    logs: int = 0  # delivery logs carried with their messages
    unfinished: int = 0  # files never acknowledged (not ready), left on the volume


def files(root: Path, queue: str) -> Iterator[Path]:
    """The regular files of one queue directory, at any hashing depth."""
    base = root / queue
    if not base.is_dir():
        return
    for parent, _, names in os.walk(base):
        for name in sorted(names):
            path = Path(parent) / name
            if path.is_file() and not path.is_symlink():
                yield path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class QueueRescue:
    """Moves the queue under ``source`` (the volume's copy of /var/spool/postfix) into the live
    queue directory ``live``."""

    def __init__(
        self,
        source: Path,
        live: Path,
        peer: str,
        owners: Owners,
        runner: Runner,
        log: Callable[[str], None],
    ) -> None:
        self.source = source
        self.live = live
        self.staging = live / STAGING / peer
        self.owners = owners
        self.runner = runner
        self.log = log
        self.report = QueueReport()

    def run(self) -> QueueReport:
        self.stage()
        if self.place():
            self.postsuper(["-s", *LOG_QUEUES, HOLD])
        self.release()
        with contextlib.suppress(OSError):  # gone already, or not empty (a file that failed)
            self.staging.rmdir()
            self.staging.parent.rmdir()
        r = self.report
        if r.released or r.maildrop:
            self.flush()
        self.log(
            f"queue: {r.released} messages delivered from here, {r.maildrop} handed to "
            f"pickup, {r.held} kept on hold, {r.logs} delivery logs; {r.unfinished} "
            "unfinished files (never acknowledged) left on the volume"
        )
        return r

    # -- 1. from the volume to the staging directory ------------------------------------------

    def stage(self) -> None:
        ready: set[str] = set()
        moved: list[Path] = []
        self.staging.mkdir(mode=0o700, parents=True, exist_ok=True)
        for tmp in self.staging.glob(".*.tmp"):  # a copy an interrupted run left half done
            tmp.unlink()
        for queue in MESSAGE_QUEUES:
            for path in files(self.source, queue):
                if path.stat().st_mode & READY != READY:
                    self.report.unfinished += 1
                    continue
                ready.add(path.name)
                moved.append(self.copy(path, queue))
        for queue in LOG_QUEUES:
            for path in files(self.source, queue):
                if path.name in ready:  # a log without its message is of no use
                    moved.append(self.copy(path, queue))
        fsync_dir(self.staging)
        for path in moved:
            path.unlink()
        for parent in {p.parent for p in moved}:
            fsync_dir(parent)

    def copy(self, path: Path, queue: str) -> Path:
        """``path`` into the staging directory as ``<queue>.<name>``, on disk; returns
        ``path``. Owned as Postfix's own files here (the lost node's ids may differ)."""
        target = self.staging / f"{queue}.{path.name}"
        tmp = self.staging / f".{queue}.{path.name}.tmp"
        with open(path, "rb") as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        st = path.stat()
        gid = self.owners.postdrop_gid if queue == MAILDROP else self.owners.gid
        uid = st.st_uid if queue == MAILDROP else self.owners.uid  # maildrop: the submitter
        os.chown(tmp, uid, gid)
        os.chmod(tmp, stat.S_IMODE(st.st_mode))
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))  # its age in the queue counts on
        os.replace(tmp, target)
        return path

    # -- 2. from the staging directory into Postfix's queues ----------------------------------

    def manifest(self) -> dict[str, str]:
        try:
            data = json.loads((self.staging / MANIFEST).read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def save_manifest(self, data: dict[str, str]) -> None:
        tmp = self.staging / f".{MANIFEST}.tmp"
        with open(tmp, "w") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.staging / MANIFEST)
        fsync_dir(self.staging)

    def in_use(self) -> set[str]:
        """The names of every queue file and log here."""
        return {p.name for q in (*MESSAGE_QUEUES, *LOG_QUEUES) for p in files(self.live, q)}

    def place(self) -> bool:
        """Link every staged message (with its logs) into this node's queues; True when messages
        wait on hold for their new names (this run's or an interrupted one's)."""
        staged = sorted(
            p for p in self.staging.glob("*.*") if not p.name.startswith(".") and p.name != MANIFEST
        )
        if not staged and not (self.staging / MANIFEST).exists():
            return False
        by_name: dict[str, dict[str, Path]] = {}
        for path in staged:
            queue, name = path.name.split(".", 1)
            by_name.setdefault(name, {})[queue] = path
        manifest = self.manifest()
        for parts in by_name.values():
            for queue, path in parts.items():
                if queue in MESSAGE_QUEUES and queue != MAILDROP:
                    manifest[str(path.stat().st_ino)] = queue
        self.save_manifest(manifest)
        in_use = self.in_use()
        for name, parts in by_name.items():
            message = next((q for q in MESSAGE_QUEUES if q in parts), None)
            if message is None:  # logs whose message was placed by an earlier run
                for path in parts.values():
                    path.unlink()
                continue
            new = name if name not in in_use else name[:5] + secrets.token_hex(5).upper()
            in_use.add(new)
            for queue, path in parts.items():  # the logs first: the message completes a set
                if queue in LOG_QUEUES:
                    self.link(path, self.live / queue / new)
                    self.report.logs += 1
            dest = MAILDROP if message == MAILDROP else HOLD
            self.link(parts[message], self.live / dest / new)
            self.report.maildrop += dest == MAILDROP
        return bool(manifest)

    def link(self, path: Path, dest: Path) -> None:
        """``path`` becomes ``dest`` (never replacing a file there)."""
        os.link(path, dest)
        fsync_dir(dest.parent)
        path.unlink()

    # -- 3. renamed, released, delivered ------------------------------------------------------

    def postsuper(self, args: list[str], stdin: str = "") -> None:
        res = self.runner(["postsuper", *args], stdin=stdin, timeout=600)
        if res.returncode != 0:
            raise RescueError(f"postsuper {' '.join(args)}: {res.why()}")

    def release(self) -> None:
        manifest = self.manifest()
        if not manifest:
            return
        ids = []
        for path in files(self.live, HOLD):
            queue = manifest.get(str(path.stat().st_ino))
            if queue is None:
                continue
            if queue == HOLD:
                self.report.held += 1
            else:
                ids.append(path.name)
        if ids:
            self.postsuper(["-H", "-"], stdin="".join(f"{i}\n" for i in ids))
            self.report.released += len(ids)
        (self.staging / MANIFEST).unlink()

    def flush(self) -> None:
        res = self.runner(["postqueue", "-f"], timeout=60)
        if res.returncode != 0:  # Postfix is not running: the messages wait in its queue
            self.log(f"queue: postqueue -f: {res.why()} (delivered when Postfix runs)")
        if self.report.maildrop:
            self.runner(["postkick", "public", "pickup", "W"], timeout=60)
