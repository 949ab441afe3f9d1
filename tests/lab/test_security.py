"""Security (issue 10): the firewalls, brute-force bans and the sending limit, done to the lab.

A "stranger" is a second client address outside ``adminCidrs`` (the lab's admin is the client's
own 192.0.2.100 and 2001:db8:c::100, cluster/lab/model.py): 192.0.2.1xx and 2001:db8:c::1xx,
added to the client's interface for this module and removed after it.

Runs after the mail tests and before the drills (alphabetical order). The ban test ends with a
crash of the active node: dc1's shared IP stays on svr2 (the drills move it as they need), and
every ban the module caused is lifted on every node.
"""

from __future__ import annotations

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
from cluster.lab.driver import Lab, private_ip, public_ip, shared_ip
from cluster.lab.model import LAB_SUBMISSION_LIMIT, lab_topology
from cluster.lab.secrets import load_secrets
from cluster.plan import CHANGED_MARK
from cluster.services import fail2ban, firewall, ratelimit

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
PUBLIC_TCP = {25, 53, 80, 443, 465, 587, 993}
INTERNAL_TCP = {ports.MARIADB_PORT, ports.DOVEADM_PORT}
LOOPBACK_ONLY = {8053, ratelimit.PORT, 11332, 11333, 11334}
SCAN_PORTS = sorted({*range(1, 1025), 3306, 4190, 5000, 5001, 8053, 8080, ratelimit.PORT,
                     11332, 11333, 11334, 12345, 873, 694, ports.MESH_PORT})  # fmt: skip

# Runs in the client or a host: TCP connect to every (address, port), from a chosen source
# address, at most PARALLEL at once. "filtered" = no answer (a firewall drop), "refused" = RST.
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
            await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (host, port)),
                                   timeout)
            return host, port, "open"
        except ConnectionRefusedError:
            return host, port, "refused"
        except (asyncio.TimeoutError, OSError):
            return host, port, "filtered"
        finally:
            sock.close()
async def main():
    sem = asyncio.Semaphore(500)
    got = await asyncio.gather(*(one(sem, h, p) for h in targets for p in ports))
    out = {h: {"open": [], "refused": []} for h in targets}
    for h, p, state in got:
        if state != "filtered":
            out[h][state].append(p)
    print(json.dumps(out))
