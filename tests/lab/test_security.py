"""Security (issue 10): the firewalls, brute-force bans and the sending limit, done to the lab.

A "stranger" is a second client address outside ``adminCidrs`` (the lab's admin is the client's
own 192.0.2.100 and 2001:db8:c::100, cluster/lab/model.py): 192.0.2.1xx and 2001:db8:c::1xx,
added to the client's interface for this module and removed after it.

Runs after the mail tests and before the drills (alphabetical order). The ban test ends with a
crash of the active node: dc1's shared IP stays on svr2 (the drills move it as they need), and
every ban the module caused is lifted on every node.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from cluster import ports
from cluster.config import KEYS
from cluster.hostplan import build_host_plan
from cluster.lab import addresses as A
from cluster.lab.driver import Lab, mesh_ip, private_ip, public_ip, shared_ip
from cluster.lab.model import LAB_SUBMISSION_LIMIT, lab_topology
from cluster.lab.secrets import load_secrets
from cluster.plan import CHANGED_MARK
from cluster.services import fail2ban, firewall, ratelimit, units
from mailnode import bans

DOMAIN = "example.com"
DC1 = ("dc1-svr1", "dc1-svr2")
DC2 = ("dc2-svr1", "dc2-svr2")
HOSTS = (*DC1, *DC2)
VIP1 = shared_ip("dc1")
# A fresh address per run: fail2ban remembers an address's failures for banFindTimeSeconds, so a
# rerun from the same address would be banned sooner than banMaxRetry.
_STRANGER_HOST = 101 + secrets.randbelow(99)
STRANGER = f"{A.CLIENT_NET}.{_STRANGER_HOST}"
STRANGER6 = A.v6(A.CLIENT_NET6, _STRANGER_HOST)
ADMIN = A.client_address()
PUBLIC_TCP = {25, 53, 80, 443, 465, 587, 993, ports.MANAGESIEVE_PORT}
INTERNAL_TCP = {ports.MARIADB_PORT, ports.DOVEADM_PORT, ports.VALKEY_PORT}
LOOPBACK_ONLY = {8053, ratelimit.PORT, 11332, 11333, 11334, ports.SRS_FORWARD_PORT,
                 ports.SRS_REVERSE_PORT, ports.SRS_REINJECT_PORT}  # fmt: skip
SCAN_PORTS = sorted({*range(1, 1025), 3306, 4190, 5000, 5001, 6379, 8053, 8080, 12345, 873, 694,
                     ports.MESH_PORT, *LOOPBACK_ONLY})  # fmt: skip

# Runs in the client or a host: TCP connect to every (address, port), from a chosen source
# address, at most PARALLEL at once. "filtered" = no answer in time (a firewall drop), "refused"
# = RST, "errors" = any other failure (unreachable, ...): never counted as filtered. A source
# address that cannot be bound fails the whole probe (F13: a missing stranger address must not
# look like a firewall drop).
PROBE = r"""
import asyncio, json, socket, sys
src4, src6, targets, ports, timeout = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), \
    json.loads(sys.argv[4]), float(sys.argv[5])
async def one(sem, host, port):
    # Plain sockets on numeric addresses: asyncio.open_connection would queue a getaddrinfo per
    # probe in a small thread pool, and the first probes' time would run out in that queue.
    async with sem:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        src = src6 if family == socket.AF_INET6 else src4
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            if src:
                sock.bind((src, 0))
            try:
                await asyncio.wait_for(
                    asyncio.get_running_loop().sock_connect(sock, (host, port)), timeout)
                return host, port, "open"
            except ConnectionRefusedError:
                return host, port, "refused"
            except TimeoutError:
                return host, port, "filtered"
            except OSError as e:
                return host, port, f"error {e!r}"
        finally:
            sock.close()
async def main():
    sem = asyncio.Semaphore(500)
    got = await asyncio.gather(*(one(sem, h, p) for h in targets for p in ports))
    out = {h: {"open": [], "refused": [], "errors": []} for h in targets}
    for h, p, state in got:
        if state.startswith("error"):
            out[h]["errors"].append([p, state])
        elif state != "filtered":
            out[h][state].append(p)
    print(json.dumps(out))
asyncio.run(main())
"""


Probed = dict[str, dict[str, list[Any]]]


def _probed(stdout: str) -> Probed:
    """PROBE's answer; any error other than a drop or a refusal fails the test here."""
    result: Probed = json.loads(stdout.strip().splitlines()[-1])
    errors = {target: states["errors"] for target, states in result.items() if states["errors"]}
    assert not errors, f"probes failed (not a firewall drop): {errors}"
    return result


