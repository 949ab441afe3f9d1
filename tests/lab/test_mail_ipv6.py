"""Dual stack, from the client ("the internet", 2001:db8:c::100): every public service on the
active data centre's shared IPv6, and the shared IPv6 moving with the shared IPv4 in arp mode,
on a crash and on a planned standby.

TLS is verified against the cluster CA and the address connected to, so a pass also proves that
the certificate names the shared IPv6. Runs after the IPv4 mail tests and before the drills
(alphabetical order); leaves the lab as it found it: the same holder, every host up.
"""

from __future__ import annotations

import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from cluster.lab import addresses as A
from cluster.lab.driver import Background, Lab, private_ip

DOMAIN = "example.com"
DC = "dc1"
HOSTS = ("dc1-svr1", "dc1-svr2")
VIP6 = str(A.lab_dc_addresses(DC).shared_ipv6)
CLIENT6 = A.client_address6()


# -- helpers (the lab driver's, plus what IPv6 needs) ----------------------------------------
def holds_v6(lab: Lab, host: str) -> bool:
    """Whether ``host`` has the shared IPv6 on its LAN interface (asked inside the host)."""
    out = lab.exec(host, "ip", "-o", "-6", "addr", "show", "dev", A.INTERFACE, check=False)
    return f" {VIP6}/" in out.stdout


def v6_holders(lab: Lab) -> list[str]:
    return [h for h in HOSTS if holds_v6(lab, h)]


def wait_serving(lab: Lab, host: str, timeout: float = 60) -> None:
    """``host`` holds both shared IPs and is the active node."""

    def ok() -> bool:
        r = lab.role(host, check=False)
        return bool(r) and r.get("role") == "active" and holds_v6(lab, host)

    lab.wait_for(f"{host} to serve on both shared IPs", ok, timeout=timeout, interval=0.5)


def wait_standby(lab: Lab, host: str, master: str, timeout: float = 90) -> None:
    """``host`` is back as the standby: Heartbeat up, a replica of ``master``, no shared IP of
    either family."""

    def ok() -> bool:
        r = lab.role(host, check=False)
        if not r:
            return False
        rep = r["replication"]
        return (
            r["heartbeat_running"] and not r["vip_held"] and not holds_v6(lab, host)
            and rep["master_host"] == master and rep["io_running"] == "Yes"
        )  # fmt: skip

    lab.wait_for(f"{host} to rejoin as the standby", ok, timeout=timeout, interval=1)


def smtp_banner(lab: Lab, host: str, port: int = 25) -> str:
    code = (
        "import smtplib,sys; s=smtplib.SMTP(sys.argv[1],int(sys.argv[2]),timeout=5); "
        "print(s.ehlo()[1].decode().splitlines()[0]); s.quit()"
    )
    return lab.client(sys.executable, "-c", code, host, str(port)).stdout.strip()


def dig(lab: Lab, server: str, name: str, rtype: str, *opts: str) -> str:
    return lab.client("dig", f"@{server}", name, rtype, "+time=2", "+tries=2", *opts).stdout


def received_headers(lab: Lab, host: str, user: str, subject: str) -> str:
    """The Received headers of the message with ``subject`` in ``user``'s INBOX, read on the
    host: which address the message really came from."""
    out = lab.exec(host, "doveadm", "fetch", "-u", user, "hdr", "mailbox", "INBOX",
                   "header", "Subject", subject).stdout  # fmt: skip
    return "\n".join(re.findall(r"^Received:.*(?:\n[ \t].*)*", out, re.M))


def wait_read(lab: Lab, user: tuple[str, str], subject: str) -> dict[str, Any]:
    """IMAPS over IPv6, login as ``user``, until the message with ``subject`` is there."""
    return lab.clientlib("wait-imap", "--host", VIP6, "--ca", lab.ca, "--user", user[0],
                         "--password", user[1], "--subject", subject,
                         "--timeout", "30")  # fmt: skip


def probe(lab: Lab, host: str, user: tuple[str, str]) -> Background:
    """From now: the first SMTP 220 and the first IMAPS login on ``host`` (clientlib probe)."""
    return lab.start_clientlib("probe", "--host", host, "--ca", lab.ca, "--user", user[0],
                               "--password", user[1], "--timeout", "60")  # fmt: skip


def watch(lab: Lab, host: str, port: int = 25) -> Background:
    stop = Path(tempfile.mkdtemp()) / "stop"
    return lab.start_clientlib("watch", "--host", host, "--port", str(port),
                               "--interval", "0.05", "--stop", str(stop),
                               stop_file=stop)  # fmt: skip


