"""HA drills (issue 5): what the README ("How it fails over") promises, done to the lab.

Run after the mail tests and before the machinery failures (alphabetical order). Each drill
leaves the lab as it found it: activeDc=dc1 on both stacks, nothing cut, every host up.
"""

from __future__ import annotations

import collections
import json
import secrets
import sys
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from cluster.lab.driver import (
    Background,
    Lab,
    mesh_ip,
    private_ip,
    public_ip,
    shared_ip,
    shared_ip6,
)
from cluster.services import bayes, dovecot

pytestmark = pytest.mark.drill

DOMAIN = "example.com"
HOSTED = "shop.example"  # a further mail domain (test_domains makes it; drill 3 checks it)
VIP1 = shared_ip("dc1")
VIP2 = shared_ip("dc2")
VIP1_6 = shared_ip6("dc1")
FAMILIES = {"ipv4": VIP1, "ipv6": VIP1_6}
DC1 = ("dc1-svr1", "dc1-svr2")
DC2 = ("dc2-svr1", "dc2-svr2")


@pytest.fixture(autouse=True)
def _lab_as_found(lab: Lab) -> Iterator[None]:
    """Each drill leaves the lab as it found it; one that fails half way must not fail the
    drills after it: every host booted, nothing cut, activeDc=dc1 on both stacks."""
    yield
    status = lab.status()
    for dc, info in status["dcs"].items():
        if info["cut"]:
            lab.run("heal", dc)
        for host, h in info["hosts"].items():
            if h["cut"]:
                lab.run("heal", host)
            if not h["up"]:
                lab.run("boot", host)
    for dc in ("dc2", "dc1"):  # the standby side first, as failover does
        if status["dcs"][dc]["config_active_dc"] != "dc1":
            lab.run("apply", "--stack", dc, "--set", "activeDc=dc1")


def new_user(lab: Lab) -> tuple[str, str]:
    return lab.new_mailbox(DOMAIN, "d")


def wait_rejoined(
    lab: Lab, host: str, master: str, timeout: float = 90, standby_dc: bool = False
) -> dict[str, Any]:
    """``host`` is a standby replica of ``master``: read-only, replicating, no shared IP (in the
    standby data centre one node holds that DC's own shared IP, serving nothing)."""

    def ok() -> dict[str, Any] | None:
        try:
            r = lab.role(host)
        except AssertionError:
            return None
        rep = r["replication"]
        good = (
            r["heartbeat_running"] and (standby_dc or not r["vip_held"])
            and r["db"]["read_only"] is True
            and rep["master_host"] == master and rep["io_running"] == "Yes"
            and rep["sql_running"] == "Yes"
        )  # fmt: skip
        return r if good else None

    result: dict[str, Any] = lab.wait_for(f"{host} to rejoin as a replica of {master}", ok,
                                          timeout=timeout, interval=1)  # fmt: skip
    return result


def ensure_holder(lab: Lab, host: str) -> None:
    """Move dc1's shared IP to ``host`` gracefully (hb_standby on the other), if needed, and
    wait until its promote is done: "active" shows from the announcement on, seconds before
    the database is writable (a mailbox added in between failed: read-only)."""
    other = DC1[1] if host == DC1[0] else DC1[0]
    switch = not lab.role(host)["vip_held"]
    if switch:
        lab.exec(other, "/usr/share/heartbeat/hb_standby", "all", check=False)
    lab.wait_for(f"{host} to hold the shared IP as the writable master", lambda: (
        lambda r: r["role"] == "active" and r["db"]["read_only"] is False)(lab.role(host)),
        timeout=60, interval=0.5)  # fmt: skip
    if switch:
        wait_rejoined(lab, other, private_ip(host))
        lab.wait_routed("dc1", host)


def takeover_probes(lab: Lab, user: tuple[str, str]) -> dict[str, Background]:
    """From now on, per address family: the first SMTP 220 and the first IMAPS login on dc1's
    shared address (clientlib probe, an attempt every 20 ms)."""
    args = ("--ca", lab.ca, "--user", user[0], "--password", user[1], "--timeout", "60")
    return {
        family: lab.start_clientlib("probe", "--host", addr, *args)
        for family, addr in FAMILIES.items()
    }


def takeover_figures(
    probes: dict[str, Background], t_crash: float, limit: float, method: str
) -> dict[str, dict[str, float | None]]:
    """Crash -> SMTP 220 and crash -> IMAPS login, seconds, per family; each within ``limit``."""
    out: dict[str, dict[str, float | None]] = {}
    got_all: dict[str, dict[str, Any]] = {}
    for family, probe in probes.items():
        got = got_all[family] = probe.result(timeout=90)
        out[family] = {k: (None if got[f"{k}_at"] is None else round(got[f"{k}_at"] - t_crash, 2))
                       for k in ("smtp", "imap")}  # fmt: skip
    print(f"takeover ({method}): " + "; ".join(
        f"{fam}: crash -> SMTP 220 {f['smtp']} s, crash -> IMAPS login {f['imap']} s"
        for fam, f in out.items()))  # fmt: skip
    late = [(family, what) for family, f in out.items() for what, secs in f.items()
            if secs is None or secs > limit]  # fmt: skip
    for family in dict.fromkeys(family for family, _ in late):
        print(f"IMAPS attempts over {family}:\n" + imap_timeline(got_all[family], t_crash))
    assert not late, (method, limit, late, out)
    return out


# Drill 4's limit from the MariaDB stop to the peer active: see the drill.
DB_STOP_HANDOVER_LIMIT_S = 15
# Drill 4: the only failures without an SMTP code it accepts are a connection that the route's
# move cut off or could not reach: the old master stops Postfix at its demote and withdraws,
# the peer announces (7 December 2026 the lab saw "No route to host" 4.7 s after the stop,
# the peer routed at 5.1 s; earlier also "Connection reset by peer"). Only for sessions begun
# from the stop until the route servers route to the peer, plus this much for a SYN or a
# session already on its way; a TLS or login failure, or any such error outside the window,
# fails the drill (seen to fail with the window closed: the 4.7 s "No route to host").
ROUTE_MOVE_ERRORS = (
    "ConnectionRefusedError", "ConnectionResetError", "No route to host",
    "SMTPServerDisconnected",
)  # fmt: skip
ROUTE_MOVE_GRACE_S = 1.0
# Drill 7's (arp) limit from the crash to SMTP 220 and an IMAPS login: Heartbeat's deadtime,
# then IPaddr2 with its gratuitous ARP and the promote (MariaDB writable for the login's
# lookups). The lab measures 1.9-3.1 s with the 1 s deadtime; 4 s more than the deadtime is
# the README's figure and leaves 2 s on a busy 2-core machine, while a takeover that waited
# for a second deadtime or a failed first promote (10 s bound) would not fit.
ARP_LIMIT_AFTER_DEADTIME_S = 4
# Drill 3's limit from the failover command to mail accepted in dc2: the README's target
# (< 2 min + TTL; the TTL is the clients' part). The lab measures 6-8 s.
DC_FAILOVER_LIMIT_S = 120

