"""mailcluster-rescue: the DC peer's volume, attached here after it was lost for good.

    mailcluster-rescue check PEER          can this node take PEER's rescue (Dovecot and Postfix up)
    mailcluster-rescue mount PEER          mount PEER's attached volume at the rescue mount point
    mailcluster-rescue merge PEER [--json] its maildirs into the live mailboxes, its Postfix queue
                                           into this node's
    mailcluster-rescue umount PEER         unmount it (then it can be detached)

The operator runs them through ``python -m cluster.ops rescue``, which attaches the volume
first and detaches it after. Each command is idempotent. Exit status: 0 done, 1 a mailbox or
the queue could not be merged (the rest was; run merge again), 2 refused (bad input, nothing
mounted, a check failed): one line on stderr says why.
"""

from __future__ import annotations

import argparse
import grp
import json
import pwd
import sys
import time
from dataclasses import asdict
from pathlib import Path

from mailnode.rescue import mailboxes, volume
from mailnode.rescue.queue import Owners, QueueRescue
from mailnode.rescue.run import RescueError, Runner, run
from mailnode.rescue.settings import CONFIG, Settings, SettingsError, load


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def check(cfg: Settings, runner: Runner) -> None:
    if runner(["systemctl", "is-active", "--quiet", "dovecot"]).returncode != 0:
        raise RescueError(f"Dovecot is not running on {cfg.node}: the maildirs merge into it")
    if runner(["postfix", "status"]).returncode != 0:
        raise RescueError(f"Postfix is not running on {cfg.node}: the queue is delivered by it")
    volume.is_mounted(cfg, runner)  # nothing else at the rescue mount point


def postfix_queue(runner: Runner) -> tuple[Path, Owners]:
    res = runner(["postconf", "-h", "queue_directory", "mail_owner", "setgid_group"])
    lines = res.stdout.split()
    if res.returncode != 0 or len(lines) != 3:
        raise RescueError(f"postconf: {res.why()}")
    owner = pwd.getpwnam(lines[1])
    return Path(lines[0]), Owners(owner.pw_uid, owner.pw_gid, grp.getgrnam(lines[2]).gr_gid)


def merge(cfg: Settings, runner: Runner) -> dict[str, object]:
    t0 = time.monotonic()
    root = volume.root(cfg, runner)
    boxes = mailboxes.merge(cfg, runner, root, log)
    live, owners = postfix_queue(runner)
    queue = QueueRescue(root / cfg.queue, live, cfg.peer, owners, runner, log).run()
    return {
        "peer": cfg.peer,
        "mailboxes": asdict(boxes),
        "queue": asdict(queue),
        "seconds": round(time.monotonic() - t0, 2),
    }


def main(argv: list[str] | None = None, runner: Runner = run) -> int:
    p = argparse.ArgumentParser(prog="mailcluster-rescue", description=__doc__.split("\n")[0])
    p.add_argument("--config", default=CONFIG)
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("check", "mount", "merge", "umount"):
        s = sub.add_parser(name)
        s.add_argument("peer")
        if name == "merge":
            s.add_argument("--json", action="store_true", help="the summary as JSON on stdout")
    a = p.parse_args(argv)
    try:
        cfg = load(a.config)
        if a.peer != cfg.peer:
            raise RescueError(
                f"{a.peer} is not {cfg.node}'s data-centre peer: only {cfg.peer}'s volume can be "
                f"rescued here (a volume attaches inside its region)"
            )
        if a.command == "check":
            check(cfg, runner)
        elif a.command == "mount":
            volume.mount(cfg, runner, log)
        elif a.command == "umount":
            volume.umount(cfg, runner, log)
        else:
            summary = merge(cfg, runner)
            if a.json:
                print(json.dumps(summary))
            boxes = summary["mailboxes"]
            if isinstance(boxes, dict) and boxes["failed"]:
                for user, why in boxes["failed"].items():
                    log(f"failed: {user}: {why}")
                return 1
    except (SettingsError, RescueError) as e:
        log(f"mailcluster-rescue: {e}")
        return 2
    return 0