# Runs in the client: one datagram to every (address, port) from a chosen source, on a connected
# socket so an ICMP port unreachable comes back as ConnectionRefusedError. Port 53 gets a real
# DNS query (an answer proves the probe is not blind), every other port a few junk bytes, which
# no service of ours answers: "answered" = a datagram came back, "refused" = the kernel said
# no one listens (the firewall let it through), neither = dropped. Port by port across all
# targets, Heartbeat's first: a node sends a stranger only a burst of ICMP errors, then about one
# a second (the kernel's per-destination rate limit), so the ports that matter go first.
UDP_PROBE = r"""
import json, socket, struct, sys
src4, src6, targets, ports, timeout = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), \
    json.loads(sys.argv[4]), float(sys.argv[5])
query = struct.pack(">HHHHHH", 0x6d63, 0x0100, 1, 0, 0, 0) + b"\x07example\x03com\x00" \
    + struct.pack(">HH", 2, 1)
out = {h: {"answered": [], "refused": [], "errors": []} for h in targets}
socks = []
for port in ports:
    for host in targets:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.bind((src6 if family == socket.AF_INET6 else src4, 0))
        s.connect((host, port))
        s.send(query if port == 53 else b"mailcluster-probe")
        socks.append((s, host, port))
for s, host, port in socks:
    s.settimeout(timeout)
    try:
        s.recv(4096)
        out[host]["answered"].append(port)
    except ConnectionRefusedError:
        out[host]["refused"].append(port)
    except TimeoutError:
        pass  # no answer: dropped
    except OSError as e:  # unreachable and the like: not "dropped", and the test says so
        out[host]["errors"].append(f"{port}: {e}")
    timeout = 0.05  # the first wait covered every datagram's round trip
    s.close()
print(json.dumps(out))
"""
UDP_SCAN_PORTS = [53, ports.HEARTBEAT_PORT, ports.MESH_PORT, 123, 161, 500, 5353, 12345]


def probe_from_client(
    lab: Lab, targets: list[str], port_list: list[int], src4: str, src6: str, timeout: float = 2
) -> Probed:
    proc = lab.client(sys.executable, "-c", PROBE, src4, src6, json.dumps(targets),
                      json.dumps(port_list), str(timeout))  # fmt: skip
    return _probed(proc.stdout)


def probe_from_host(
    lab: Lab, host: str, targets: list[str], port_list: list[int], timeout: float = 2
) -> Probed:
    proc = lab.exec(host, "python3", "-c", PROBE, "", "", json.dumps(targets),
                    json.dumps(port_list), str(timeout))  # fmt: skip
    return _probed(proc.stdout)


def holder(lab: Lab) -> str:
    found = lab.wait_for("a holder of dc1's shared IP",
                         lambda: next(iter(lab.holders(DC1)), None), timeout=60)  # fmt: skip
    return found


def unban_everywhere(lab: Lab, address: str) -> None:
    """Lift a ban on every node: the writer first (the table: every loader drops it), then each
    node's fail2ban and set (a node that banned it as a standby forgets its pending record too).
    fail2ban-client answers "0" when it held no ban of the address, so only the lift itself
    must succeed."""
    writer = holder(lab)
    for host in (writer, *(h for h in HOSTS if h != writer)):
        lab.exec(host, "bash", "-c", f"fail2ban-client unban {address} >/dev/null; "
                 f"{fail2ban.BANS_SCRIPT} unban {address} {bans.MANUAL}")  # fmt: skip


def banned_on(lab: Lab, host: str, address: str) -> bool:
    out = lab.exec(host, "nft", "list", "set", "inet", firewall.TABLE, firewall.BAN_SET4,
                   check=False).stdout  # fmt: skip
    return address in out


@pytest.fixture(scope="module")
def stranger(lab: Lab) -> Iterator[tuple[str, str]]:
    """Two more client addresses, outside adminCidrs, for this module only (present: F13)."""
    dev = A.INTERFACE
    lab.client("ip", "addr", "replace", f"{STRANGER}/{A.PREFIXLEN}", "dev", dev)
    lab.client("ip", "-6", "addr", "replace", f"{STRANGER6}/{A.PREFIXLEN6}", "dev", dev, "nodad")
    shown = lab.client("ip", "-o", "addr", "show", "dev", dev).stdout
    assert f" {STRANGER}/" in shown and f" {STRANGER6}/" in shown, shown
    unban_everywhere(lab, STRANGER)
    try:
        yield STRANGER, STRANGER6
    finally:
        unban_everywhere(lab, STRANGER)
        lab.client("ip", "addr", "del", f"{STRANGER}/{A.PREFIXLEN}", "dev", dev, check=False)
        lab.client("ip", "-6", "addr", "del", f"{STRANGER6}/{A.PREFIXLEN6}", "dev", dev,
                   check=False)  # fmt: skip