# Drill 2: from the cut of the active node's link to the peer serving on the shared IP (the cut
# node fenced, the peer active, the route servers routing to it). The route servers drop the cut
# node's route when its BGP hold time (9 s) runs out; the lab measures 6.4-13.3 s (README's
# figures table, 2 cores). hold + 8 s (17 s) is 3.7 s over the worst seen, and a takeover that
# waited for a second hold time (18 s or more) fails it.
CUT_SETTLE_OVER_HOLD_S = 8
# Drill 2, after the heal: the cut node back as the standby replica (Heartbeat running, not
# fenced, replicating from the peer). The guard wants 3 s of answers from the gateway, then
# starts Heartbeat, which finds its peer at once (no initdead wait), and the role's standby
# start points MariaDB at the peer. The lab measures 7.8 s, polled every 0.5-1 s (7 December
# 2026, 2 cores); 15 s is 7 s over that, and a Heartbeat that waited out initdead (10 s) or a
# guard that needed a second round of its uplink check fails it.
REJOIN_AFTER_HEAL_LIMIT_S = 15

# Drill 6: the slowest SMTP banner on a shared address during a planned switchover. A SYN sent
# as the route moves is lost and TCP sends it again after 1 s (Linux's initial RTO), so a client
# may wait a second: the lab measures 1.01-1.02 s (7 December 2026, 2 cores). 1.5 s leaves 0.5 s
# for a busy machine; a second lost SYN (3 s) or a Postfix that answers late fails it, where the
# watch's own 2 s attempt timeout would count a 1.9 s stall as served.
SWITCHOVER_SLOWEST_BANNER_S = 1.5

# Drill 3: how long the stream runs before dc1 is cut, and the bound across data centres: a
# message acknowledged in dc1 longer than this before the cut is readable in dc2 after the
# failover. The target is p99 <= 2 s; bench/replication.py measures p99 1.3-1.6 s, max 2.4 s
# from the 250 to dc2 (7 December 2026, 2 cores, two mailboxes at 10 messages/s in all, dsync
# over the mesh without TLS). 4 s is the worst seen plus 1.6 s for a busy CI machine; a
# controller that fell back to the peer-first order (7.6 s measured) or lost its events (the
# sweep: minutes) fails it.
DC_LOSS_STREAM_S = 12
CROSS_DC_BOUND_S = 4.0

# How long a drill waits for replication to catch up: the controller's bound on a full sync
# (600 s, a retry's) and a minute more. Without a fault the wait is a second or two; a sync that
# runs into its bound is a fault worth the wait to see (it was Dovecot 2.4.1's TLS hang, gone
# since dsync runs without TLS inside the mesh: README "Known limits").
REPLICATION_WAIT_S = 660

# Drill 1: a message acknowledged longer than this before the crash is readable on the peer
# before the crashed node returns. The design's in-DC recovery point is 1 s; bench/replication.py
# measures p99 1.1 s, max 1.6 s to the peer under twice drill 1's rate (7 December 2026, 2
# cores), and the controller's turns may let the peer wait for one far sync
# (controller.PEER_FIRST_MAX_S): 3 s is 1.4 s over the worst seen. Replication to the peer
# stopped fails it (25 messages waiting, the oldest 4.9 s, when tried).
IN_DC_BOUND_S = 3.0

# Fewer acknowledged messages than this before a crash, and a drill measures nothing: it fails
# as broken rather than passing as lossless. The drills wait for WARM_ACKS 250s before the
# fault (the sender's 4-5 a second: 2-3 s), not for a fixed time: a slow start under load
# (7 December 2026: 7 in the first 3 s) then costs time, not the drill.
MIN_ACKED_BEFORE = 8
WARM_ACKS = MIN_ACKED_BEFORE + 2
# After a crash the sender's session to the dead node waits out its 10 s timeout (no RST
# comes from a dead node) before the next one reaches the survivor: its first 250 after the
# crash is expected within that plus the takeover, and is waited for, not slept for.
AFTER_CRASH_ACK_WAIT_S = 30


def sender_around_the_crash(result: dict[str, Any], t_crash: float) -> None:
    """The steady sender got 250s before the crash (at least MIN_ACKED_BEFORE) and after it
    (service resumed for it)."""
    acked_at: dict[str, float] = result["acked_at"]
    before = [t for t in acked_at.values() if t < t_crash]
    assert len(before) >= MIN_ACKED_BEFORE, ("too few 250s before the crash", result)
    assert any(t > t_crash for t in acked_at.values()), ("no 250 after the crash", result)


# A second copy of a message is at-least-once delivery, not loss: Postfix delivers again a message
# whose LMTP delivery a crash or a stop cut off after Dovecot had saved it (its queue file not yet
# removed). That message was acknowledged just before the fault: its delivery follows the 250
# within 0.8 s at p99 (bench/replication.py, the holder's own delivery). A copy of a message
# acknowledged more than this before a fault, after one, or with no fault at all is mail that
# replication or a merge duplicated. 10 s leaves room for a delivery slowed by a busy machine.
COPY_WINDOW_S = 10


def copies_only_around_faults(
    got: collections.Counter[str], acked_at: dict[str, float], faults: Iterable[float]
) -> None:
    """Every message read more than once was acknowledged at most COPY_WINDOW_S before one of
    ``faults`` (wall-clock times); the copies are printed either way."""
    faults = list(faults)
    twice = {s: n for s, n in got.items() if n > 1}
    if twice:
        print(f"copies: {twice}")
    unexplained = {
        s: n for s, n in twice.items()
        if not any(0 <= f - acked_at.get(s, float("inf")) <= COPY_WINDOW_S for f in faults)
    }  # fmt: skip
    assert not unexplained, ("delivered more than once, not around a fault", unexplained, faults)


def imap_timeline(got: dict[str, Any], t_crash: float) -> str:
    """The probe's IMAPS attempts, seconds after the crash: start +duration outcome, one a line."""
    return "\n".join(f"{start - t_crash:6.2f} +{end - start:5.2f} {outcome}"
                     for start, end, outcome in got.get("imap_attempts", []))  # fmt: skip


def smtp_banner_from(lab: Lab, host: str) -> str:
    """The first line of the EHLO answer from ``host``: proof that *a* Postfix answered there.
    It cannot say which node (every node's myhostname is mail.<domain>); where that matters the
    drills check the holder with ``role()`` and the route with ``wait_routed``."""
    code = (
        "import smtplib,sys; s=smtplib.SMTP(sys.argv[1],25,timeout=5); "
        "print(s.ehlo()[1].decode().splitlines()[0]); s.quit()"
    )
    return lab.client(sys.executable, "-c", code, host).stdout.strip()


def first_synced(lab: Lab, user: tuple[str, str], *hosts: str) -> None:
    """One message to a new mailbox, readable on ``hosts`` (by doveadm there) before a drill
    measures: a new mailbox's first sync creates it on every target, which is not the steady
    state a drill is about. Its subject shares nothing with the drill's own (they are matched
    as substrings)."""
    subject = f"warm-up {secrets.token_hex(6)}"
    assert lab.send(VIP1, user, subject)["ok"]
    for host in hosts:
        lab.wait_for(f"the first message on {host}",
                     lambda h=host: subject in lab.inbox_subjects(h, user[0]),
                     timeout=REPLICATION_WAIT_S, interval=1)  # fmt: skip