@pytest.fixture(scope="module")
def holder(lab: Lab) -> str:
    """dc1's serving node once it holds both shared IPs (Heartbeat takes ~12 s at first)."""

    def found() -> str | None:
        both = [h for h in HOSTS if lab.role(h, check=False).get("vip_held") and holds_v6(lab, h)]
        return both[0] if len(both) == 1 else None

    return str(lab.wait_for("dc1's shared IPv4 and IPv6 on one node", found, timeout=90))


@pytest.fixture(scope="module")
def user(lab: Lab, holder: str) -> tuple[str, str]:
    return lab.new_mailbox(DOMAIN, "six")


# -- every public service over IPv6 ------------------------------------------------------------
def test_only_the_holder_has_the_shared_ipv6(lab: Lab, holder: str) -> None:
    assert v6_holders(lab) == [holder]
    # The standby's listeners are bound to the address too (ip_nonlocal_bind), so a takeover
    # needs no restart: ready, but unreachable while it does not hold it.
    other = HOSTS[1] if holder == HOSTS[0] else HOSTS[0]
    listening = lab.exec(other, "ss", "-Hltn").stdout
    for port in (25, 587, 465):
        assert f"[{VIP6}]:{port} " in listening, (other, port, listening)


def test_smtp_25_delivers_a_message_over_ipv6(
    lab: Lab, holder: str, user: tuple[str, str], unique: str
) -> None:
    assert smtp_banner(lab, VIP6).startswith(f"mail.{DOMAIN}")
    sent = lab.clientlib("send", "--host", VIP6, "--port", "25", "--sender",
                         "someone@example.net", "--to", user[0], "--subject", unique)  # fmt: skip
    assert sent["ok"], sent
    got = wait_read(lab, user, unique)
    assert got["ok"], got
    # It really came in over IPv6, from the client's address (Postfix writes "IPv6:").
    assert f"[IPv6:{CLIENT6}]" in received_headers(lab, holder, user[0], unique)


def test_submission_587_with_auth_and_imaps_read_over_ipv6(
    lab: Lab, holder: str, user: tuple[str, str], unique: str
) -> None:
    sent = lab.send(VIP6, user, unique)  # STARTTLS verified against the IPv6 address, AUTH
    assert sent["ok"], sent
    got = wait_read(lab, user, unique)
    assert got["ok"], got
    assert f"[IPv6:{CLIENT6}]" in received_headers(lab, holder, user[0], unique)
    # Without TLS there is no AUTH on IPv6 either.
    plain = lab.clientlib("send", "--host", VIP6, "--port", "587", "--user", user[0],
                          "--password", user[1], "--sender", user[0], "--to", user[0],
                          "--subject", unique + "-plain")  # fmt: skip
    assert not plain["ok"], plain


def test_imaps_login_over_ipv6(lab: Lab, user: tuple[str, str]) -> None:
    got = lab.clientlib("login", "--host", VIP6, "--ca", lab.ca, "--user", user[0],
                        "--password", user[1], "--timeout", "10")  # fmt: skip
    assert got["ok"], got
    wrong = lab.clientlib("login", "--host", VIP6, "--ca", lab.ca, "--user", user[0],
                          "--password", "not-" + user[1], "--timeout", "1")  # fmt: skip
    assert not wrong["ok"]


def _get(lab: Lab, path: str, host: str) -> dict[str, Any]:
    return lab.clientlib("http", "--url", f"https://[{VIP6}]{path}", "--host-header", host,
                         "--ca", lab.ca)  # fmt: skip


def test_roundcube_over_https_on_ipv6(lab: Lab, holder: str) -> None:
    page = _get(lab, "/", f"webmail.{DOMAIN}")
    assert page["ok"] and page["status"] == 200, {k: page.get(k) for k in ("status", "error")}
    assert "rcmloginuser" in page["body"], "no Roundcube login form"


def test_mta_sts_policy_over_https_on_ipv6(lab: Lab, holder: str) -> None:
    page = _get(lab, "/.well-known/mta-sts.txt", f"mta-sts.{DOMAIN}")
    assert page["ok"] and page["status"] == 200, {k: page.get(k) for k in ("status", "error")}
    assert page["body"].startswith("version: STSv1"), page["body"][:200]
    assert f"mx: mail.{DOMAIN}" in page["body"]


