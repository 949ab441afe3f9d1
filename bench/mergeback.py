"""Merge-back benchmark in the lab: run for real, as root, with the lab up; not in CI.

    python bench/mergeback.py [--mailboxes 150]

Replication inside a data centre is asynchronous, so a crash can leave an acknowledged message
only on the crashed node's volume. This measures how soon it is readable on the peer once the
node is back:

1. dc1 gets ``--mailboxes`` mailboxes, each with a message (the ones it lacks are added). Then
   the bench waits until no message has changed for the catch-up's window (10 minutes), so
   that only the mailbox under test counts as changed just before the crash, as on a
   running cluster where most mailboxes are quiet at any moment.
2. A full round: the seconds the holder's replication controller takes to sync every mailbox to
   every target (``mailcluster-replication sweep --wait``, full syncs). A message that waited
   behind such a round, as one would without the catch-up's recent mailboxes first, waited up to
   this long.
3. A fresh mailbox gets one message that reaches the peer, then a second while the peer's
   Dovecot is stopped: that one is only on the holder. The holder is crashed, the peer takes
   over, the crashed node boots and rejoins. Reported: the seconds from the rejoin until the
   peer has the second message in its maildir.

The maildir is read with find, not doveadm: a doveadm command on a node the first push has not
reached makes an INBOX of its own there, with another GUID.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cluster.lab.driver import Lab, shared_ip  # noqa: E402
from cluster.services.replication import RECENT_WINDOW_S, SCRIPT  # noqa: E402
from cluster.services.storage import VMAIL_DIR  # noqa: E402

DOMAIN = "example.com"
VIP1 = shared_ip("dc1")
DC1 = ("dc1-svr1", "dc1-svr2")
LAB = Lab()

DRAIN = f"""t0=$(date +%s.%N)
{SCRIPT} sweep --wait 1800 >&2
awk -v t0="$t0" -v t1="$(date +%s.%N)" 'BEGIN {{ print t1 - t0 }}'
"""


def mailbox_count(host: str) -> int:
    return int(LAB.exec(host, "bash", "-c", "doveadm user '*' | wc -l").stdout)


def with_mail(_: int) -> None:
    user = LAB.new_mailbox(DOMAIN, "mb")
    if not LAB.send(VIP1, user, "filler")["ok"]:
        raise SystemExit(f"{user[0]}: the filler message was not accepted")


def messages_on(host: str, address: str) -> int:
    local, domain = address.split("@")
    box = f"{VMAIL_DIR}/{domain}/{local}"
    out = LAB.exec(host, "bash", "-c", f"find {box}/new {box}/cur -type f 2>/dev/null | wc -l",
                   check=False).stdout  # fmt: skip
    return int(out.strip() or 0)


def settle(host: str) -> None:
    """Wait until the newest message change on ``host`` is older than the catch-up's window."""
    newest = LAB.exec(
        host,
        "bash",
        "-c",
        f"find {VMAIL_DIR} -mindepth 3 -maxdepth 4 -type d "
        "\\( -name cur -o -name new \\) -printf '%T@\\n' | sort -n | tail -1",
    ).stdout
    wait = float(newest or 0) + RECENT_WINDOW_S + 30 - time.time()
    if wait > 0:
        print(f"settling {wait:.0f}s: until no message changed in the last "
              f"{RECENT_WINDOW_S}s", file=sys.stderr)  # fmt: skip
        time.sleep(wait)


def rejoined(host: str) -> bool:
    r = LAB.role(host, check=False)
    return r.get("role") == "standby" and r.get("db", {}).get("read_only") is True


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mailboxes", type=int, default=150)
    a = p.parse_args()
    (holder,) = LAB.holders(DC1)
    peer = DC1[1] if holder == DC1[0] else DC1[0]
    missing = a.mailboxes - mailbox_count(holder)
    if missing > 0:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(with_mail, range(missing)))
    drain_s = float(LAB.exec(holder, "bash", "-c", DRAIN).stdout)
    settle(holder)

    user = LAB.new_mailbox(DOMAIN, "mbx")
    if not LAB.send(VIP1, user, "replicated")["ok"]:
        raise SystemExit("the first message was not accepted")
    LAB.wait_for("the first message on the peer", lambda: messages_on(peer, user[0]) == 1,
                 timeout=180)  # fmt: skip
    LAB.exec(peer, "service", "dovecot", "stop")
    try:
        if not LAB.send(VIP1, user, "only-on-the-holder")["ok"]:
            raise SystemExit("the second message was not accepted")
        LAB.wait_for("the second message on the holder", lambda: messages_on(holder, user[0]) == 2,
                     timeout=30)  # fmt: skip
        LAB.crash_now(holder)
    finally:
        LAB.exec(peer, "service", "dovecot", "start")
    LAB.wait_for(f"{peer} to be the writable master",
                 lambda: LAB.role(peer)["db"]["read_only"] is False, timeout=60)  # fmt: skip
    t_boot = time.monotonic()
    LAB.run("boot", holder)
    LAB.wait_for(f"{holder} to rejoin", lambda: rejoined(holder), timeout=120, interval=0.2)
    t_rejoin = time.monotonic()
    LAB.wait_for("the second message on the peer", lambda: messages_on(peer, user[0]) == 2,
                 timeout=900, interval=0.2)  # fmt: skip
    t_there = time.monotonic()
    log = "journalctl -o cat -u mailcluster-replication | grep -h 'catch-up (boot)' | tail -1"
    catch_up = LAB.exec(holder, "bash", "-c", log, check=False).stdout.strip()
    print(json.dumps({
        "mailboxes": mailbox_count(peer),
        "full_round_s": round(drain_s, 1),
        "full_round_mailboxes_per_s": round(mailbox_count(peer) / drain_s, 1),
        "merge_back_after_rejoin_s": round(t_there - t_rejoin, 1),
        "merge_back_after_boot_s": round(t_there - t_boot, 1),
        "catch_up_log": catch_up,
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