def test_drill_standby_never_accepts_mail(lab: Lab) -> None:
    """Ports 25/587 on every node's own address and on the standby DC's shared IP: no listener
    (the connection refused: Postfix listens on the shared IP and loopback only, the standby
    DC runs none) or a 4xx, never a 250 for a RCPT. The same send to dc1's shared IP gets its
    250, so the client reaches the cluster and the message is one Postfix would take."""

    def send(target: str, port: str) -> dict[str, Any]:
        return lab.clientlib("send", "--host", target, "--port", port, "--sender",
                             "someone@example.net", "--to", user[0],
                             "--subject", "standby-probe")  # fmt: skip

    user = new_user(lab)
    assert send(VIP1, "25")["ok"], "the active data centre's shared IP must take this message"
    targets = [public_ip(h) for h in (*DC1, *DC2)] + [VIP2]
    for target in targets:
        for port in ("25", "587"):
            got = send(target, port)
            assert not got["ok"], (target, port, got)
            code = got.get("smtp_code")
            if code is None:  # not a timeout nor any error: the address answered, nothing listens
                assert got["error"].startswith("ConnectionRefusedError"), (target, port, got)
            else:
                assert 400 <= int(code) < 500, (target, port, got)


def test_drill_replication_lag_is_measured(lab: Lab) -> None:
    """A row written on the master is on every replica within 5 s, as the lab CLI sees it
    (each check costs ~0.3 s of the CLI itself; the lag proper, p99 well under 1 s, is
    bench/failover.py's figure): replication runs to all three replicas."""
    master = next(h for h in DC1 if lab.role(h)["role"] == "active")
    lab.sql(master, "CREATE DATABASE IF NOT EXISTS mcdrill; CREATE TABLE IF NOT EXISTS "
        "mcdrill.lag (id BIGINT PRIMARY KEY, at DOUBLE)")  # fmt: skip
    lags = []
    for _ in range(5):
        row = time.time_ns()
        lab.sql(master, f"INSERT INTO mcdrill.lag VALUES ({row}, {time.time()})")
        t0 = time.monotonic()
        for replica in (h for h in (*DC1, *DC2) if h != master):
            query = f"SELECT COUNT(*) FROM mcdrill.lag WHERE id={row}"
            lab.wait_for(f"row on {replica}",
                         lambda r=replica, q=query: lab.sql(r, q) == "1",
                         timeout=10, interval=0.05)  # fmt: skip
        lags.append(time.monotonic() - t0)
    print(f"replication: row visible on all three replicas within {max(lags):.2f}s (max of 5, "
          "including ~0.3 s per check of the lab CLI)")  # fmt: skip
    assert max(lags) < 5


def teach_spam(lab: Lab, tag: str, count: int = 3) -> tuple[tuple[str, str], dict[str, int]]:
    """A user moves ``count`` of its messages into Junk on the active node (rspamd learns them
    as spam, inside the IMAP command); every node's Valkey has the new counts before this
    returns. The user and the counts."""
    user = new_user(lab)
    for i in range(count):
        assert lab.send(VIP1, user, f"{tag} {i}")["ok"]
    lab.subjects(VIP1, user, tag, count)
    moved = lab.clientlib("move", "--host", VIP1, "--ca", lab.ca, "--user", user[0],
                          "--password", user[1], "--subject", tag, "--to", "Junk")  # fmt: skip
    assert moved == {"ok": True, "moved": count}, moved
    counts = lab.bayes(lab.holders(("dc1-svr1", "dc1-svr2"))[0])["learned"]
    for host in ("dc1-svr1", "dc1-svr2", "dc2-svr1", "dc2-svr2"):
        lab.wait_for(f"{host}'s Valkey to have what rspamd learned",
                     lambda h=host: lab.bayes(h)["learned"] == counts,
                     timeout=10, interval=0.2)  # fmt: skip
    return user, counts


def one_more_ack(stream: Any) -> float:
    """Wait for a 250 later than now (the sender is served again after a switch or a rebuild);
    returns now, as wall-clock time, to compare with the stream's ``acked_at``."""
    now, acked = time.time(), stream.progress()
    stream.wait_progress(acked + 1, timeout=AFTER_CRASH_ACK_WAIT_S)
    return now


def readable_before_the_return(
    lab: Lab, user: tuple[str, str], unique: str, result: dict[str, Any], t_crash: float
) -> None:
    """Readable on the shared IP now, before the crashed node returns: every message
    acknowledged more than IN_DC_BOUND_S before the crash (the rest may be in the crashed
    node's queue, or not yet synced by its controller). At least MIN_ACKED_BEFORE // 2 such
    messages, or the check proves nothing."""
    acked = set(result["acked"])
    early = lab.subjects(VIP1, user, unique, len(acked), timeout=15)
    old = {m for m, t in result["acked_at"].items() if t < t_crash - IN_DC_BOUND_S}
    waiting = {m: round(t_crash - result["acked_at"][m], 2) for m in acked - early}
    ages = sorted(waiting.values(), reverse=True)
    print(f"crash: {len(acked)} acked, {len(waiting)} waiting for the crashed node's return, "
          f"acknowledged that long before the crash: {ages} s")  # fmt: skip
    assert len(old) >= MIN_ACKED_BEFORE // 2, ("too little mail older than the bound", result)
    late = {m: waiting[m] for m in old - early}
    assert not late, (
        f"acknowledged over {IN_DC_BOUND_S:.0f} s before the crash, not on the peer: {late}"
    )


