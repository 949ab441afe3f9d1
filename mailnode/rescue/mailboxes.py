"""Every maildir of the lost node's volume merged into this node's live mailboxes.

One ``doveadm sync`` per mailbox between the user's live mailbox and the rescued maildir
(https://doc.dovecot.org/2.4.1/core/man/doveadm-sync.1.html), the same two-way merge the
replication runs between nodes, so it does what the node's own return would have done. Checked
with two real Dovecot 2.4.1 (tests/render/test_rescue_dovecot.py): a message only the lost node
had comes over once, under a new UID where the peer had given its UID to another message since
the takeover; a message the peer expunged since is not brought back (dsync knows the expunged
message's GUID), nor is one the lost node expunged; a folder or a mailbox only the lost node had
is created, and a mailbox made on both (two INBOX GUIDs) is merged; a second run changes
nothing. The rescued copy is brought up to date too (two-way),
so the volume is a current replica if it goes back to its node.

``-f``: a full sync, comparing every message (a folder made on both nodes in the same second
needs it: mailnode/replication/dsync.py). ``-l``: dsync's lock on the user, which the
replication controller's syncs take too.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from mailnode.rescue.run import RescueError, Runner
from mailnode.rescue.settings import Settings

EX_RERUN = 2  # doveadm sync: done, but something changed meanwhile: run it again
EX_NOUSER = 67
EX_TEMPFAIL = 75  # the lock was not granted in time
ATTEMPTS = 3


@dataclass
class MailboxReport:
    mailboxes: int = 0
    before: int = 0  # messages in the live mailboxes before the merge
    after: int = 0
    gone: list[str] = field(default_factory=list)  # no such user here any more
    failed: dict[str, str] = field(default_factory=dict)  # user -> why


def maildirs(vmail: Path) -> Iterator[tuple[str, Path]]:
    """(user@domain, maildir) of every mailbox under ``vmail`` (``<domain>/<user>/``), sorted."""
    if not vmail.is_dir():
        return
    for domain in sorted(vmail.iterdir()):
        if domain.name.startswith(".") or not domain.is_dir() or domain.is_symlink():
            continue
        for user in sorted(domain.iterdir()):
            if not user.name.startswith(".") and user.is_dir() and not user.is_symlink():
                yield f"{user.name}@{domain.name}", user


def message_count(cfg: Settings, runner: Runner, user: str) -> int | None:
    """Messages in all of ``user``'s live folders (None: no such user). 0 without asking Dovecot
    when the user has no live maildir yet: a doveadm command would make an INBOX there, with a
    GUID of its own (the merge copes with that, but need not)."""
    local, _, domain = user.rpartition("@")
    if not (Path(cfg.live_mount) / cfg.vmail / domain / local).is_dir():
        return 0
    res = runner(
        [*cfg.doveadm, "-f", "flow", "mailbox", "status", "-u", user, "messages", "*"],
        timeout=cfg.sync_timeout_s,
    )
    if res.returncode == EX_NOUSER:
        return None
    if res.returncode != 0:
        raise RescueError(f"doveadm mailbox status -u {user}: {res.why()}")
    total = 0
    for line in res.stdout.splitlines():
        for word in line.split():
            if word.startswith("messages="):
                total += int(word.removeprefix("messages="))
    return total


def sync(cfg: Settings, runner: Runner, user: str, maildir: Path) -> tuple[int, str]:
    """The two-way merge: (0, "") when done, else doveadm's exit status and why not."""
    argv = [
        *cfg.doveadm,
        "sync",
        "-f",
        "-l",
        str(cfg.lock_timeout_s),
        "-u",
        user,
        f"maildir:{maildir}",
    ]
    rc, why = 0, ""
    for _ in range(ATTEMPTS):
        res = runner(argv, timeout=cfg.sync_timeout_s)
        if res.returncode == 0:
            return 0, ""
        rc, why = res.returncode, f"exit {res.returncode}: {res.why()}"
        if rc not in (EX_RERUN, EX_TEMPFAIL):
            break
    return rc, why


@dataclass(frozen=True)
class Merged:
    user: str
    before: int = 0
    after: int = 0
    gone: bool = False
    why: str = ""  # failed: why


def merge_one(cfg: Settings, runner: Runner, user: str, maildir: Path) -> Merged:
    if ":" in str(maildir):  # a mail location's separator: doveadm would misread the path
        return Merged(user, why=f"{maildir}: a ':' in the path")
    before = message_count(cfg, runner, user)
    if before is None:
        return Merged(user, gone=True)
    rc, why = sync(cfg, runner, user, maildir)
    if rc == EX_NOUSER:
        return Merged(user, gone=True)
    if rc:
        return Merged(user, why=why)
    return Merged(user, before, message_count(cfg, runner, user) or 0)


def merge(cfg: Settings, runner: Runner, root: Path, log: Callable[[str], None]) -> MailboxReport:
    """Every mailbox of the volume, ``cfg.workers`` at a time (one user is never merged twice at
    once: each appears once)."""
    report = MailboxReport()
    t0 = time.monotonic()
    with ThreadPoolExecutor(cfg.workers) as pool:
        done = list(pool.map(lambda box: merge_one(cfg, runner, *box), maildirs(root / cfg.vmail)))
    for m in done:
        if m.gone:
            report.gone.append(m.user)
        elif m.why:
            report.failed[m.user] = m.why
        else:
            report.mailboxes += 1
            report.before += m.before
            report.after += m.after
            if m.after != m.before:
                log(f"  {m.user}: {m.before} -> {m.after} messages")
    log(
        f"maildirs: {report.mailboxes} mailboxes merged in {time.monotonic() - t0:.1f} s, "
        f"{report.before} -> {report.after} messages"
    )
    return report