def test_dns_answers_aaaa_over_ipv6(lab: Lab, holder: str) -> None:
    for name in (f"mail.{DOMAIN}", f"webmail.{DOMAIN}", f"mta-sts.{DOMAIN}", f"ns1.{DOMAIN}",
                 DOMAIN):  # fmt: skip
        assert dig(lab, VIP6, name, "AAAA", "+short").split() == [VIP6], name
    # The standby data centre's name and its nodes' own addresses, and SPF with ip6:.
    dc2_v6 = str(A.lab_dc_addresses("dc2").shared_ipv6)
    assert dig(lab, VIP6, f"dc2.{DOMAIN}", "AAAA", "+short").split() == [dc2_v6]
    node6 = A.lab_dc_addresses(DC).nodes["svr1"].public_ipv6
    assert dig(lab, VIP6, f"dc1-svr1.{DOMAIN}", "AAAA", "+short").split() == [node6]
    spf = "".join(re.findall(r'"([^"]*)"', dig(lab, VIP6, DOMAIN, "TXT", "+short")))
    assert f"ip6:{VIP6}" in spf and f"ip6:{dc2_v6}" in spf, spf
    # Over TCP too (zone transfers and large answers use it), and authoritative.
    full = dig(lab, VIP6, f"mail.{DOMAIN}", "AAAA", "+tcp")
    assert re.search(r"flags:[^;]* aa[ ;]", full), full


# -- the shared IPv6 moves with the shared IPv4 ------------------------------------------------
def test_crash_the_holder_then_standby_back_ipv6_follows(
    lab: Lab, holder: str, user: tuple[str, str], unique: str
) -> None:
    """arp mode: crash the holder; its peer answers on the shared IPv6 (SMTP 220, IMAPS login,
    a message delivered). Then the crashed node boots and rejoins, and a planned standby hands
    both shared IPs back: the lab ends as it began."""
    peer = HOSTS[1] if holder == HOSTS[0] else HOSTS[0]
    v4 = A.lab_dc_addresses(DC).shared_ipv4
    crashed_at = time.time()
    lab.crash_now(holder)
    # Started after the crash (the holder is dark from then on): every answer is the peer's.
    probes = {"v6": probe(lab, VIP6, user), "v4": probe(lab, v4, user)}
    got = {family: p.result(timeout=120) for family, p in probes.items()}
    figures = {
        f"crash_to_{k}_{family}": round(r[f"{k}_at"] - crashed_at, 2)
        for family, r in got.items()
        for k in ("smtp", "imap")
        if r.get(f"{k}_at")
    }
    print(f"arp crash takeover (s): {figures}")
    for family, r in got.items():
        assert r["ok"] and r["imap_at"], (family, r)
    assert v6_holders(lab) == [peer]
    # IPv6 follows IPv4 closely: its address is added right after the IPv4 one, before the role.
    # (Measured on a machine at load 30: IPv4 15.2 s, IPv6 18.2 s; the gap is the resource
    # scripts' run time. The absolute times are Heartbeat's deadtime and the machine's load.)
    assert figures["crash_to_smtp_v6"] - figures["crash_to_smtp_v4"] < 10, figures
    assert figures["crash_to_imap_v6"] - figures["crash_to_imap_v4"] < 10, figures
    sent = lab.send(VIP6, user, unique)
    assert sent["ok"], sent
    assert wait_read(lab, user, unique)["ok"]

    # The crashed node boots without either shared IP and rejoins as the standby.
    lab.run("boot", holder)
    wait_standby(lab, holder, private_ip(peer))
    assert v6_holders(lab) == [peer]

    # Planned standby: the peer releases (IPv6 first), the old holder takes both back.
    watcher = watch(lab, VIP6)
    time.sleep(1)
    lab.exec(peer, "/usr/share/heartbeat/hb_standby", "all", check=False)
    wait_serving(lab, holder)
    lab.wait_for("IMAPS over IPv6 after the switchover", lambda: lab.clientlib(
        "login", "--host", VIP6, "--ca", lab.ca, "--user", user[0], "--password", user[1],
        "--timeout", "2")["ok"], timeout=30)  # fmt: skip
    time.sleep(1)
    outage = watcher.result(timeout=60)
    print(
        f"arp planned switchover over IPv6: longest outage {outage['longest_outage']}s, "
        f"{outage['failed']} of {outage['attempts']} attempts unanswered"
    )
    assert v6_holders(lab) == [holder]
    wait_standby(lab, peer, private_ip(holder))
    back = lab.send(VIP6, user, unique + "-back")
    assert back["ok"], back
    assert wait_read(lab, user, unique + "-back")["ok"]
