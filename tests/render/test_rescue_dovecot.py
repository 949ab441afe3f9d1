"""mailcluster-rescue against the real tools of the lab's base: the maildir merge with two real
Dovecot 2.4.1 (``dovecots.py``: the plan's own dovecot.conf), the queue's move with the real
postsuper of Postfix 3.10. What mailnode/rescue/mailboxes.py and queue.py say they rely on."""

from __future__ import annotations

import os
import subprocess
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import dovecots
import pytest
from dovecots import Dovecot, EventLog
from rendertools import base, in_base

from mailnode.rescue import mailboxes
from mailnode.rescue.queue import LOG_QUEUES, MESSAGE_QUEUES, Owners, QueueRescue
from mailnode.rescue.run import Completed
from mailnode.rescue.settings import Settings

pytestmark = pytest.mark.checkers

U1, U2, U3 = "u1@example.com", "u2@example.com", "u3@example.com"


def base_runner(argv: Sequence[str], *, stdin: str = "", timeout: float = 60) -> Completed:
    proc = base().run(list(argv), input=stdin, timeout=timeout)
    return Completed(proc.returncode, proc.stdout, proc.stderr)


def settings(live: Dovecot) -> Settings:
    return Settings(
        node="A", peer="B", device="/dev/null", mount_point="/nonexistent",
        live_mount=str(live.home),
        vmail="vmail", queue="postfix", doveadm=("doveadm", "-c", str(live.conf)), workers=2,
        lock_timeout_s=10, sync_timeout_s=60, device_wait_s=1,
    )  # fmt: skip


def inbox(d: Dovecot, user: str, box: str = "INBOX") -> Counter[str]:
    out = d.doveadm("-f", "tab", "fetch", "-u", user, "hdr.subject", "mailbox", box, "all")
    return Counter(out.stdout.splitlines()[1:])


def test_merge_brings_what_only_the_lost_node_had_once_and_keeps_every_expunge() -> None:
    with dovecots.home() as home:
        events = EventLog()
        live = Dovecot("live", home / "live", events.url, [U1, U2, U3])
        lost = Dovecot("lost", home / "lost", events.url, [U1, U2, U3])
        live.start()
        lost.start()
        try:
            for s in ("m1", "m2", "m3"):
                live.deliver(U1, s)
            live.doveadm("sync", "-u", U1, "-f", lost.target)  # replicated: UIDs 1-3 on both
            # The lost node, before its crash: a delivery its replication never pushed (UID 4),
            # a folder, its user's expunge of m3, and a mailbox its peer never had.
            lost.deliver(U1, "r1")
            lost.doveadm("mailbox", "create", "-u", U1, "Projects")
            lost.doveadm("expunge", "-u", U1, "mailbox", "INBOX", "header", "Subject", "m3")
            lost.deliver(U2, "v1")
            # A mailbox made on both nodes, never replicated: two INBOXes with two GUIDs.
            lost.deliver(U3, "w-lost")
            live.deliver(U3, "w-live")
            # The peer after the takeover: UIDs 4 and 5 for other messages, then its user
            # expunges l1 (UID 4, where the lost node has r1) and m1.
            live.deliver(U1, "l1")
            live.deliver(U1, "l2")
            for s in ("l1", "m1"):
                live.doveadm("expunge", "-u", U1, "mailbox", "INBOX", "header", "Subject", s)
            lost.stop()

            report = mailboxes.merge(settings(live), base_runner, lost.home, print)
            assert inbox(live, U1) == Counter({"m2": 1, "l2": 1, "r1": 1})
            assert "Projects" in live.doveadm("mailbox", "list", "-u", U1).stdout.split()
            assert inbox(live, U2) == Counter({"v1": 1})
            assert inbox(live, U3) == Counter({"w-lost": 1, "w-live": 1})
            assert (report.mailboxes, report.before, report.after) == (3, 4, 6), report
            assert not report.failed and not report.gone
            # The rescued copy is a current replica now: the live side's messages are on it.
            assert lost.subjects(U1) == {"m2", "l2", "r1"}

            again = mailboxes.merge(settings(live), base_runner, lost.home, print)
            assert (again.before, again.after) == (6, 6)
            assert inbox(live, U1) == Counter({"m2": 1, "l2": 1, "r1": 1})
        finally:
            live.stop()
            lost.stop()
            events.close()


def postfix_ids() -> Owners:
    """The base's postfix user and group and its postdrop group (the node's ids)."""
    uid = int(in_base("id", "-u", "postfix").stdout)
    gid = int(in_base("id", "-g", "postfix").stdout)
    postdrop = int(in_base("getent", "group", "postdrop").stdout.split(":")[2])
    return Owners(uid, gid, postdrop)


@pytest.mark.root
def test_postsuper_renames_the_moved_queue_to_its_inodes_with_the_logs() -> None:
    owners = postfix_ids()
    uid, gid = owners.uid, owners.gid
    root = Path(subprocess.check_output(["mktemp", "-d", "/tmp/mailcluster-queue.XXXXXX"],
                                        text=True).strip())  # fmt: skip
    try:
        conf = root / "conf"
        conf.mkdir()
        live = root / "spool"
        (conf / "main.cf").write_text(f"queue_directory = {live}\ncompatibility_level = 3.6\n")
        root.chmod(0o755)
        for q in (*MESSAGE_QUEUES, *LOG_QUEUES):
            (live / q).mkdir(parents=True)
            os.chown(live / q, uid, gid)
            (live / q).chmod(0o700)
        src = root / "volume" / "postfix"

        def put(path: Path, text: str, mode: int = 0o700) -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            path.chmod(mode)

        put(src / "deferred" / "A" / "ABCDE1", "deferred 1")
        put(src / "defer" / "A" / "ABCDE1", "log 1", 0o600)
        put(src / "hold" / "BCDEF2", "held")

        def runner(argv: Sequence[str], *, stdin: str = "", timeout: float = 60) -> Completed:
            # The node's own main.cf is /etc/postfix's; here the test's.
            return base_runner([argv[0], "-c", str(conf), *argv[1:]], stdin=stdin)

        lines: list[str] = []
        report = QueueRescue(src, live, "B", owners, runner, lines.append).run()
        assert (report.released, report.held, report.logs) == (1, 1, 1)
        moved = {p.read_text(): p for p in live.rglob("*") if p.is_file()}
        for text in ("deferred 1", "held"):
            path = moved[text]
            # Named after its inode here (short queue IDs: 5 characters, then the inode).
            assert path.name[5:] == format(path.stat().st_ino, "X"), path
            assert path.stat().st_uid == uid
        assert moved["deferred 1"].parent.parent.name == "deferred"  # released (hashed)
        assert moved["held"].parent.name == "hold"
        name = moved["deferred 1"].name
        assert moved["log 1"] == live / "defer" / name[0] / name  # renamed with its message
        assert any("postqueue -f" in line for line in lines)  # no Postfix runs here: said so
    finally:
        subprocess.run(["rm", "-rf", str(root)], check=True)