asyncio.run(main())
"""


def probe_from_client(
    lab: Lab, targets: list[str], port_list: list[int], src4: str, src6: str, timeout: float = 2
) -> dict[str, dict[str, list[int]]]:
    proc = lab.client(sys.executable, "-c", PROBE, src4, src6, json.dumps(targets),
                      json.dumps(port_list), str(timeout))  # fmt: skip
    result: dict[str, dict[str, list[int]]] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def probe_from_host(
    lab: Lab, host: str, targets: list[str], port_list: list[int], timeout: float = 2
) -> dict[str, dict[str, list[int]]]:
    proc = lab.exec(host, "python3", "-c", PROBE, "", "", json.dumps(targets),
                    json.dumps(port_list), str(timeout))  # fmt: skip
    result: dict[str, dict[str, list[int]]] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def holder(lab: Lab) -> str:
    found = lab.wait_for("a holder of dc1's shared IP",
                         lambda: next(iter(lab.holders(DC1)), None), timeout=60)  # fmt: skip
    return found


def unban_everywhere(lab: Lab, address: str) -> None:
    """Lift a ban on every node: the writer first (the table), then each node's fail2ban and
    set (a node that banned it as a standby forgets its pending record too)."""
    writer = holder(lab)
    for host in (writer, *(h for h in HOSTS if h != writer)):
        lab.exec(host, "bash", "-c", f"fail2ban-client unban {address} >/dev/null 2>&1; "
                 f"{fail2ban.BANS_SCRIPT} unban {address} test", check=False)  # fmt: skip


def banned_on(lab: Lab, host: str, address: str) -> bool:
    out = lab.exec(host, "nft", "list", "set", "inet", firewall.TABLE, firewall.BAN_SET4,
                   check=False).stdout  # fmt: skip
    return address in out


@pytest.fixture(scope="module")
def stranger(lab: Lab) -> Iterator[tuple[str, str]]:
    """Two more client addresses, outside adminCidrs, for this module only."""
    dev = A.INTERFACE
    lab.client("ip", "addr", "add", f"{STRANGER}/{A.PREFIXLEN}", "dev", dev, check=False)
    lab.client("ip", "-6", "addr", "add", f"{STRANGER6}/{A.PREFIXLEN6}", "dev", dev, "nodad",
               check=False)  # fmt: skip
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
    assert {25, 53, 443, 465, 587, 993} <= set(seen[VIP1]["open"]), seen[VIP1]
    for host in HOSTS:
        assert 53 in seen[public_ip(host)]["open"], host


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
    the internal ports answer (the other DC reaches those only over the mesh); the DC peer does
    reach them on the private network; replication from dc1 to dc2 runs."""
    targets = [public_ip(h) for h in DC1] + [VIP1]
    seen = probe_from_host(lab, "dc2-svr1", targets, sorted(INTERNAL_TCP | LOOPBACK_ONLY | {5000}))
    print(f"from dc2-svr1: {seen}")
    for target in targets:
        answered = set(seen[target]["open"]) | set(seen[target]["refused"])
        assert not answered & (LOOPBACK_ONLY | {5000}), (target, answered)
        assert not answered, (target, answered)
    # The DC peer's path: the private network (MariaDB and doveadm listen there and on the mesh).
    peer = probe_from_host(lab, "dc1-svr2", [private_ip("dc1-svr1")], sorted(INTERNAL_TCP))
    assert set(peer[private_ip("dc1-svr1")]["open"]) == INTERNAL_TCP, peer
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
    host = "dc2-svr2"
    before = lab.exec(host, "nft", "list", "table", "inet", firewall.TABLE).stdout
    # Forced: the plan's own re-run would skip (its stamp matches); loading again keeps the sets.
    lab.exec(host, "nft", "-f", firewall.CONF)
    after = lab.exec(host, "nft", "list", "table", "inet", firewall.TABLE).stdout
    assert [line for line in before.splitlines() if "expires" not in line] == [
        line for line in after.splitlines() if "expires" not in line
    ]


# -- (d) the sending limit ----------------------------------------------------------------------
RCPTS = r"""
import json, smtplib, ssl, sys
host, ca, user, password, count = sys.argv[1:5] + [int(sys.argv[5])]
s = smtplib.SMTP(host, 587, timeout=30)
s.starttls(context=ssl.create_default_context(cafile=ca))
s.login(user, password)
s.mail(user)
codes = [s.rcpt(user) for _ in range(count)]
s.rset()
s.mail(user)
after = s.rcpt(user)
s.quit()
print(json.dumps({"codes": [[c, m.decode()] for c, m in codes],
                  "after": [after[0], after[1].decode()]}))
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
    limit = default_rate_limit
    user = lab.new_mailbox(DOMAIN, "rl")
    other = lab.new_mailbox(DOMAIN, "rl")
    proc = lab.client(sys.executable, "-c", RCPTS, VIP1, lab.ca, user[0], user[1],
                      str(limit + 1))  # fmt: skip
    got: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    codes = [c for c, _ in got["codes"]]
    assert codes[:limit] == [250] * limit, codes
    over, text = got["codes"][limit]
    print(f"rate limit: RCPT {limit + 1} -> {over} {text}")
    assert over == 450 and "4.7.1" in text and ratelimit.LOG_TAG in text, (over, text)
    assert f"{limit} recipients per hour" in text
    assert got["after"][0] == 450, got["after"]  # the next message too
    # Another user is not affected.
    proc = lab.client(sys.executable, "-c", RCPTS, VIP1, lab.ca, other[0], other[1], "1")
    assert json.loads(proc.stdout.strip().splitlines()[-1])["codes"][0][0] == 250
    # The line an alert finds (rsyslog may take a moment to write it).
    pattern = f"NOQUEUE: reject: RCPT .*{ratelimit.LOG_TAG}.* from=<{user[0]}>"
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
GUESS = r"""
import json, socket, ssl, sys, time
host, ca, src, user, tries = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
ctx = ssl.create_default_context(cafile=ca)
guesses, other, banned, t0 = 0, [], False, time.monotonic()
for i in range(tries):
    try:  # no answer within 5 s: the firewall drops us
        raw = socket.create_connection((host, 993), 5, source_address=(src, 0))
    except OSError:
        banned = True
        break
    # IMAPS by hand (imaplib cannot choose the source address). A failed LOGIN takes longer
    # each time (Dovecot's auth penalty, up to 15 s): a patient client.
    raw.settimeout(60)
    try:
        s = ctx.wrap_socket(raw, server_hostname=host)
        f = s.makefile("rb")
        f.readline()
        s.sendall(b'a LOGIN "%s" "wrong-%d"\r\n' % (user.encode(), i))
        while True:
            line = f.readline()
            if not line or line.startswith(b"a "):
                break
        if line.startswith(b"a NO"):
            guesses += 1
        else:
            other.append(line.decode(errors="replace"))
        s.sendall(b"b LOGOUT\r\n")
        s.close()
    except OSError as e:
        other.append(repr(e))