def test_drill_1_crash_the_active_node(lab: Lab, unique: str) -> None:
    """bgp (the lab's default, as on Linode): the survivor announces at once, but the route
    servers keep the crashed node's route until its hold time runs out, so SMTP and IMAPS answer
    on both shared addresses within the hold time + 1 s. That limit is the README's target
    itself: the lab measures 4.7-7.0 s (7 December 2026, 2 cores) against 10 s, 3-5 s of margin;
    a survivor that waited for its own promote before announcing (about 3 s more) would still
    pass, one that waited for a second hold time would not."""
    assert lab.shared_ip_method("dc1") == "bgp"
    hold = lab.stack_config("dc1").bgp_hold_time_s
    ensure_holder(lab, "dc1-svr1")
    # Spam learning (issue 25): what users taught rspamd on svr1 is on every node before the
    # crash, and the survivor classifies with it.
    learner, taught = teach_spam(lab, f"{unique}-junk")
    assert taught["spam"] >= 3
    user = new_user(lab)
    first_synced(lab, user, "dc1-svr2")
    stream = lab.stream(VIP1, user, unique)
    # Long enough that some mail is older than the in-DC bound at the crash (checked below).
    stream.wait_progress(WARM_ACKS + int(IN_DC_BOUND_S * 5))
    t_crash, acked_before = time.time(), stream.progress()
    lab.crash_now("dc1-svr1")
    probes = takeover_probes(lab, user)
    lab.wait_for("dc1-svr2 to take over", lambda: lab.role("dc1-svr2")["role"] == "active",
                 timeout=30, interval=0.2)  # fmt: skip
    print(f"crash: dc1-svr2 active after {time.time() - t_crash:.1f}s (CLI polling)")
    lab.wait_routed("dc1", "dc1-svr2", timeout=hold + 10)
    print(f"crash: the route servers route to dc1-svr2 {time.time() - t_crash:.1f}s after it")
    takeover_figures(probes, t_crash, hold + 1, "bgp")
    stream.wait_progress(acked_before + 1, timeout=AFTER_CRASH_ACK_WAIT_S)
    result = stream.result(timeout=120)
    assert not result["permanent"], result["permanent"]
    acked = set(result["acked"])
    # The shared IP answers SMTP from dc1-svr2 (svr1 is dark; svr2 holds it and runs Postfix).
    r2 = lab.role("dc1-svr2")
    assert r2["vip_held"] and r2["postfix_running"]
    assert smtp_banner_from(lab, VIP1)
    sender_around_the_crash(result, t_crash)
    readable_before_the_return(lab, user, unique, result, t_crash)
    # The master moved: svr2 is writable, and a write through Postfix Admin works and is usable.
    assert r2["db"]["read_only"] is False and not r2["replication"]["configured"]
    fresh = new_user(lab)
    ok = lab.clientlib("login", "--host", VIP1, "--ca", lab.ca, "--user", fresh[0],
                       "--password", fresh[1], "--timeout", "10")  # fmt: skip
    assert ok["ok"], ok
    # The survivor has what was learned on svr1, as the master of it now, and its rspamd knows
    # those very messages: learning one again is "already learned".
    assert lab.bayes("dc1-svr2")["learned"] == taught
    fetch = f"doveadm fetch -u {learner[0]} text mailbox Junk subject '{unique}-junk 0'"
    again = lab.exec("dc1-svr2", "sh", "-c", f"{fetch} | sed 1d | {dovecot.LEARN_COMMAND} spam")
    assert again.stdout.strip() == "already learned", again
    lab.wait_for("svr2's Valkey to become the master",
        lambda: lab.bayes("dc1-svr2")["role"] == "master",
        timeout=bayes.FOLLOW_EVERY_S + 10)  # fmt: skip
    # svr1 boots and rejoins: replica of svr2, standby, no shared IP, not reachable for mail.
    lab.run("boot", "dc1-svr1")
    r1 = wait_rejoined(lab, "dc1-svr1", private_ip("dc1-svr2"))
    assert r1["role"] == "standby"
    # Every message that got a 250 is readable (svr1's queue delivered once it is back), once.
    mail = lab.mail(VIP1, user, unique, acked)
    assert acked <= set(mail), sorted(acked - set(mail))
    copies_only_around_faults(mail, result["acked_at"], [t_crash])
    lab.wait_for("the new mailbox on svr1", lambda: lab.sql(
        "dc1-svr1", f"SELECT COUNT(*) FROM postfixadmin.mailbox WHERE username='{fresh[0]}'"
    ) == "1", timeout=20)  # fmt: skip
    assert lab.role("dc1-svr2")["vip_held"]
    # Postfix on the active DC's standby only delivers its own queue (see FAILOVER.md): it
    # listens on the shared IP it does not hold and on 127.0.0.1, never on its own address.
    refused = lab.clientlib("send", "--host", public_ip("dc1-svr1"), "--port", "25", "--sender",
                            "a@example.net", "--to", user[0], "--subject", "x")  # fmt: skip
    assert refused["error"].startswith("ConnectionRefusedError"), refused

    # Its queue drains: what it held at the crash (acknowledged or not: the client may have lost
    # the 250 with the crash) is delivered, not left for Postfix's next retry minutes later.
    def queue_empty() -> bool:
        listing = lab.exec("dc1-svr1", "postqueue", "-j", check=False).stdout
        return listing.strip() == ""

    try:
        lab.wait_for("svr1's queue to drain", queue_empty, timeout=30, interval=1)
    except AssertionError:
        raise AssertionError(
            "svr1's queue was not delivered after its return:\n"
            + lab.exec("dc1-svr1", "postqueue", "-p", check=False).stdout
        ) from None


def test_drill_2_cut_the_active_nodes_link(lab: Lab, unique: str) -> None:
    ensure_holder(lab, "dc1-svr1")
    lab.run("cut", "dc1-svr1")
    try:
        t0 = time.monotonic()
        # The guard fences svr1 (it lost its peer and its uplink): no shared IP, no Postfix.
        lab.wait_for("svr1 fenced", lambda: (lambda r: r["fenced"] and not r["vip_held"]
                     and not r["postfix_running"] and not r["heartbeat_running"])(
                         lab.role("dc1-svr1")), timeout=30, interval=0.5)  # fmt: skip
        lab.wait_for("svr2 active", lambda: lab.role("dc1-svr2")["role"] == "active",
                     timeout=30, interval=0.5)  # fmt: skip
        # With bgp the route servers drop the cut node's route when its hold time runs out.
        lab.wait_routed("dc1", "dc1-svr2")
        settled = time.monotonic() - t0
        print(f"cut: settled after {settled:.1f}s")
        hold = lab.stack_config("dc1").bgp_hold_time_s
        assert settled < hold + CUT_SETTLE_OVER_HOLD_S, settled
        # Exactly one node holds the shared IP, seen inside the hosts ...
        assert lab.holders(DC1) == ["dc1-svr2"]
        # ... and from the client: SMTP on the VIP answers, every time, and mail goes through.
        for _ in range(5):
            assert smtp_banner_from(lab, VIP1)
        user = new_user(lab)
        assert lab.send(VIP1, user, unique)["ok"]
        assert lab.subjects(VIP1, user, unique, 1) == {unique}
        # From here until svr1 has rejoined, every 50 ms inside both nodes: never two holders.
        watch = lab.watch_holders(DC1)
    finally:
        lab.run("heal", "dc1-svr1")
        t_heal = time.monotonic()
    # After the heal: svr1 rejoins as the standby; never two holders meanwhile.
    deadline = time.monotonic() + 40
    seen = []
    while time.monotonic() < deadline:
        h = lab.holders(DC1)
        seen.append(h)
        assert len(h) <= 1, seen
        r1 = lab.role("dc1-svr1")
        if r1["heartbeat_running"] and not r1["fenced"] and h == ["dc1-svr2"]:
            break
        time.sleep(0.5)
    assert lab.holders(DC1) == ["dc1-svr2"], seen
    wait_rejoined(lab, "dc1-svr1", private_ip("dc1-svr2"), timeout=30)
    rejoined = time.monotonic() - t_heal
    print(f"cut: svr1 rejoined {rejoined:.1f}s after the heal")
    assert rejoined < REJOIN_AFTER_HEAL_LIMIT_S, rejoined
    two = watch.result()
    assert not two, ("two nodes announced the shared IP at once (unix times)", two)


