"""Replication recovery points in the lab: run for real, as root, with the lab up; not in CI.

    python bench/replication.py [--rate 5] [--seconds 60] [--mailboxes 1]

A steady sender per mailbox over submission to dc1's shared IP (``--rate`` messages a second,
each in its own session, as ``clientlib stream``; one sender reaches about 4-5 a second here)
for ``--seconds``. Once every acknowledged message is on
every node, the bench reads, on each node, when each message's file appeared there (the file's
ctime: set when Dovecot renames it out of ``tmp/``, on any node; nothing renames it again here,
since no IMAP client opens the mailbox) and compares it with the client's clock at the 250 (the
lab's hosts share this machine's clock).

Each mailbox is new: first one message is sent and waited for on every node (``first_sync_s``,
reported: the first sync creates the mailbox on every target), then the stream starts
(``--no-warm-up`` streams at once, and the first syncs are in the figures).

Reported per node: the seconds from the 250 to the message's file on that node, as median, p99
and max. On the holder that is Postfix's queue and the LMTP delivery; on the peer and on dc2's
nodes it is the time an acknowledged message lived on fewer nodes: the recovery point of a crash
of the holder (the peer) and of the loss of dc1 (dc2). For the other nodes also
``after_delivery``: from the file on the holder to the file there, replication's own part.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cluster.lab.driver import Lab, shared_ip  # noqa: E402
from cluster.services.storage import VMAIL_DIR  # noqa: E402
from mailnode.replication.controller import percentile  # noqa: E402

DOMAIN = "example.com"
VIP1 = shared_ip("dc1")
DC1 = ("dc1-svr1", "dc1-svr2")
DC2 = ("dc2-svr1", "dc2-svr2")
LAB = Lab()

# Prints {subject: ctime} for every message file of the mailbox given as argv[1].
ARRIVALS = """
import email.parser, json, os, sys
box = sys.argv[1]
out = {}
for sub in ("new", "cur"):
    d = os.path.join(box, sub)
    for name in os.listdir(d) if os.path.isdir(d) else []:
        path = os.path.join(d, name)
        with open(path, "rb") as f:
            head = email.parser.BytesHeaderParser().parse(f)
        out[str(head["Subject"])] = os.stat(path).st_ctime
print(json.dumps(out))
"""


def arrivals(host: str, address: str) -> dict[str, float]:
    local, domain = address.split("@")
    out = LAB.exec(host, "python3", "-c", ARRIVALS, f"{VMAIL_DIR}/{domain}/{local}").stdout
    got: dict[str, float] = json.loads(out)
    return got


def warmed_up(host: str, address: str) -> bool:
    return "warm-up" in arrivals(host, address)


def spread(delays: list[float]) -> dict[str, object]:
    return {
        "median_s": round(statistics.median(delays), 3),
        "p99_s": round(percentile(delays, 0.99) or 0.0, 3),
        "max_s": round(max(delays), 3),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rate", type=float, default=5, help="messages a second, per mailbox")
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--mailboxes", type=int, default=1, help="one sender per mailbox")
    p.add_argument("--no-warm-up", dest="warm_up", action="store_false",
                   help="stream into the new mailboxes at once")  # fmt: skip
    a = p.parse_args()
    (holder,) = LAB.holders(DC1)
    nodes = [holder, *(h for h in DC1 if h != holder), *DC2]
    users = [LAB.new_mailbox(DOMAIN, "rp") for _ in range(a.mailboxes)]
    first_sync_s = None
    if a.warm_up:
        t0 = time.monotonic()
        for user in users:
            if not LAB.send(VIP1, user, "warm-up")["ok"]:
                raise SystemExit("the warm-up message was refused")
        for host in nodes:
            for user in users:
                LAB.wait_for(f"the warm-up message on {host}",
                             partial(warmed_up, host, user[0]), timeout=900,
                             interval=0.5)  # fmt: skip
        first_sync_s = round(time.monotonic() - t0, 1)
    streams = [LAB.stream(VIP1, u, "rp", seconds=a.seconds, rate=a.rate) for u in users]
    time.sleep(a.seconds)  # result() stops the sender
    acked_at: dict[tuple[str, str], float] = {}
    for user, stream in zip(users, streams, strict=True):
        sent = stream.result(timeout=300)
        if not sent["acked_at"] or sent["failed"]:
            raise SystemExit(f"the sender failed: {sent['failed'][:3]}")
        acked_at.update({(user[0], s): t for s, t in sent["acked_at"].items()})
    found: dict[str, dict[tuple[str, str], float]] = {}

    def complete(host: str) -> bool:
        found[host] = {(u[0], s): t for u in users for s, t in arrivals(host, u[0]).items()
                       if s != "warm-up"}  # fmt: skip
        return acked_at.keys() <= found[host].keys()

    for host in nodes:
        LAB.wait_for(f"every acknowledged message on {host}", partial(complete, host),
                     timeout=900, interval=1)  # fmt: skip
    report: dict[str, object] = {
        "rate_per_s_per_mailbox": a.rate,
        "mailboxes": a.mailboxes,
        "messages": len(acked_at),
        "seconds": a.seconds,
        "first_sync_s": first_sync_s,
        "holder": holder,
    }
    for host in nodes:
        delays = [found[host][k] - t for k, t in acked_at.items()]
        figures = spread(delays)
        if host != holder:
            # Replication's own part: from the message's file on the holder (delivered) to
            # its file here.
            figures["after_delivery"] = spread(
                [found[host][k] - found[holder][k] for k in acked_at]
            )
        report[host] = figures
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