# -- (a) a scan from the internet --------------------------------------------------------------
def test_a_scan_from_the_internet_sees_only_the_public_ports(
    lab: Lab, stranger: tuple[str, str]
) -> None:
    targets = [public_ip(h) for h in HOSTS] + [_v6(h) for h in HOSTS]
    targets += [shared_ip("dc1"), shared_ip("dc2")]
    targets += [a for a in (A.lab_dc_addresses(dc).shared_ipv6 for dc in ("dc1", "dc2")) if a]
    # One connection to each address first: the router and the client resolve its link address
    # (ARP, neighbour discovery) before the burst, which would otherwise lose its first SYNs.
    probe_from_client(lab, targets, [53], *stranger)
    t0 = time.monotonic()
    seen = probe_from_client(lab, targets, SCAN_PORTS, *stranger, timeout=3)
    took = time.monotonic() - t0
    summary = {t: sorted(v["open"] + v["refused"]) for t, v in seen.items()}
    print(f"scan of {len(targets)} addresses x {len(SCAN_PORTS)} ports from {stranger[0]}/"
          f"{stranger[1]} in {took:.0f}s: answered {summary}")  # fmt: skip
    for target, states in seen.items():
        # Refused is an answer too: the firewall let the SYN through. Only public ports may.
        answered = set(states["open"]) | set(states["refused"])
        assert answered <= PUBLIC_TCP, (target, sorted(answered - PUBLIC_TCP))
    # And the scan is not blind: the active shared IP serves mail, web and DNS.
    assert {25, 53, 443, 465, 587, 993, 4190} <= set(seen[VIP1]["open"]), seen[VIP1]
    for host in HOSTS:
        assert 53 in seen[public_ip(host)]["open"], host


def test_udp_from_the_internet_answers_only_dns(lab: Lab, stranger: tuple[str, str]) -> None:
    """The stranger's datagrams: DNS answers on every public address; nothing else answers or
    is even refused: Heartbeat's port (694) on no public address of either family, and the
    mesh's port (open to anyone) silent without a cluster key."""
    targets = [public_ip(h) for h in HOSTS] + [_v6(h) for h in HOSTS]
    targets += [shared_ip("dc1"), shared_ip("dc2")]
    targets += [a for a in (A.lab_dc_addresses(dc).shared_ipv6 for dc in ("dc1", "dc2")) if a]
    proc = lab.client(sys.executable, "-c", UDP_PROBE, *stranger, json.dumps(targets),
                      json.dumps(UDP_SCAN_PORTS), "3")  # fmt: skip
    seen: dict[str, dict[str, list[int]]] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"UDP from {stranger[0]}/{stranger[1]}: {seen}")
    for target, states in seen.items():
        assert states["answered"] == [53], (target, states)
        assert not states["refused"] and not states["errors"], (target, states)
    # The probe hears a refusal when there is one: a closed port on the client's own address.
    proc = lab.client(sys.executable, "-c", UDP_PROBE, *stranger, json.dumps([ADMIN]), "[9]", "3")
    assert json.loads(proc.stdout.strip().splitlines()[-1])[ADMIN]["refused"] == [9]


def _v6(host: str) -> str:
    dc, slot = host.split("-")
    address = A.lab_dc_addresses(dc).nodes[slot].public_ipv6
    assert address is not None
    return address


def test_ssh_answers_the_admin_only(lab: Lab, stranger: tuple[str, str]) -> None:
    """The firewall lets the admin's SYN through (the lab's hosts run no sshd, so the answer is
    a refusal: still an answer) and drops the stranger's."""
    targets = [public_ip(h) for h in HOSTS] + [_v6(h) for h in HOSTS]
    admin = probe_from_client(lab, targets, [22], ADMIN, A.client_address6())
    other = probe_from_client(lab, targets, [22], *stranger)
    for target in targets:
        assert admin[target]["open"] + admin[target]["refused"] == [22], (target, admin[target])
        assert not other[target]["open"] and not other[target]["refused"], (target, other)


