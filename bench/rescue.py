"""Rescue benchmark in the lab: run for real, as root, with the lab up; not in CI.

    python bench/rescue.py [--mailboxes 50] [--messages 4] [--queued 50]

How long `ops rescue` takes for a volume with many mailboxes and a queue:

1. dc1's active node gets ``--mailboxes`` fresh mailboxes; with its replication controller
   stopped, each gets ``--messages`` messages over submission (so they are only on its volume);
   with its Dovecot stopped, ``--queued`` messages from the internet (port 25) wait in its queue.
2. It is crashed; its peer takes over; ``python -m cluster.ops --lab rescue`` runs.
3. Reported: the rescue's seconds (end to end, and the merge on the peer), what it merged and
   delivered, and whether every message is on the peer. Then the node boots with its volume and
   rejoins as the standby.
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cluster.lab.driver import Lab, private_ip, shared_ip  # noqa: E402
from cluster.services.storage import VMAIL_DIR  # noqa: E402

DOMAIN = "example.com"
VIP1 = shared_ip("dc1")
DC1 = ("dc1-svr1", "dc1-svr2")
LAB = Lab()


def bulk(sender: str, password: str, to: list[str], count: int, port: int) -> None:
    """``count`` messages spread over ``to``: over submission as ``sender``, or over port 25 as
    another mail server (then nothing is read back: Dovecot is stopped)."""
    auth = ["--starttls", "--ca", LAB.ca, "--user", sender, "--password", password,
            "--imap-password", password] if port == 587 else ["--timeout", "1"]  # fmt: skip
    targets = [arg for address in to for arg in ("--to", address)]
    got = LAB.clientlib("bulk", "--host", VIP1, "--port", str(port), *auth, "--sender",
                        sender if port == 587 else "someone@example.net", *targets,
                        "--subject", f"bench-{port}", "--count", str(count))  # fmt: skip
    if got.get("sent") != count or (port == 587 and not got["ok"]):
        raise SystemExit(f"bulk over {port}: {got}")


def total_messages(host: str, run: str) -> int:
    """Message files in this run's maildirs on ``host`` (find, not doveadm: a doveadm command
    would make an INBOX where the dead node's never arrived)."""
    box = f"{VMAIL_DIR}/{DOMAIN}/rb{run}x*"
    out = LAB.exec(host, "bash", "-c", f"find {box} -type f \\( -path '*/cur/*' -o -path "
                   "'*/new/*' \\) 2>/dev/null | wc -l", check=False).stdout  # fmt: skip
    return int(out.strip() or 0)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mailboxes", type=int, default=50)
    p.add_argument("--messages", type=int, default=4, help="per mailbox, only on the dead node")
    p.add_argument("--queued", type=int, default=50)
    a = p.parse_args()
    (dead,) = LAB.holders(DC1)
    peer = DC1[1] if dead == DC1[0] else DC1[0]
    run, password = secrets.token_hex(3), "P" + secrets.token_hex(12)
    users = [f"rb{run}x{i}@{DOMAIN}" for i in range(a.mailboxes)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda u: LAB.add_mailbox(u, password), users))
    LAB.exec(dead, "systemctl", "stop", "mailcluster-replication")
    bulk(users[0], password, users, a.mailboxes * a.messages, 587)
    LAB.exec(dead, "systemctl", "stop", "dovecot")
    bulk(users[0], password, users, a.queued, 25)
    queued = LAB.exec(dead, "postqueue", "-j").stdout.count('"queue_id"')
    LAB.crash_now(dead)
    LAB.wait_for(f"{peer} to take over", lambda: LAB.role(peer)["role"] == "active", timeout=60)
    before = total_messages(peer, run)
    t0 = time.monotonic()
    out = LAB.ops("rescue", dead, timeout=3600).stdout
    rescue_s = time.monotonic() - t0
    merged = re.search(r"merged in ([0-9.]+) s", out)
    expected = a.mailboxes * a.messages + a.queued
    LAB.wait_for("every message on the peer", lambda: total_messages(peer, run) >= expected,
                 timeout=300, interval=2)  # fmt: skip
    after = total_messages(peer, run)
    LAB.run("boot", dead)
    LAB.wait_for(f"{dead} to rejoin", lambda: LAB.role(dead, check=False).get("replication", {})
                 .get("master_host") == private_ip(peer), timeout=180, interval=1)  # fmt: skip
    print(json.dumps({
        "mailboxes": a.mailboxes,
        "messages_only_on_the_dead_node": expected,
        "in_its_queue_at_the_crash": queued,
        "on_the_peer_before_after": [before, after],
        "rescue_s": round(rescue_s, 1),
        "maildir_merge_s": float(merged.group(1)) if merged else None,
        "report": out.strip().splitlines()[-2],
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