def test_drill_4_database_stop_on_the_master(lab: Lab, unique: str) -> None:
    """MariaDB stopped on the master is a failure of the active node: senders get 4xx (never
    5xx, nothing lost), the guard hands the role to the peer within seconds, and the stopped
    server comes back as a replica. The sender's logins meanwhile come from Dovecot's auth cache:
    Postfix would turn a failed lookup into a permanent 535 (dovecot.py, AUTH_CACHE_TTL_S)."""
    master = next(h for h in DC1 if lab.role(h)["role"] == "active")
    peer = DC1[1] if master == DC1[0] else DC1[0]
    user = new_user(lab)
    stream = lab.stream(VIP1, user, unique, rate=4)
    stream.wait_progress(WARM_ACKS)
    lab.exec(master, "systemctl", "stop", "mariadb")
    t0, t0_wall = time.monotonic(), time.time()
    # A submission while the master's database is down: a 4xx, a stalled session (Dovecot
    # auth queues the lookup) or, once the peer serves, a 250 (then it must be readable
    # below) — never a 5xx. Sent beside the wait for the takeover.
    with ThreadPoolExecutor(1) as pool:
        early_f = pool.submit(lab.send, VIP1, user, unique + "-early")
        lab.wait_for(f"{peer} to take over", lambda: lab.role(peer)["role"] == "active",
                     timeout=30, interval=0.3)  # fmt: skip
        took = time.monotonic() - t0
        lab.wait_routed("dc1", peer)
        routed_wall = time.time()
        early = early_f.result()
    print(
        f"db stop: {peer} active {took:.1f}s, routed to {routed_wall - t0_wall:.1f}s after "
        f"the stop; early send: {early}"
    )
    # README: ~5 s (the guard's 3 s grace, then hb_standby). The lab measures 7.7 s on a busy
    # 2-core machine (with the CLI's 0.3 s polling); 15 s is twice that, and a guard that
    # missed the stop would leave the role for good (the wait above fails at 30 s).
    assert took < DB_STOP_HANDOVER_LIMIT_S, took
    one_more_ack(stream)
    result = stream.result(timeout=120)
    assert not result["permanent"], result["permanent"]
    temp = [f for f in result["failed"] if f["code"] is not None]
    assert all(400 <= int(f["code"]) < 500 for f in temp), temp
    codeless = [f for f in result["failed"] if f["code"] is None]
    print(f"db stop: failures without an SMTP code: {codeless}")
    window = (t0_wall, routed_wall + ROUTE_MOVE_GRACE_S)
    not_the_route = [f for f in codeless if not (
        any(e in f["error"] for e in ROUTE_MOVE_ERRORS) and window[0] <= f["at_wall"] <= window[1]
    )]  # fmt: skip
    assert not not_the_route, ("failures that are not the route's move", window, not_the_route)
    # The early send began at the stop, inside the window: a 250, a 4xx or the route's move.
    early_code = early.get("smtp_code")
    assert (
        early["ok"]
        or (early_code is not None and 400 <= early_code < 500)
        or (early_code is None and any(e in early.get("error", "") for e in ROUTE_MOVE_ERRORS))
    ), early
    # A floor, so that "nothing lost" cannot pass on nothing sent; and the sender got 250s
    # again after the takeover (the stream ran on until one came).
    assert len(result["acked"]) >= MIN_ACKED_BEFORE, result
    assert max(result["acked_at"].values()) > t0_wall + took, result
    acked = set(result["acked"]) | ({unique + "-early"} if early["ok"] else set())
    mail = lab.mail(VIP1, user, unique, acked)
    assert acked <= set(mail), sorted(acked - set(mail))
    # The faults: the stop, and the old master's Postfix stopped at its demote.
    copies_only_around_faults(mail, result["acked_at"], [t0_wall, t0_wall + took])
    rp = lab.role(peer)
    assert rp["db"]["read_only"] is False
    wait_rejoined(lab, master, private_ip(peer))


def hosted_dns(lab: Lab, server: str, selector: str) -> tuple[str, str]:
    """The further domain's MX and DKIM key as ``server`` answers them."""
    out = lab.client("sh", "-c", f"dig +short @{server} {HOSTED} MX; echo ====; "
                     f"dig +short @{server} {selector}._domainkey.{HOSTED} TXT").stdout  # fmt: skip
    mx, key = (part.strip() for part in out.split("====\n"))
    return mx, key


def hosted_domain(lab: Lab) -> tuple[str, str, str]:
    """The further domain of test_domains (made here when this drill runs alone), the selector
    of its DKIM key and its DNSKEY record (DNSSEC: the trust anchor the drill validates with)."""
    if HOSTED not in lab.ops("domain", "list").stdout.split():
        lab.ops("domain", "add", HOSTED)
    query = (f"SELECT selector FROM mailcluster.dkim_keys WHERE domain='{HOSTED}' "
             "ORDER BY active_at LIMIT 1")  # fmt: skip
    selector = lab.sql("dc1-svr1", query)
    assert selector.startswith("s"), selector
    return HOSTED, selector, zone_dnskey(lab, HOSTED)


def zone_dnskey(lab: Lab, zone: str) -> str:
    """A zone's DNSKEY record (DNSSEC: the trust anchor the drill validates with)."""
    public = lab.sql("dc1-svr1", "SELECT HEX(public_key) FROM mailcluster.dnssec_keys "
                                 f"WHERE zone='{zone}'")  # fmt: skip
    return next(ln for ln in bytes.fromhex(public).decode().splitlines() if " DNSKEY " in ln)