print(json.dumps({"guesses": guesses, "banned": banned, "other": other,
                  "seconds": round(time.monotonic() - t0, 1)}))
"""


def test_c_guessing_gets_banned_cluster_wide_and_the_ban_survives_a_takeover(
    lab: Lab, stranger: tuple[str, str], unique: str
) -> None:
    max_retry = 5  # the stack's default banMaxRetry
    user = lab.new_mailbox(DOMAIN, "bf")
    active = holder(lab)
    proc = lab.client(sys.executable, "-c", GUESS, VIP1, lab.ca, STRANGER, user[0], "20")
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"guessing from {STRANGER}: banned after {got['guesses']} guesses in "
          f"{got['seconds']}s (banMaxRetry {max_retry})")  # fmt: skip
    assert got["banned"] and max_retry <= got["guesses"] <= max_retry + 2, got
    # Banned on the active node, in the cluster's table, and loaded by every other node.
    assert banned_on(lab, active, STRANGER)
    table = lab.exec(active, fail2ban.BANS_SCRIPT, "list").stdout
    assert STRANGER in table, table
    for host in HOSTS:
        lab.wait_for(f"the ban on {host}", lambda h=host: banned_on(lab, h, STRANGER),
                     timeout=20, interval=1)  # fmt: skip
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


def test_admin_addresses_are_never_banned(lab: Lab) -> None:
    for host in HOSTS:
        for jail in fail2ban.JAILS:
            out = lab.exec(host, "fail2ban-client", "get", jail.name, "ignoreip").stdout
            ignored = {line.lstrip("|`- ").strip() for line in out.splitlines()[1:]}
            assert {ADMIN, A.client_address6(), private_ip(host)} <= ignored, (host, out)


def test_security_steps_run_again_change_nothing(lab: Lab) -> None:
    """The firewall load, the ban table and every file of these services, run a second time on
    a node as the plan has them: no change. (The reload steps run only when a file they watch
    changed: the appliers skip them by digest, as every service's.)"""
    host = "dc1-svr2"
    plan = build_host_plan(lab_topology("dc1"), host, load_secrets(), "lab")
    mine = {firewall.LOAD_STEP, "firewall.boot", fail2ban.TABLE_STEP}
    owned = ("/etc/nftables", "/etc/fail2ban/", fail2ban.BANS_SCRIPT,
             "/etc/cron.d/mailcluster-bans", ratelimit.CONF)  # fmt: skip
    steps = [s for s in plan.steps
             if s.name in mine or (s.file and s.file.path.startswith(owned))]  # fmt: skip
    assert len(steps) >= 9, [s.name for s in steps]
    for step in steps:
        out = lab.exec(host, "bash", "-c", "set -euo pipefail\n" + step.script, input=step.stdin)
        assert CHANGED_MARK not in out.stdout, (step.name, out.stdout)
