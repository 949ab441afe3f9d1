"""End to end, from the client ("the internet"): what users and foreign mail servers do.

Each test uses unique subjects and polls (IMAP, DNS) instead of sleeping; TLS is verified
against the cluster CA, so a pass also proves the certificates users see.
"""

from __future__ import annotations

import json
import re
import secrets
import sys
import time
from typing import Any

import pytest

from cluster.lab.driver import Lab
from cluster.lab.model import lab_topology
from cluster.lab.secrets import load_secrets

DOMAIN = "example.com"


@pytest.fixture(scope="module")
def user(lab: Lab, vip: str) -> tuple[str, str]:
    return lab.new_mailbox(DOMAIN, "u")


def _send(lab: Lab, vip: str, *args: str) -> dict[str, Any]:
    return lab.clientlib("send", "--host", vip, "--ca", lab.ca, *args)


def _submit(
    lab: Lab,
    vip: str,
    login: tuple[str, str],
    *,
    sender: str,
    to: str,
    subject: str,
    starttls: bool = True,
) -> dict[str, Any]:
    """A message over submission (587) with AUTH as ``login`` (user, password)."""
    tls = ["--starttls"] if starttls else []
    return _send(
        lab, vip, "--port", "587", *tls, "--user", login[0], "--password", login[1],
        "--sender", sender, "--to", to, "--subject", subject,
    )  # fmt: skip


def _wait_imap(lab: Lab, vip: str, user: tuple[str, str], subject: str) -> dict[str, Any]:
    return lab.clientlib(
        "wait-imap",
        "--host",
        vip,
        "--ca",
        lab.ca,
        "--user",
        user[0],
        "--password",
        user[1],
        "--subject",
        subject,
        "--timeout",
        "30",
    )


def test_submission_starttls_auth_then_imaps(
    lab: Lab, vip: str, user: tuple[str, str], unique: str
) -> None:
    sent = _submit(lab, vip, user, sender=user[0], to=user[0], subject=unique)
    assert sent["ok"], sent
    got = _wait_imap(lab, vip, user, unique)
    assert got["ok"], got


def test_inbound_from_a_foreign_server_on_port_25(
    lab: Lab, vip: str, user: tuple[str, str], unique: str
) -> None:
    sent = _send(
        lab,
        vip,
        "--port",
        "25",
        "--sender",
        "someone@example.net",
        "--to",
        user[0],
        "--subject",
        unique,
    )
    assert sent["ok"], sent
    got = _wait_imap(lab, vip, user, unique)
    assert got["ok"], got


def test_relaying_without_auth_is_refused(lab: Lab, vip: str, unique: str) -> None:
    sent = _send(
        lab,
        vip,
        "--port",
        "25",
        "--sender",
        "someone@example.net",
        "--to",
        "victim@example.org",
        "--subject",
        unique,
    )
    assert not sent["ok"]
    # 454 (Postfix's defer_unauth_destination) or 554: either way the message is not taken.
    assert sent["smtp_code"] is not None and 400 <= sent["smtp_code"] < 600, sent
    assert "relay" in sent["error"].lower(), sent


def test_wrong_password_is_refused(lab: Lab, vip: str, user: tuple[str, str], unique: str) -> None:
    sent = _submit(
        lab, vip, (user[0], "not-" + user[1]), sender=user[0], to=user[0], subject=unique
    )
    assert not sent["ok"]
    assert sent["smtp_code"] == 535, sent


def test_sending_as_another_user_is_refused(
    lab: Lab, vip: str, user: tuple[str, str], unique: str
) -> None:
    sent = _submit(
        lab,
        vip,
        user,
        sender=f"postmaster@{DOMAIN}",
        to="friend@example.org",
        subject=unique,
    )
    assert not sent["ok"]
    assert sent["smtp_code"] is not None and 500 <= sent["smtp_code"] < 600, sent


# Runs in the client: the EHLO keywords of submission (587) before and after STARTTLS.
EHLO_FEATURES = r"""
import json, smtplib, ssl, sys
s = smtplib.SMTP(sys.argv[1], 587, local_hostname="client.example.net", timeout=30)
s.ehlo()
plain = dict(s.esmtp_features)
s.starttls(context=ssl.create_default_context(cafile=sys.argv[2]))
s.ehlo()
print(json.dumps({"plain": plain, "tls": dict(s.esmtp_features)}))
s.quit()
"""


def test_submission_requires_tls_before_auth(
    lab: Lab, vip: str, user: tuple[str, str], unique: str
) -> None:
    sent = _submit(lab, vip, user, sender=user[0], to=user[0], subject=unique, starttls=False)
    # smtplib's own refusal to log in: the server's EHLO (the session works) listed no AUTH.
    assert not sent["ok"], "AUTH was offered without STARTTLS"
    assert sent["error"] == (
        "SMTPNotSupportedError: SMTP AUTH extension not supported by server."
    ), sent
    # The same session with STARTTLS lists AUTH: it is offered after TLS, and only then.
    proc = lab.client(sys.executable, "-c", EHLO_FEATURES, vip, lab.ca)
    features = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "starttls" in features["plain"] and "auth" not in features["plain"], features
    assert "PLAIN" in features["tls"].get("auth", "").split(), features