# -- (b) from the other data centre -------------------------------------------------------------
def test_internal_ports_from_the_other_dc(lab: Lab) -> None:
    """From dc2-svr1, dc1's public and shared addresses: neither the loopback-only services nor
    the internal ports answer (the other DC reaches those only over the mesh); the DC peer reaches
    MariaDB on the private network and the doveadm server on the mesh only, as dc2 does;
    replication from dc1 to dc2 runs."""
    targets = [public_ip(h) for h in DC1] + [VIP1]
    seen = probe_from_host(lab, "dc2-svr1", targets, sorted(INTERNAL_TCP | LOOPBACK_ONLY | {5000}))
    print(f"from dc2-svr1: {seen}")
    for target in targets:
        answered = set(seen[target]["open"]) | set(seen[target]["refused"])
        assert not answered & (LOOPBACK_ONLY | {5000}), (target, answered)
        assert not answered, (target, answered)
    # The DC peer's paths: MariaDB on the private network (and the mesh); the doveadm server and
    # Valkey on the mesh only (dsync and Valkey's replication are plain TCP inside WireGuard).
    svr1 = [private_ip("dc1-svr1"), mesh_ip("dc1-svr1")]
    peer = probe_from_host(lab, "dc1-svr2", svr1, sorted(INTERNAL_TCP))
    assert set(peer[private_ip("dc1-svr1")]["open"]) == {ports.MARIADB_PORT}, peer
    assert set(peer[mesh_ip("dc1-svr1")]["open"]) == INTERNAL_TCP, peer
    far = probe_from_host(lab, "dc2-svr1", [mesh_ip("dc1-svr1")],
                          [ports.DOVEADM_PORT, ports.VALKEY_PORT])  # fmt: skip
    assert far[mesh_ip("dc1-svr1")]["open"] == [ports.DOVEADM_PORT, ports.VALKEY_PORT], far
    # MariaDB replication from the active DC reaches the other DC.
    master = holder(lab)
    row = time.time_ns()
    lab.sql(master, "CREATE DATABASE IF NOT EXISTS mcsecurity; CREATE TABLE IF NOT EXISTS "
            "mcsecurity.t (id BIGINT PRIMARY KEY)")  # fmt: skip
    lab.sql(master, f"INSERT INTO mcsecurity.t VALUES ({row})")
    for replica in DC2:
        lab.wait_for(f"the row on {replica}", lambda r=replica: lab.sql(
            r, f"SELECT COUNT(*) FROM mcsecurity.t WHERE id={row}") == "1", timeout=20)  # fmt: skip


def test_the_host_firewall_is_loaded_and_a_reload_changes_nothing(lab: Lab) -> None:
    for host in HOSTS:
        chain = lab.exec(host, "nft", "list", "chain", "inet", firewall.TABLE, "input").stdout
        assert "policy drop" in chain, host
        assert f'iifname "{ports.MESH_INTERFACE}" udp dport 694 accept' in chain, host
        subnet = A.VPC_SUBNETS[host.split("-")[0]]
        vpc = f'iifname "{A.PRIVATE_INTERFACE}" ip saddr {subnet} udp dport 694 accept'
        assert vpc in chain, host
    host = "dc2-svr2"
    before = lab.exec(host, "nft", "list", "table", "inet", firewall.TABLE).stdout
    # Forced: the plan's own re-run would skip (its stamp matches); loading again keeps the sets.
    lab.exec(host, "nft", "-f", firewall.CONF)
    after = lab.exec(host, "nft", "list", "table", "inet", firewall.TABLE).stdout
    assert [line for line in before.splitlines() if "expires" not in line] == [
        line for line in after.splitlines() if "expires" not in line
    ]


# -- (d) the sending limit ----------------------------------------------------------------------
# One message to COUNT recipients, then one more message to one recipient: the DATA command's
# answer of each (the limit is counted at DATA, with the message's recipient count).
MESSAGES = r"""
import json, smtplib, ssl, sys
host, ca, user, password, count = sys.argv[1:5] + [int(sys.argv[5])]
s = smtplib.SMTP(host, 587, timeout=30)
s.starttls(context=ssl.create_default_context(cafile=ca))
s.login(user, password)
answers = []
for n in (count, 1):
    s.mail(user)
    rcpts = [s.rcpt(user)[0] for _ in range(n)]
    try:
        code, text = s.data(b"Subject: rate\r\n\r\nx\r\n")
    except smtplib.SMTPDataError as refused:  # DATA itself refused: its code and text
        code, text = refused.smtp_code, refused.smtp_error
        s.rset()
    answers.append({"rcpts": rcpts, "code": code, "text": text.decode()})
s.quit()
print(json.dumps(answers))
"""


@pytest.fixture
def default_rate_limit(lab: Lab) -> Iterator[int]:
    """The stack's default submissionRateLimitPerHour on the active data centre for one test
    (the lab raises it for its steady senders, cluster/lab/model.py)."""
    limit: int = KEYS["submissionRateLimitPerHour"].default
    lab.run("apply", "--stack", "dc1", "--set", f"submissionRateLimitPerHour={limit}")
    try:
        yield limit
    finally:
        lab.run("apply", "--stack", "dc1", "--set",
                f"submissionRateLimitPerHour={LAB_SUBMISSION_LIMIT}")  # fmt: skip