def test_drill_3_data_centre_loss_failover_rejoin_failback(lab: Lab, unique: str) -> None:
    user = new_user(lab)
    _, selector, dnskey = hosted_domain(lab)
    own_key = zone_dnskey(lab, DOMAIN)
    hosted = hosted_dns(lab, VIP1, selector)
    lab.validated(VIP1, dnskey, HOSTED, "MX")
    assert hosted[0] == f"10 mail.{DOMAIN}." and "v=DKIM1" in hosted[1], hosted
    first_synced(lab, user, *DC2)
    acked: set[str] = set()
    for i in range(3):
        s = f"{unique} dc1-before {i}"
        assert lab.send(VIP1, user, s)["ok"]
        acked.add(s)
    assert lab.subjects(VIP1, user, unique, len(acked)) == acked
    # The mailbox must be in dc2's database before dc1 goes (replication, measured: ms).
    lab.wait_for("the mailbox in dc2", lambda: lab.sql(
        "dc2-svr1", f"SELECT COUNT(*) FROM postfixadmin.mailbox WHERE username='{user[0]}'"
    ) == "1", timeout=20)  # fmt: skip
    # The whole-DC loss under a steady send: the stream stops and dc1 is cut at once, with the
    # last seconds' mail still on its way to dc2.
    stream = lab.stream(VIP1, user, f"{unique} stream", rate=5)
    time.sleep(DC_LOSS_STREAM_S)
    streamed = stream.result(timeout=60)
    t_cut = time.time()
    lab.run("cut", "dc1")
    assert not streamed["permanent"], streamed["permanent"]
    acked_at: dict[str, float] = streamed["acked_at"]
    assert len(acked_at) >= DC_LOSS_STREAM_S * 5 // 2, ("the stream got too few 250s", streamed)
    acked |= set(acked_at)
    try:
        # The operator's one command: dc1 cannot be reached, so only dc2 is promoted and the
        # rejoin is left for a second run.
        plan = lab.ops("failover", "--to", "dc2", "--dry-run").stdout
        assert "1. dc2 (stack dc2): set activeDc=dc2, apply: promote" in plan, plan
        assert "dc1 cannot be reached" in plan and "2." not in plan, plan
        t0 = time.monotonic()
        out = lab.ops("failover", "--to", "dc2", "--yes").stdout
        print(out)
        assert "[1/1] dc2: done" in out and "left for later" in out, out
        # DNS from dc2 answers dc2's addresses.
        a = lab.client("dig", "+short", f"@{VIP2}", f"mail.{DOMAIN}", "A").stdout.split()
        mx = lab.client("dig", "+short", f"@{VIP2}", DOMAIN, "MX").stdout.strip()
        assert a == [VIP2], a
        assert mx.endswith(f"mail.{DOMAIN}."), mx
        # dc2's masters serve the further domain from the database, with the same keys: the
        # DKIM key, and the DNSSEC key (the chain of trust holds: the same DS at the parent).
        assert hosted_dns(lab, VIP2, selector) == hosted
        lab.validated(VIP2, dnskey, HOSTED, "MX")
        # The cluster's own zone, re-signed by dc2's writer (dc2's addresses) with its key.
        answer = lab.validated(VIP2, own_key, f"mail.{DOMAIN}", "A")
        addresses = [f[4] for f in map(str.split, answer.splitlines()) if f[3:4] == ["A"]]
        assert addresses == [VIP2], answer
        # DANE: dc2's own certificate matches the MX's one record (the cluster CA's key), so
        # a DANE sender that cached it before the failover still delivers.
        (tlsa,) = lab.tlsa_validated(VIP2, own_key, f"_25._tcp.mail.{DOMAIN}")
        assert "matched TA" in lab.smtp_dane(VIP2, f"mail.{DOMAIN}", tlsa)
        holder2 = next(h for h in DC2 if lab.role(h)["vip_held"])
        r = lab.role(holder2)
        assert r["role"] == "active" and r["db"]["read_only"] is False
        dc2_user = new_user(lab)  # Postfix Admin on dc2's master: the database is writable
        for i in range(3):
            s = f"{unique} dc2 {i}"
            assert lab.send(VIP2, user, s)["ok"]
            acked.add(s)
        assert lab.send(VIP2, dc2_user, unique + " dc2-new")["ok"]
        took = time.monotonic() - t0
        print(f"dc failover: mail accepted in dc2 {took:.1f}s after the apply")
        assert took < DC_FAILOVER_LIMIT_S, took
        # The recovery point across data centres: what was acknowledged in dc1 more than
        # CROSS_DC_BOUND_S before the cut is readable in dc2 now; the rest after the rejoin.
        old_enough = {m for m, t in acked_at.items() if t < t_cut - CROSS_DC_BOUND_S}
        in_dc2 = lab.subjects(VIP2, user, f"{unique} stream", len(acked_at), timeout=10)
        missing = {m: round(t_cut - acked_at[m], 2) for m in set(acked_at) - in_dc2}
        print(f"dc loss: {len(acked_at)} acknowledged in dc1 in {DC_LOSS_STREAM_S}s, "
              f"{len(missing)} not in dc2 at the failover, acknowledged that long before the "
              f"cut: {sorted(missing.values(), reverse=True)[:10]} s")  # fmt: skip
        late = {m: missing[m] for m in old_enough - in_dc2}
        assert not late, (
            f"acknowledged over {CROSS_DC_BOUND_S} s before the cut, not in dc2: {late}"
        )
        assert {s for s in acked if " dc2 " in s} <= lab.subjects(VIP2, user, f"{unique} dc2", 3)
    finally:
        lab.run("heal", "dc1")
    # Rejoin: dc1 is the standby, its databases replicate from dc2's master over the mesh,
    # nothing of dc2's is lost. The same command again: dc1 is back, so it rejoins.
    out = lab.ops("failover", "--to", "dc2", "--yes").stdout
    assert "[1/1] dc1 (stack dc1): set activeDc=dc2, apply: rejoin as the standby" in out, out
    for h in DC1:
        r = lab.role(h)
        assert r["role"] == "standby" and not r["postfix_running"], r
        wait_rejoined(lab, h, mesh_ip(holder2), timeout=60, standby_dc=True)
    assert lab.exec("dc1-svr1", "sh", "-c", ". /etc/mailcluster/cluster.conf; echo $DNS_ROLE"
                    ).stdout.strip() == "slave"  # fmt: skip
    lab.wait_for("dc2's mailbox in dc1", lambda: lab.sql(
        "dc1-svr1", f"SELECT COUNT(*) FROM postfixadmin.mailbox WHERE username='{dc2_user[0]}'"
    ) == "1", timeout=30)  # fmt: skip
    # Fail back: the active side steps down first (never two writable masters), then dc1.
    out = lab.ops("failover", "--to", "dc1", "--yes").stdout
    print(out)
    assert out.index("[1/2] dc2 (stack dc2): set activeDc=dc1, apply: step down") < out.index(
        "[2/2] dc1 (stack dc1): set activeDc=dc1, apply: promote"), out  # fmt: skip
    assert "nothing to apply" in lab.ops("failover", "--to", "dc1", "--dry-run").stdout
    holder1 = next(h for h in DC1 if lab.role(h)["vip_held"])
    assert lab.role(holder1)["db"]["read_only"] is False
    for h in DC2:
        wait_rejoined(lab, h, mesh_ip(holder1), timeout=60, standby_dc=True)
    a = lab.client("dig", "+short", f"@{VIP1}", f"mail.{DOMAIN}", "A").stdout.split()
    assert a == [VIP1], a
    assert hosted_dns(lab, VIP1, selector) == hosted
    lab.validated(VIP1, dnskey, HOSTED, "MX")
    answer = lab.validated(VIP1, own_key, f"mail.{DOMAIN}", "A")
    assert [f[4] for f in map(str.split, answer.splitlines()) if f[3:4] == ["A"]] == [VIP1], answer
    for i in range(3):
        s = f"{unique} dc1-after {i}"
        assert lab.send(VIP1, user, s)["ok"]
        acked.add(s)
    # Count: every message acknowledged in either data centre is in dc1 now, once (the merge
    # after the rejoin copies what one side lacks; it must not copy what both have).
    mail = lab.mail(VIP1, user, unique, acked, timeout=90)
    assert acked <= set(mail), sorted(acked - set(mail))
    copies_only_around_faults(mail, acked_at, [t_cut])
    assert lab.subjects(VIP1, dc2_user, unique, 1) == {unique + " dc2-new"}
    assert lab.status()["active_dc"] == "dc1"


def mailbox_in_sync(lab: Lab, host: str, user: str, within: int = 5) -> bool:
    """The replication controller on ``host`` keeps its DC peer at most ``within`` seconds
    behind: no change waiting longer (under the drill's steady stream the queue is rarely
    empty: a change arrives every 0.25 s, a sync takes 0.3-2 s here), no failure in a row, and
    a successful sync in the last ``within`` seconds. (``user``: the streamed mailbox, among
    all.)"""
    out = lab.exec(host, "mailcluster-replication", "status", "--json", check=False).stdout
    try:
        state = json.loads(out)
        peer = next(iter(state["targets"].values()))  # the DC peer comes first
    except (ValueError, KeyError, StopIteration):
        return False
    last, oldest = peer["last_success"], peer["oldest_pending_s"]
    return (peer["consecutive_failures"] == 0 and last is not None
            and state["now"] - last <= within and (oldest is None or oldest <= within))  # fmt: skip


def check_rebuilt(lab: Lab, host: str, master: str) -> dict[str, Any]:
    """After `rebuild HOST`: a second apply runs nothing; the data directories are the volume's
    (the fresh OS disk's copies set aside); the host replicates from ``master`` again."""
    again = lab.run("apply", "--stack", "dc1").stdout.strip().splitlines()[-1]
    assert again.startswith("apply: 0 steps run"), again
    mounts = lab.exec(host, "findmnt", "-rn", "-o", "TARGET,SOURCE").stdout
    for path, name in (("/var/lib/mysql", "mysql"), ("/var/log/mysql", "mysql-log"),
                       ("/var/spool/postfix", "postfix"), ("/var/lib/bind", "bind")):  # fmt: skip
        assert f"{path} /dev/disk/by-id/scsi-0Linode_Volume_{host}-mail[/{name}]" in mounts, path
    aside = lab.exec(host, "sh", "-c", "ls -d /var/lib/mysql.os-disk-*").stdout.split()
    assert len(aside) == 1, aside
    return wait_rejoined(lab, host, master)