# -- DNS -------------------------------------------------------------------------------------


def _dig(lab: Lab, server: str, name: str, rtype: str, *opts: str) -> str:
    return lab.client("dig", f"@{server}", name, rtype, "+time=2", "+tries=2", *opts).stdout


def _short(lab: Lab, server: str, name: str, rtype: str) -> list[str]:
    return sorted(_dig(lab, server, name, rtype, "+short").split("\n")[:-1])


def _txt(lab: Lab, server: str, name: str) -> str:
    """A TXT record's strings joined, as resolvers hand them to SPF/DKIM/DMARC checkers."""
    return "".join(re.findall(r'"([^"]*)"', _dig(lab, server, name, "TXT", "+short")))


def test_dns_records_from_the_client(lab: Lab, vip: str) -> None:
    topo = lab_topology("dc1")
    assert _short(lab, vip, DOMAIN, "MX") == [f"10 mail.{DOMAIN}."]
    assert _short(lab, vip, f"mail.{DOMAIN}", "A") == [vip]
    spf = _txt(lab, vip, DOMAIN)
    assert spf.startswith("v=spf1 ") and spf.endswith(" -all") and f"ip4:{vip}" in spf
    dkim = _txt(lab, vip, f"mail._domainkey.{DOMAIN}")
    assert dkim == f"v=DKIM1; k=rsa; p={load_secrets().dkim_public_key_b64}"
    dmarc = _txt(lab, vip, f"_dmarc.{DOMAIN}")
    assert dmarc.startswith(f"v=DMARC1; p={topo.config.dmarc_policy};"), dmarc


def test_master_and_slave_serve_the_same_serial(lab: Lab, vip: str) -> None:
    st = lab.status()
    servers = [info["shared_ip"] for info in st["dcs"].values()]

    def same() -> list[str] | None:
        serials = [_short(lab, s, DOMAIN, "SOA") for s in servers]
        ok = all(serials) and len({tuple(x) for x in serials}) == 1
        return serials[0] if ok else None

    soa = lab.wait_for("both data centres to serve the same SOA", same, timeout=60)
    assert soa[0].split()[2].isdigit()


def test_recursion_is_refused(lab: Lab, vip: str) -> None:
    out = _dig(lab, vip, "www.debian.org", "A")
    assert "status: REFUSED" in out, out
    assert not re.search(r"flags:[^;]* ra[ ;]", out), "the server offers recursion"


# -- Web -------------------------------------------------------------------------------------


def _get(lab: Lab, url: str, host: str) -> dict[str, Any]:
    return lab.clientlib("http", "--url", url, "--host-header", host, "--ca", lab.ca)


def test_roundcube_login_over_https_on_the_shared_ip(lab: Lab, vip: str) -> None:
    page = _get(lab, f"https://{vip}/", f"webmail.{DOMAIN}")
    assert page["ok"] and page["status"] == 200, {k: page.get(k) for k in ("status", "error")}
    assert "rcmloginuser" in page["body"], "no Roundcube login form"


def test_postfixadmin_over_https_on_the_shared_ip(lab: Lab, vip: str) -> None:
    page = _get(lab, f"https://{vip}/postfixadmin/", f"mail.{DOMAIN}")
    assert page["ok"] and page["status"] == 200, {k: page.get(k) for k in ("status", "error")}
    assert re.search(r"postfix\s*admin", page["body"], re.I), "no Postfix Admin page"


# Runs in the client: one plain-HTTP GET, redirects not followed (clientlib's http follows
# them): its status and Location header.
HTTP_NO_REDIRECT = r"""
import http.client, json, sys
conn = http.client.HTTPConnection(sys.argv[1], 80, timeout=30)
conn.request("GET", sys.argv[3], headers={"Host": sys.argv[2]})
resp = conn.getresponse()
print(json.dumps({"status": resp.status, "location": resp.getheader("Location")}))
"""


def test_plain_http_is_not_serving_webmail(lab: Lab, vip: str) -> None:
    """Port 80 answers, and only with Apache's permanent redirect to the same page over
    HTTPS (ACME's /.well-known/ aside)."""
    host = f"webmail.{DOMAIN}"
    proc = lab.client(sys.executable, "-c", HTTP_NO_REDIRECT, vip, host, "/?_task=login")
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got == {"status": 301, "location": f"https://{host}/?_task=login"}, got


# -- Accounts --------------------------------------------------------------------------------


def test_new_mailbox_usable_within_two_seconds(lab: Lab, vip: str) -> None:
    address = f"n{secrets.token_hex(4)}@{DOMAIN}"
    password = "P" + secrets.token_hex(12)
    t0 = time.monotonic()
    lab.run("mailbox", "add", address, password)
    created = time.monotonic()
    got = lab.clientlib(
        "login",
        "--host",
        vip,
        "--ca",
        lab.ca,
        "--user",
        address,
        "--password",
        password,
        "--timeout",
        "2",
        "--interval",
        "0.05",
    )
    assert got["ok"], got
    assert got["seconds"] <= 2.0
    print(json.dumps({"mailbox_add_s": created - t0, "usable_after_s": got["seconds"]}))