def test_d_a_sender_over_the_limit_is_deferred(lab: Lab, default_rate_limit: int) -> None:
    """A message that reaches the limit goes; the next one, to a single recipient, is deferred
    at DATA with the limiter's 4xx; another user is not affected."""
    limit = default_rate_limit
    user = lab.new_mailbox(DOMAIN, "rl")
    other = lab.new_mailbox(DOMAIN, "rl")
    proc = lab.client(sys.executable, "-c", MESSAGES, VIP1, lab.ca, user[0], user[1], str(limit))
    first, over = json.loads(proc.stdout.strip().splitlines()[-1])
    assert first["rcpts"] == [250] * limit and first["code"] == 250, first
    print(f"rate limit: recipient {limit + 1} (a second message) -> DATA {over['code']} "
          f"{over['text']}")  # fmt: skip
    assert over["rcpts"] == [250], over
    assert over["code"] == 450 and "4.7.1" in over["text"], over
    assert ratelimit.LOG_TAG in over["text"] and f"{limit} recipients per hour" in over["text"]
    # Another user is not affected (an SMTP session that otherwise works: the refusal above is
    # the limiter's own answer).
    proc = lab.client(sys.executable, "-c", MESSAGES, VIP1, lab.ca, other[0], other[1], "1")
    assert [m["code"] for m in json.loads(proc.stdout.strip().splitlines()[-1])] == [250, 250]
    # The line an alert finds (rsyslog may take a moment to write it).
    pattern = f": reject: DATA .*{ratelimit.LOG_TAG}.* from=<{user[0]}>"
    lab.wait_for("the rate-limit line on mail.log", lambda: lab.exec(
        holder(lab), "grep", "-q", pattern, "/var/log/mail.log", check=False
    ).returncode == 0, timeout=20, interval=1)  # fmt: skip


WEB_LOGINS = r"""
set -e
src=$1; vip=$2; jar=$(mktemp)
get() { curl -sk -c "$jar" -b "$jar" --interface "$src" "$@"; }
# Roundcube: its login form's request token, then a wrong password.
tok=$(get "https://$vip/" | grep -o '"request_token":"[^"]*"' | cut -d'"' -f4)
get -o /dev/null -d "_token=$tok&_task=login&_action=login&_timezone=UTC&_url=" \
  -d "_user=nobody@example.com&_pass=wrong" "https://$vip/?_task=login"
# Postfix Admin: its CSRF token, then a wrong password.
tok=$(get "https://$vip/postfixadmin/login.php" | grep -o 'name="token" value="[^"]*"' \
  | cut -d'"' -f4)
get -o /dev/null --data-urlencode "token=$tok" \
  -d "fUsername=nobody@example.com&fPassword=wrong&lang=en&submit=Login" \
  "https://$vip/postfixadmin/login.php"
"""


def test_failed_web_logins_are_counted(lab: Lab, stranger: tuple[str, str]) -> None:
    """Roundcube and Postfix Admin log a failed login where their jails read it, with the
    client's address (one failure each: no ban yet)."""
    active = holder(lab)
    lab.client("bash", "-c", WEB_LOGINS, "web-logins", stranger[0], VIP1)
    for jail in ("roundcube-auth", "postfixadmin"):
        lab.wait_for(f"{jail} to count {stranger[0]}", lambda j=jail: lab.exec(
            active, "grep", "-q", f"\\[{j}\\] Found {stranger[0]} ", "/var/log/fail2ban.log",
            check=False).returncode == 0, timeout=20, interval=1)  # fmt: skip
    assert not banned_on(lab, active, stranger[0])


