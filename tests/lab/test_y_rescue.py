"""Drill 9 (issue 23): a node lost for good, its acknowledged mail rescued from its volume.

The active node is made to hold acknowledged mail its peer does not have, both kinds a crash
can leave behind: deliveries its replication never pushed (its replication controller is
stopped) and messages its Postfix acknowledged and queued (its Dovecot is stopped: mail from the
internet on port 25 is accepted and waits in the queue; submission needs Dovecot's auth, so the
steady sender gets 454 meanwhile). Then it loses its power and never boots again during the
drill; the peer takes over, and `ops rescue` attaches the dead node's volume to the peer, merges
its maildirs, delivers its queue there, and detaches it. Every acknowledged message is then
readable on the shared IP exactly once, and a second rescue merges nothing. At the end the dead
node boots with its volume and rejoins as the standby: the lab as the drills found it.
"""

from __future__ import annotations

import collections
import re
import time
from collections.abc import Iterator

import pytest
from test_y_drills import DC1, DOMAIN, VIP1, ensure_holder, wait_rejoined

from cluster.lab.driver import Lab, private_ip

pytestmark = pytest.mark.drill

DEAD, PEER = DC1
MX_MESSAGES = 8  # from the internet while the dead node's Dovecot is stopped: its queue
# Floors, with margin over what the lab gives (5 messages a second; see the timings below):
# the steady sender's acknowledged messages in all, and those only the dead node had.
MIN_ACKED = 40
MIN_ONLY_ON_DEAD = 15
# The rescue itself (a handful of mailboxes and messages), measured 2-6 s: the limit states
# margin enough for a loaded CI machine.
RESCUE_LIMIT_S = 60


@pytest.fixture(autouse=True)
def _lab_as_found(lab: Lab) -> Iterator[None]:
    """Whatever happened: no volume left on the other host, both nodes of dc1 up."""
    yield
    for host, other in ((DEAD, PEER), (PEER, DEAD)):
        lab.exec(other, "mailcluster-rescue", "umount", host, check=False)
        lab.run("volume", "detach", host, check=False)
    status = lab.status()
    for host, h in status["dcs"]["dc1"]["hosts"].items():
        if not h["up"]:
            lab.run("boot", host)


def subject_counts(lab: Lab, host: str, user: str, prefix: str) -> collections.Counter[str]:
    """How often each subject starting with ``prefix`` is in ``user``'s INBOX on ``host``."""
    out = lab.exec(host, "doveadm", "-f", "tab", "fetch", "-u", user, "hdr.subject",
                   "mailbox", "INBOX", "header", "Subject", prefix).stdout  # fmt: skip
    return collections.Counter(line for line in out.splitlines()[1:] if line.startswith(prefix))


def send_mx(lab: Lab, user: str, subject: str) -> bool:
    """One message from the internet (port 25, no AUTH), as another mail server sends it."""
    got = lab.clientlib("send", "--host", VIP1, "--port", "25", "--sender",
                        "someone@example.net", "--to", user, "--subject", subject)  # fmt: skip
    return bool(got["ok"])


def test_drill_9_rescue_the_volume_of_a_node_lost_for_good(lab: Lab, unique: str) -> None:
    ensure_holder(lab, DEAD)
    # A volume attaches to one machine at a time: not while its own host runs.
    refused = lab.run("volume", "attach", DEAD, "--to", PEER, check=False)
    assert refused.returncode == 1 and "is up and uses its volume" in refused.stderr, refused
    user = lab.new_mailbox(DOMAIN, "r")
    stream = lab.stream(VIP1, user, f"{unique} s", seconds=300)
    time.sleep(3)
    lab.exec(DEAD, "systemctl", "stop", "mailcluster-replication")
    time.sleep(5)  # ~25 deliveries that stay on the dead node's volume
    lab.exec(DEAD, "systemctl", "stop", "dovecot")
    mx = [f"{unique} mx {i:02d}" for i in range(MX_MESSAGES)]
    mx_acked = {s for s in mx if send_mx(lab, user[0], s)}
    queued = lab.exec(DEAD, "postqueue", "-j").stdout.count('"queue_id"')
    t_crash = time.monotonic()
    lab.crash_now(DEAD)
    lab.wait_for(f"{PEER} to take over", lambda: lab.role(PEER)["role"] == "active",
                 timeout=60, interval=0.5)  # fmt: skip
    lab.wait_routed("dc1", PEER, timeout=60)
    time.sleep(4)  # the sender goes on through the peer
    result = stream.result(timeout=120)
    assert not result["permanent"], result["permanent"]
    acked = set(result["acked"]) | mx_acked
    print(f"rescue drill: {len(result['acked'])} acknowledged over 587, {len(mx_acked)} over 25; "
          f"{queued} in the dead node's queue at the crash; takeover "
          f"{time.monotonic() - t_crash:.1f} s")  # fmt: skip
    assert len(result["acked"]) >= MIN_ACKED, result
    assert len(mx_acked) == MX_MESSAGES and queued >= MX_MESSAGES, (mx_acked, queued)

    # ... and its host does not boot while another host has it.
    lab.run("volume", "attach", DEAD, "--to", PEER)
    refused = lab.run("boot", DEAD, check=False)
    assert refused.returncode == 1 and f"attached to {PEER}" in refused.stderr, refused
    lab.run("volume", "detach", DEAD)

    early = lab.subjects(VIP1, user, unique, len(acked), timeout=10)
    only_on_dead = acked - early
    print(f"rescue drill: {len(only_on_dead)} acknowledged messages only on {DEAD}'s volume")
    assert len(only_on_dead) >= MIN_ONLY_ON_DEAD, sorted(only_on_dead)
    assert mx_acked <= only_on_dead

    t0 = time.monotonic()
    out = lab.ops("rescue", DEAD, timeout=600).stdout
    took = time.monotonic() - t0
    print(out)
    print(f"rescue drill: `ops rescue {DEAD}` took {took:.1f} s")
    got = lab.subjects(VIP1, user, unique, len(acked), timeout=60)
    assert acked <= got, sorted(acked - got)
    counts = subject_counts(lab, PEER, user[0], unique)
    twice = {s: n for s, n in counts.items() if n > 1}
    assert not twice, twice
    assert took < RESCUE_LIMIT_S, took

    again = lab.ops("rescue", DEAD, timeout=600).stdout
    merged = re.search(r"\((\d+) -> (\d+) messages\), (\d+) queued messages delivered", again)
    assert merged, again
    assert merged.group(1) == merged.group(2) and merged.group(3) == "0", again
    assert subject_counts(lab, PEER, user[0], unique) == counts

    # Back as the drills found it: the dead node boots with its volume, empty queue and all, and
    # rejoins as the standby.
    lab.run("boot", DEAD)
    wait_rejoined(lab, DEAD, private_ip(PEER))
    assert lab.exec(DEAD, "postqueue", "-j").stdout.strip() == ""