def test_drill_5_rebuild_both_nodes_of_a_data_centre(lab: Lab, unique: str) -> None:
    """Rebuild the standby from a fresh image (its volume kept) with mail flowing, move the role
    to it, rebuild the other: nothing acknowledged is lost, accounts and rows are intact,
    replication runs again, the queues drain. Figures: rebuild durations, and the longest
    refusal of SMTP on the shared IP (a probe every 50 ms from the client)."""
    ensure_holder(lab, "dc1-svr1")
    user = new_user(lab)
    lab.sql("dc1-svr1", "CREATE DATABASE IF NOT EXISTS mcdrill; DROP TABLE IF EXISTS "
            "mcdrill.rebuild; CREATE TABLE mcdrill.rebuild (id INT PRIMARY KEY, "
            "v VARCHAR(40))")  # fmt: skip
    lab.sql("dc1-svr1", "INSERT INTO mcdrill.rebuild VALUES " +
            ", ".join(f"({i}, '{unique}-{i}')" for i in range(1, 101)))  # fmt: skip
    rows_q = "SELECT COUNT(*), MD5(GROUP_CONCAT(v ORDER BY id)) FROM mcdrill.rebuild"
    accounts_q = "SELECT COUNT(*) FROM postfixadmin.mailbox"
    rows = lab.sql("dc1-svr1", rows_q)
    accounts = lab.sql("dc1-svr1", accounts_q)
    stream = lab.stream(VIP1, user, unique, seconds=1200, rate=4)
    figures: list[str] = []

    def rebuild(host: str, master: str) -> None:
        watch = lab.watch_port(VIP1, 25, interval=0.05)
        seconds, line = lab.rebuild(host)
        refusal = watch.result()
        check_rebuilt(lab, host, master)
        figures.append(f"{host}: {line} ({seconds:.1f}s with the CLI); SMTP on the shared IP: "
                       f"{refusal['failed']} of "
                       f"{refusal['attempts']} probes unanswered, longest refusal "
                       f"{refusal['longest_outage']:.2f}s, slowest banner "
                       f"{refusal['slowest_banner']:.2f}s")  # fmt: skip
        # A standby's rebuild never touches the shared IP: not one probe of ~1000 unanswered.
        assert refusal["attempts"] > 100 and refusal["failed"] == 0, (host, refusal)
        # Before the next step: the active node's replication controller syncs the (flowing)
        # mailbox with the rebuilt node again.
        lab.wait_for("the mailbox in sync with the rebuilt node",
                     lambda: mailbox_in_sync(lab, master_host(master), user[0]),
                     timeout=REPLICATION_WAIT_S, interval=1)  # fmt: skip

    def master_host(address: str) -> str:
        return next(h for h in DC1 if private_ip(h) == address)

    try:
        stream.wait_progress(WARM_ACKS)
        # 1. The standby, while svr1 serves.
        rebuild("dc1-svr2", private_ip("dc1-svr1"))
        # 2. The role to the rebuilt node: a planned switchover (hb_standby on the active node).
        watch = lab.watch_port(VIP1, 25, interval=0.05)
        t_switch = time.time()
        ensure_holder(lab, "dc1-svr2")
        switch = watch.result()
        figures.append(f"switchover to dc1-svr2: longest refusal "
                       f"{switch['longest_outage']:.2f}s, slowest banner "
                       f"{switch['slowest_banner']:.2f}s")  # fmt: skip
        # As drill 6 asserts for the same operation (README: < 1 s).
        assert switch["attempts"] > 20 and switch["longest_outage"] < 1.0, switch
        assert switch["slowest_banner"] < SWITCHOVER_SLOWEST_BANNER_S, switch
        switched_wall = one_more_ack(stream)  # served by the rebuilt node
        # 3. The other node, now the standby.
        rebuild("dc1-svr1", private_ip("dc1-svr2"))
        rebuilt_wall = one_more_ack(stream)  # still served after the second rebuild
    finally:
        result = stream.result()
    assert not result["permanent"], result["permanent"]
    acked = set(result["acked"])
    assert len(acked) >= 50, result
    sender_around_the_crash(result, switched_wall)
    assert max(result["acked_at"].values()) > rebuilt_wall, result
    mail = lab.mail(VIP1, user, unique, acked, timeout=90)
    lost = acked - set(mail)
    figures.append(
        f"messages: {result['sent']} sent, {len(acked)} acknowledged, {len(lost)} "
        f"lost, {len(result['failed'])} refused or deferred (retried by senders)"
    )
    print("rebuild drill: " + "; ".join(figures))
    assert not lost, sorted(lost)
    # A rebuild of a standby is no fault for the mail it never delivers: copies only around
    # the switchover (the old holder's Postfix stopped at its demote).
    copies_only_around_faults(mail, result["acked_at"], [t_switch])
    for host in (*DC1, *DC2):
        lab.wait_for(f"rows on {host}", lambda h=host: lab.sql(h, rows_q) == rows, timeout=30)
        assert lab.sql(host, accounts_q) == accounts, host
    for host in DC1:
        lab.wait_for(f"{host}'s queue to drain",
                     lambda h=host: lab.exec(h, "postqueue", "-j").stdout.strip() == "",
                     timeout=60, interval=1)  # fmt: skip
    # Leave the lab as the drills found it: svr1 holds dc1's shared IP.
    ensure_holder(lab, "dc1-svr1")


def test_drill_6_planned_switchover_withdraws_first(lab: Lab, unique: str) -> None:
    """The operator's `switchover` (hb_standby on the active node after checking its peer): it
    demotes, withdraws its route, then the peer announces (bgp) and promotes. Under a steady
    send: under 1 s of refused connections on either shared address, nothing acknowledged
    lost."""
    ensure_holder(lab, "dc1-svr1")
    user = new_user(lab)
    stream = lab.stream(VIP1, user, unique)
    watches = {fam: lab.watch_port(addr, 25, interval=0.05) for fam, addr in FAMILIES.items()}
    holders = lab.watch_holders(DC1)
    stream.wait_progress(WARM_ACKS)
    t0, t0_wall = time.monotonic(), time.time()
    out = lab.ops("switchover").stdout
    assert "switchover dc1-svr1 -> dc1-svr2" in out, out
    lab.wait_routed("dc1", "dc1-svr2")
    took = time.monotonic() - t0
    # The new holder serves the sender: a 250 after the route moved (not only the old one's).
    settled_wall = one_more_ack(stream)
    got = {fam: w.result() for fam, w in watches.items()}
    # Withdraws first: at no 50 ms sample did both nodes announce the shared IP.
    two = holders.result()
    assert not two, ("two nodes announced the shared IP at once (unix times)", two)
    result = stream.result(timeout=120)
    print(f"switchover ({lab.shared_ip_method('dc1')}, {took:.1f}s to settle; {out.strip()}): "
          + "; ".join(
        f"{fam}: {g['failed']} of {g['attempts']} probes unanswered, longest refusal "
        f"{g['longest_outage']:.2f}s, slowest banner {g['slowest_banner']:.2f}s"
        for fam, g in got.items()))  # fmt: skip
    for fam, g in got.items():
        assert g["attempts"] > 20 and g["longest_outage"] < 1.0, (fam, g)
        assert g["slowest_banner"] < SWITCHOVER_SLOWEST_BANNER_S, (fam, g)
    assert not result["permanent"], result["permanent"]
    acked = set(result["acked"])
    assert len(acked) > 10, result
    sender_around_the_crash(result, settled_wall)
    mail = lab.mail(VIP1, user, unique, acked)
    got_subjects = set(mail)
    assert acked <= got_subjects, sorted(acked - got_subjects)
    copies_only_around_faults(mail, result["acked_at"], [t0_wall])
    print(f"switchover under load: {len(acked)} acknowledged, "
          f"{len(acked - got_subjects)} lost")  # fmt: skip
    wait_rejoined(lab, "dc1-svr1", private_ip("dc1-svr2"))
    ensure_holder(lab, "dc1-svr1")