# -- (c) password guessing ----------------------------------------------------------------------
# Runs in the client, from the stranger's address. Watchers knock on every node (TCP 53: BIND
# answers on each node's public address) every WATCH_S; a knock is "answered" (SYN-ACK or RST)
# or "dropped" (no answer within KNOCK_S: the ban). Meanwhile the guesser sends wrong passwords
# over IMAPS to the shared IP until a guess gets no answer: each guess's send and answer times
# are kept. Then the watchers go on until every node has dropped DROPPED_IN_A_ROW knocks in a
# row, or WATCH_AFTER_S after the last guess. Times are wall-clock (the lab shares this clock).
GUESS = r"""
import json, socket, ssl, sys, threading, time
vip, ca, src, user = sys.argv[1:5]
tries, nodes, after_s = int(sys.argv[5]), json.loads(sys.argv[6]), float(sys.argv[7])
WATCH_S, KNOCK_S, IN_A_ROW = 0.25, 1.0, 3

def knock(address):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((src, 0))  # outside the try: a missing source address fails the test
    s.settimeout(KNOCK_S)
    try:
        s.connect((address, 53))
        return "answered"
    except ConnectionRefusedError:
        return "answered"
    except TimeoutError:
        return "dropped"
    except OSError as e:
        return f"error {e!r}"
    finally:
        s.close()

knocks = {name: [] for name in nodes}
stop = threading.Event()

def watch(name, address):
    while not stop.is_set():
        t = time.time()
        knocks[name].append((t, knock(address)))
        time.sleep(max(0.0, WATCH_S - (time.time() - t)))

def all_dropped():
    return all(len(k) >= IN_A_ROW and all(s == "dropped" for _, s in k[-IN_A_ROW:])
               for k in knocks.values())

threads = [threading.Thread(target=watch, args=(n, a), daemon=True) for n, a in nodes.items()]
for th in threads:
    th.start()
ctx = ssl.create_default_context(cafile=ca)
sent, answered, other = [], [], []
for i in range(tries):
    try:
        raw = socket.create_connection((vip, 993), 5, source_address=(src, 0))
    except TimeoutError:
        other.append(f"guess {i + 1}: connect: no answer")
        break
    # IMAPS by hand (imaplib cannot choose the source address). Dovecot delays a failed LOGIN
    # (its auth penalty grows to 15 s, plus a 2-s failure delay): a patient client.
    raw.settimeout(40)
    try:
        s = ctx.wrap_socket(raw, server_hostname=vip)
        f = s.makefile("rb")
        f.readline()
        sent.append(time.time())
        s.sendall(b'a LOGIN "%s" "wrong-%d"\r\n' % (user.encode(), i))
        while True:
            line = f.readline()
            if not line or line.startswith(b"a "):
                break
        if not line.startswith(b"a NO"):
            other.append(f"guess {i + 1}: {line!r}")
            break
        answered.append(time.time())
        s.sendall(b"b LOGOUT\r\n")
        s.close()
    except TimeoutError:
        other.append(f"guess {i + 1}: no answer")
        break
end = (sent[-1] if sent else time.time()) + after_s
while time.time() < end and not all_dropped():
    time.sleep(0.1)
stop.set()
for th in threads:
    th.join()
print(json.dumps({"sent": sent, "answered": answered, "other": other, "knocks": knocks}))
"""
WATCH_AFTER_S = 60  # twice the target: a slow ban is measured, not cut off
# Issue 23: refused on every node within 30 s of the banMaxRetry-th failure. Measured in the lab
# (December 2026, two runs, the machine shared): 15.7-17.4 s from the send, of which ~15 s is
# Dovecot's own auth penalty before it checks that password: a margin of 12.6 s.
BAN_TARGET_S = 30
# After Dovecot logged the failure (fail2ban, the action, the table, each node's loader): measured
# 0.65-2.39 s; the aim is under 10 s (a margin of 7.6 s).
BAN_SERVER_AIM_S = 10


def refused_at(knocks: list[tuple[float, str]]) -> float:
    """When a node began to drop the stranger for good: the first knock of the final run of
    drops (its SYN got no answer, so the ban held when it was sent)."""
    states = [state for _, state in knocks]
    assert not [s for s in states if s.startswith("error")], states
    assert states and states[0] == "answered", f"the node did not answer before: {states}"
    assert states[-1] == "dropped", f"never refused: {states}"
    first = len(states) - next(i for i, s in enumerate(reversed(states)) if s != "dropped")
    return knocks[first][0]


def failure_logged_at(lab: Lab, host: str, address: str, since: float, nth: int) -> float:
    """When Dovecot on ``host`` logged the ``nth`` failed login from ``address`` (the line the
    dovecot jail counts), from the journal."""
    out = lab.exec(host, "journalctl", "-u", "dovecot.service", "-o", "json", "--no-pager",
                   f"--since=@{int(since) - 1}").stdout  # fmt: skip
    times = [
        int(entry["__REALTIME_TIMESTAMP"]) / 1e6
        for entry in map(json.loads, out.splitlines())
        if f",{address})" in str(entry.get("MESSAGE", ""))
        and str(entry.get("MESSAGE", "")).endswith(("Password mismatch", "unknown user"))
    ]
    assert len(times) >= nth, f"{len(times)} failures of {address} logged on {host}: {out[-2000:]}"
    return sorted(times)[nth - 1]


