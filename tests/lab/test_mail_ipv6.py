"""Dual stack, from the client ("the internet", 2001:db8:c::100): every public service on the
active data centre's shared IPv6, in the lab's default method (bgp: the holder announces both
shared addresses). The shared IPv6 moving with the shared IPv4 on a crash and on a planned
switchover is measured by the drills, per family and per method (tests/lab/test_y_drills.py:
drill 1 crash in bgp, drill 6 switchover, drill 7 crash in arp).

TLS is verified against the cluster CA and the address connected to, so a pass also proves that
the certificate names the shared IPv6. Runs after the IPv4 mail tests and before the drills
(alphabetical order); leaves the lab as it found it: the same holder, every host up.
"""

from __future__ import annotations

import re
import sys
from typing import Any

import pytest

from cluster.lab import addresses as A
from cluster.lab.driver import Lab

DOMAIN = "example.com"
DC = "dc1"
HOSTS = ("dc1-svr1", "dc1-svr2")
VIP6 = str(A.lab_dc_addresses(DC).shared_ipv6)
CLIENT6 = A.client_address6()


# -- helpers (the lab driver's, plus what IPv6 needs) ----------------------------------------
def holds_v6(lab: Lab, host: str) -> bool:
    """Whether ``host`` serves the shared IPv6: in bgp it announces it (the address is on lo of
    both nodes), in arp it has it on its LAN interface (asked inside the host)."""
    if lab.shared_ip_method(DC) == "bgp":
        return bool(lab.role(host, check=False).get("vip_held"))
    out = lab.exec(host, "ip", "-o", "-6", "addr", "show", "dev", A.INTERFACE, check=False)
    return f" {VIP6}/" in out.stdout


def v6_holders(lab: Lab) -> list[str]:
    return [h for h in HOSTS if holds_v6(lab, h)]


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
    if lab.shared_ip_method(DC) == "bgp":
        lab.wait_routed(DC, holder)
        assert lab.status()["dcs"][DC]["route_servers_prefer"]["ipv6"] == holder
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
    # Without TLS there is no AUTH on IPv6 either: smtplib finds no AUTH in the EHLO answer of
    # a session that works (not a refused or failed connection).
    plain = lab.clientlib("send", "--host", VIP6, "--port", "587", "--user", user[0],
                          "--password", user[1], "--sender", user[0], "--to", user[0],
                          "--subject", unique + "-plain")  # fmt: skip
    assert plain["error"] == (
        "SMTPNotSupportedError: SMTP AUTH extension not supported by server."
    ), plain


def test_imaps_login_over_ipv6(lab: Lab, user: tuple[str, str]) -> None:
    got = lab.clientlib("login", "--host", VIP6, "--ca", lab.ca, "--user", user[0],
                        "--password", user[1], "--timeout", "10")  # fmt: skip
    assert got["ok"], got
    wrong = lab.clientlib("login", "--host", VIP6, "--ca", lab.ca, "--user", user[0],
                          "--password", "not-" + user[1], "--timeout", "1")  # fmt: skip
    # Dovecot's own answer to the password, not a failed connection or TLS handshake.
    assert not wrong["ok"] and "[AUTHENTICATIONFAILED]" in wrong["error"], wrong


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
                 f"autoconfig.{DOMAIN}", f"autodiscover.{DOMAIN}", DOMAIN):  # fmt: skip
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