def test_drill_7_arp_crash(lab: Lab, unique: str) -> None:
    """The legacy method, focused: dc1 switched to arp on the running cluster (and back), a
    crash of the active node measured on both shared addresses, the mail acknowledged over the
    in-DC bound before it readable before the crashed node returns, nothing acknowledged lost.
    (IPv6 moves with Heartbeat's IPv6 resource in arp.)"""
    try:
        lab.run("apply", "--stack", "dc1", "--set", "sharedIpMethod=arp")
        assert lab.shared_ip_method("dc1") == "arp"
        ensure_holder(lab, "dc1-svr1")
        assert smtp_banner_from(lab, VIP1)
        deadtime = lab.stack_config("dc1").heartbeat_deadtime_ms / 1000
        user = new_user(lab)
        # One submission first, through the method switch just applied: the stream's sessions
        # then measure the crash, not a first session that stalls (seen once, 7 December 2026:
        # 1 sent, 0 acknowledged; its cause was not found, so this send also says where).
        warm = lab.send(VIP1, user, unique + " warm-up")
        assert warm["ok"], ("submission over the shared IP fails in arp mode", warm)
        first_synced(lab, user, "dc1-svr2")
        stream = lab.stream(VIP1, user, unique)
        # Long enough that some mail is older than the in-DC bound at the crash (as drill 1).
        stream.wait_progress(WARM_ACKS + int(IN_DC_BOUND_S * 5))
        t_crash, acked_before = time.time(), stream.progress()
        lab.crash_now("dc1-svr1")
        probes = takeover_probes(lab, user)
        takeover_figures(probes, t_crash, deadtime + ARP_LIMIT_AFTER_DEADTIME_S, "arp")
        stream.wait_progress(acked_before + 1, timeout=AFTER_CRASH_ACK_WAIT_S)
        result = stream.result(timeout=120)
        assert not result["permanent"], result["permanent"]
        print(f"arp crash: warm-up submission {warm['seconds']:.2f}s; "
              f"{result['sent']} sent, {len(result['acked'])} acknowledged; "
              f"failed: {result['failed']}")  # fmt: skip
        sender_around_the_crash(result, t_crash)
        readable_before_the_return(lab, user, unique, result, t_crash)
        lab.run("boot", "dc1-svr1")
        wait_rejoined(lab, "dc1-svr1", private_ip("dc1-svr2"))
        acked = set(result["acked"])
        mail = lab.mail(VIP1, user, unique, acked)
        assert acked <= set(mail), sorted(acked - set(mail))
        copies_only_around_faults(mail, result["acked_at"], [t_crash])
    finally:
        lab.run("apply", "--stack", "dc1", "--set", "sharedIpMethod=bgp")
    # Back to bgp on the running cluster: the holder announces, the router follows.
    assert lab.shared_ip_method("dc1") == "bgp"
    holder = lab.holders(DC1)
    assert len(holder) == 1, holder
    lab.wait_routed("dc1", holder[0], timeout=30)
    assert smtp_banner_from(lab, VIP1)
    ensure_holder(lab, "dc1-svr1")


def test_drill_8_a_promote_that_fails_at_takeover_keeps_the_shared_ip(lab: Lab) -> None:
    """The active node crashes while its peer's MariaDB cannot start: the peer's promote fails.
    Heartbeat would answer a failed resource start by releasing the shared IP for good (and still
    count it as held, so nobody takes it). Instead the peer keeps the shared IP, its health check
    says why it is not writable, and the guard promotes it once MariaDB can start again."""
    ensure_holder(lab, "dc1-svr1")
    user = new_user(lab)
    binary = "/usr/sbin/mariadbd"
    lab.exec("dc1-svr2", "bash", "-c", f"service mariadb stop >/dev/null; mv {binary} {binary}.off")
    broken = True

    def failed_promotes() -> int:
        log = lab.exec("dc1-svr2", "cat", "/var/log/syslog").stdout
        return log.count("promote failed at takeover")

    before = failed_promotes()
    try:
        t_crash = time.time()
        lab.run("crash", "dc1-svr1")
        lab.wait_for("dc1-svr2 to announce", lambda: lab.role("dc1-svr2")["vip_held"],
                     timeout=30, interval=0.5)  # fmt: skip
        # The promote gives up on MariaDB after its bound (10 s); the shared IP stays held.
        lab.wait_for("the failed promote in dc1-svr2's log",
                     lambda: failed_promotes() > before, timeout=40, interval=1)  # fmt: skip
        failed_at = time.time()
        # The route servers route to svr2 (the crashed node's route outlived its hold time).
        lab.wait_routed("dc1", "dc1-svr2")
        # From then until the repair (3 s and the health check): every sample of svr2 holds
        # the shared IP as the active node, and the route servers still route to it.
        samples = []
        while time.time() - failed_at < 3:
            r2 = lab.role("dc1-svr2")
            samples.append(r2)
            assert r2["vip_held"] and r2["role"] == "active", r2
            assert set(lab.routed_to("dc1").values()) == {"dc1-svr2"}
            time.sleep(0.5)
        assert len(samples) >= 3, samples
        health = lab.exec("dc1-svr2", "/usr/local/sbin/mailcluster-health").stdout
        assert any(line.startswith("mariadb.replication\tfail") for line in health.splitlines())
        assert lab.role("dc1-svr2")["vip_held"]
        lab.exec("dc1-svr2", "mv", f"{binary}.off", binary)
        broken = False
        t_fixed = time.time()

        def writable() -> bool:
            r = lab.role("dc1-svr2")
            return bool(r["vip_held"] and r["db"]["read_only"] is False
                        and not r["replication"]["configured"])  # fmt: skip

        lab.wait_for("the guard to promote dc1-svr2", writable, timeout=60, interval=1)
        print(f"failed promote: reported {failed_at - t_crash:.1f}s after the crash; dc1-svr2 "
              f"writable {time.time() - t_fixed:.1f}s after MariaDB could start again")  # fmt: skip
        lab.wait_routed("dc1", "dc1-svr2")
        sent = lab.send(VIP1, user, "after-failed-promote")
        assert sent["ok"], sent
        fresh = new_user(lab)  # a write through Postfix Admin on the new master
        assert lab.send(VIP1, fresh, "fresh-after-failed-promote")["ok"]
    finally:
        if broken:
            lab.exec("dc1-svr2", "mv", f"{binary}.off", binary, check=False)
        lab.run("boot", "dc1-svr1")
    wait_rejoined(lab, "dc1-svr1", private_ip("dc1-svr2"))
    ensure_holder(lab, "dc1-svr1")