def test_c_guessing_gets_banned_cluster_wide_and_the_ban_survives_a_takeover(
    lab: Lab, stranger: tuple[str, str], unique: str
) -> None:
    """From the client: the stranger guesses passwords over IMAPS on the shared IP; every node
    (and the shared IP) answers it before, and drops it within BAN_TARGET_S of the moment its
    banMaxRetry-th wrong password was sent (which includes Dovecot's own penalty before it
    checks that password: up to 15 s). The share after Dovecot logged that failure (fail2ban,
    the writer's table, each node's loader) is held to BAN_SERVER_AIM_S."""
    max_retry = lab.stack_config("dc1").ban_max_retry
    user = lab.new_mailbox(DOMAIN, "bf")
    active = holder(lab)
    targets = {h: public_ip(h) for h in HOSTS} | {"dc1 shared IP": VIP1}
    proc = lab.client(sys.executable, "-c", GUESS, VIP1, lab.ca, STRANGER, user[0],
                      str(max_retry + 5), json.dumps(targets), str(WATCH_AFTER_S))  # fmt: skip
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    sent, answered = got["sent"], got["answered"]
    # Enough guesses were made, and no guess after the banMaxRetry-th got an answer.
    assert len(sent) >= max_retry and len(answered) <= max_retry, got["other"]
    assert len(got["other"]) == 1 and "no answer" in got["other"][0], got["other"]
    nth_sent = sent[max_retry - 1]
    logged = failure_logged_at(lab, active, STRANGER, sent[0], max_retry)
    refused = {name: refused_at(k) for name, k in got["knocks"].items()}
    from_sent = {name: round(t - nth_sent, 2) for name, t in refused.items()}
    from_logged = {name: round(t - logged, 2) for name, t in refused.items()}
    print(f"guessing from {STRANGER} (banMaxRetry {max_retry}): {len(sent)} sent, "
          f"{len(answered)} answered; the {max_retry}th failure logged "
          f"{logged - nth_sent:.2f}s after it was sent; refused, from the send: {from_sent}; "
          f"from the log line: {from_logged}")  # fmt: skip
    slowest = max(from_sent.values())
    assert slowest < BAN_TARGET_S, (
        f"refused on every node {slowest:.1f}s after the {max_retry}th guess was sent "
        f"(target {BAN_TARGET_S}s): {from_sent}"
    )
    assert max(from_logged.values()) < BAN_SERVER_AIM_S, from_logged
    # Banned on the active node, in the cluster's table, in every node's set.
    assert STRANGER in lab.exec(active, fail2ban.BANS_SCRIPT, "list").stdout
    for host in HOSTS:
        assert banned_on(lab, host, STRANGER), host
    # fail2ban counted from the journal.
    status = lab.exec(active, "fail2ban-client", "status", "dovecot").stdout
    assert "Journal matches:" in status and STRANGER in status, status
    # The stranger gets no answer at all, on any port; the user at the admin's address works.
    seen = probe_from_client(lab, [VIP1], [25, 443, 587, 993], *stranger)
    assert not seen[VIP1]["open"] and not seen[VIP1]["refused"], seen
    assert lab.send(VIP1, user, unique)["ok"]
    assert lab.subjects(VIP1, user, unique, 1) == {unique}

    # Crash the active node: the new holder blocks the stranger already.
    other = DC1[1] if active == DC1[0] else DC1[0]
    lab.run("crash", active)
    try:
        lab.wait_for(f"{other} to take over", lambda: lab.role(other)["role"] == "active",
                     timeout=60, interval=0.5)  # fmt: skip
        # With bgp the takeover is complete once the route servers route to the new holder
        # (the crashed node's route lasts until its hold time runs out): only then does a
        # probe reach the node whose ban it tests.
        lab.wait_routed("dc1", other)
        seen = probe_from_client(lab, [VIP1], [25, 443, 587, 993], *stranger)
        assert not seen[VIP1]["open"] and not seen[VIP1]["refused"], seen
        assert lab.send(VIP1, user, unique + "-2")["ok"]
    finally:
        lab.run("boot", active)
        lab.wait_for(f"{active} back as a replica", lambda: (lambda r: bool(r) and r[
            "replication"]["io_running"] == "Yes" and not r["vip_held"])(
                lab.role(active, check=False)), timeout=120, interval=2)  # fmt: skip
    assert private_ip(other) in lab.role(active)["replication"]["master_host"]
    # The booted node loaded the ban again (its loader reads the table at start).
    lab.wait_for(f"the ban on {active} after its boot", lambda: banned_on(lab, active, STRANGER),
                 timeout=10, interval=0.5)  # fmt: skip


# Runs in the client: ManageSieve logins with wrong passwords from one source address, all at
# once (Dovecot's auth penalty per address then delays them together, not one after another):
# STARTTLS, AUTHENTICATE PLAIN, the answer. Prints each attempt's send time and answer.
SIEVE_GUESS = r"""
import base64, json, socket, ssl, sys, threading, time
vip, ca, src, user, tries = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
ctx = ssl.create_default_context(cafile=ca)
results = []

def read_response(f):
    while True:
        line = f.readline()
        if not line or line.startswith((b"OK", b"NO", b"BYE")):
            return line

def guess(i):
    try:
        raw = socket.create_connection((vip, 4190), 5, source_address=(src, 0))
        raw.settimeout(40)
        f = raw.makefile("rb")
        read_response(f)
        raw.sendall(b"STARTTLS\r\n")
        read_response(f)
        s = ctx.wrap_socket(raw, server_hostname=vip)
        f = s.makefile("rb")
        read_response(f)
        plain = base64.b64encode(b"\0%s\0wrong-%d" % (user.encode(), i))
        sent = time.time()
        s.sendall(b'AUTHENTICATE "PLAIN" "%s"\r\n' % plain)
        results.append((sent, read_response(f).decode(errors="replace").strip()))
        s.close()
    except OSError as e:
        results.append((time.time(), f"error {type(e).__name__}: {e}"))

threads = [threading.Thread(target=guess, args=(i,)) for i in range(tries)]
for th in threads:
    th.start()
for th in threads:
    th.join()
print(json.dumps(sorted(results)))
"""


def test_c2_guessing_over_managesieve_gets_banned_too(lab: Lab, stranger: tuple[str, str]) -> None:
    """Wrong passwords over ManageSieve (4190, STARTTLS) count in the dovecot jail as IMAP's do:
    the stranger is banned on every node within BAN_SERVER_AIM_S of its banMaxRetry-th failure
    in the log."""
    unban_everywhere(lab, STRANGER)
    max_retry = lab.stack_config("dc1").ban_max_retry
    user = lab.new_mailbox(DOMAIN, "sv")
    active = holder(lab)
    proc = lab.client(sys.executable, "-c", SIEVE_GUESS, VIP1, lab.ca, STRANGER, user[0],
                      str(max_retry))  # fmt: skip
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    answers = [a for _, a in results]
    assert len(answers) == max_retry and all(a.startswith("NO") for a in answers), answers
    logged = failure_logged_at(lab, active, STRANGER, results[0][0], max_retry)
    login = lab.exec(active, "journalctl", "-u", "dovecot.service", "--no-pager", "-o", "cat",
                     f"--since=@{int(results[0][0]) - 1}").stdout  # fmt: skip
    # The failures were ManageSieve's: its login process logged the stranger's sessions.
    sieve = [ln for ln in login.splitlines() if "managesieve-login" in ln and STRANGER in ln]
    assert sieve, login[-2000:]
    lab.wait_for("the ban on every node",
                 lambda: all(banned_on(lab, h, STRANGER) for h in HOSTS),
                 timeout=BAN_SERVER_AIM_S * 3, interval=0.25)  # fmt: skip
    took = time.time() - logged
    print(
        f"managesieve guesses from {STRANGER}: the {max_retry}th failure logged "
        f"{logged - results[-1][0]:+.2f}s after the last send; banned everywhere {took:.2f}s "
        "after it (polled every 0.25 s)"
    )
    assert took < BAN_SERVER_AIM_S, took
    status = lab.exec(active, "fail2ban-client", "status", "dovecot").stdout
    assert STRANGER in status, status
    unban_everywhere(lab, STRANGER)


def test_the_ban_loader_runs_on_every_node(lab: Lab) -> None:
    """A service (no cron line): active, and its last start was not a crash loop."""
    for host in HOSTS:
        shown = lab.exec(host, "systemctl", "show", f"{fail2ban.LOADER_UNIT}.service",
                         "-p", "ActiveState", "-p", "NRestarts").stdout  # fmt: skip
        assert "ActiveState=active\n" in shown and "NRestarts=0\n" in shown, (host, shown)


def test_admin_addresses_are_never_banned(lab: Lab) -> None:
    for host in HOSTS:
        for jail in fail2ban.JAILS:
            out = lab.exec(host, "fail2ban-client", "get", jail.name, "ignoreip").stdout
            ignored = {line.lstrip("|`- ").strip() for line in out.splitlines()[1:]}
            assert {ADMIN, A.client_address6(), private_ip(host)} <= ignored, (host, out)
            # Every node's mesh address (its syncs and ssh to the others come from it).
            nets = [ipaddress.ip_network(c, strict=False) for c in ignored if "/" in c]
            for node in HOSTS:
                mine = ipaddress.ip_address(mesh_ip(node))
                assert any(mine in n for n in nets), (host, node, out)


def test_security_steps_run_again_change_nothing(lab: Lab) -> None:
    """The firewall load, the ban table and every file of these services, run a second time on
    a node as the plan has them: no change. (The reload steps run only when a file they watch
    changed: the appliers skip them by digest, as every service's.)"""
    host = "dc1-svr2"
    plan = build_host_plan(lab_topology("dc1"), host, load_secrets(), "lab")
    mine = {firewall.LOAD_STEP, "firewall.boot", fail2ban.TABLE_STEP}
    owned = ("/etc/nftables", "/etc/fail2ban/", fail2ban.BANS_SCRIPT, fail2ban.BANS_CONFIG,
             units.unit_path(f"{fail2ban.LOADER_UNIT}.service"), ratelimit.CONF)  # fmt: skip
    steps = [s for s in plan.steps
             if s.name in mine or (s.file and s.file.path.startswith(owned))]  # fmt: skip
    assert len(steps) >= 9, [s.name for s in steps]
    for step in steps:
        out = lab.exec(host, "bash", "-c", "set -euo pipefail\n" + step.script, input=step.stdin)
        assert CHANGED_MARK not in out.stdout, (step.name, out.stdout)
