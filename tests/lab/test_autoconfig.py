"""Client autoconfiguration, from the client as a mail client finds it: the documents over HTTPS
on the active shared IP, TLS verified against the lab CA for the name the client asks (SNI),
and the SRV records from the cluster's DNS. All requests go in one client process and all DNS
questions in one dig, so the file costs a few seconds."""

from __future__ import annotations

import json
import plistlib
import sys
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from cluster.lab.driver import Lab

DOMAIN = "example.com"
MAIL = f"mail.{DOMAIN}"
POX = "{http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a}"

# Runs in the client: each request on a new TLS connection to the shared IP with the name as
# SNI and Host, verified against the lab CA; prints status, content type and body of each.
FETCH = r"""
import http.client, json, socket, ssl, sys
vip, ca, requests = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
ctx = ssl.create_default_context(cafile=ca)
out = []
for name, method, path, body in requests:
    conn = http.client.HTTPSConnection(name, 443, timeout=10, context=ctx)
    raw = socket.create_connection((vip, 443), timeout=10)
    conn.sock = ctx.wrap_socket(raw, server_hostname=name)
    conn.request(method, path, body=body, headers={"Content-Type": "text/xml"} if body else {})
    resp = conn.getresponse()
    out.append({"status": resp.status, "type": resp.getheader("Content-Type", ""),
                "body": resp.read().decode()})
    conn.close()
print(json.dumps(out))
"""


def _pox_request(address: str) -> str:
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n<Autodiscover xmlns="http://schemas.microsoft'
        '.com/exchange/autodiscover/outlook/requestschema/2006">\n  <Request>\n'
        f"    <EMailAddress>{address}</EMailAddress>\n    <AcceptableResponseSchema>http://"
        "schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"
        "</AcceptableResponseSchema>\n  </Request>\n</Autodiscover>\n"
    )


# name: (host, method, path, body)
REQUESTS: dict[str, tuple[str, str, str, str]] = {
    "tb": (f"autoconfig.{DOMAIN}", "GET", "/mail/config-v1.1.xml?emailaddress=a%40example.com", ""),
    "tb_apex": (DOMAIN, "GET", "/.well-known/autoconfig/mail/config-v1.1.xml", ""),
    "tb_mail": (MAIL, "GET", "/.well-known/autoconfig/mail/config-v1.1.xml", ""),
    "pox": (
        f"autodiscover.{DOMAIN}", "POST", "/autodiscover/autodiscover.xml",
        _pox_request(f"Carol@{DOMAIN}"),
    ),
    "pox_caps": (
        f"autodiscover.{DOMAIN}", "POST", "/Autodiscover/Autodiscover.xml",
        _pox_request(f"carol@{DOMAIN}"),
    ),
    "pox_apex": (DOMAIN, "POST", "/autodiscover/autodiscover.xml", _pox_request(f"d@{DOMAIN}")),
    "pox_get": (f"autodiscover.{DOMAIN}", "GET", "/autodiscover/autodiscover.xml", ""),
    "pox_foreign": (
        f"autodiscover.{DOMAIN}", "POST", "/autodiscover/autodiscover.xml",
        _pox_request("carol@example.org"),
    ),
    "apple": (f"autoconfig.{DOMAIN}", "GET", f"/mobileconfig?email=dave%40{DOMAIN}", ""),
    "apple_foreign": (f"autoconfig.{DOMAIN}", "GET", "/mobileconfig?email=dave%40example.org", ""),
    "apple_bad": (
        f"autoconfig.{DOMAIN}", "GET", f"/mobileconfig?email=%3Cb%3E%40{DOMAIN}", ""
    ),
    "apple_none": (f"autoconfig.{DOMAIN}", "GET", "/mobileconfig", ""),
}  # fmt: skip


@pytest.fixture(scope="module")
def got(lab: Lab, vip: str) -> dict[str, dict[str, Any]]:
    proc = lab.client(sys.executable, "-c", FETCH, vip, lab.ca, json.dumps(list(REQUESTS.values())))
    answers = json.loads(proc.stdout.strip().splitlines()[-1])
    return dict(zip(REQUESTS, answers, strict=True))


def _ok(answer: dict[str, Any]) -> str:
    assert answer["status"] == 200, answer
    body: str = answer["body"]
    return body


def test_thunderbird_config(got: dict[str, dict[str, Any]]) -> None:
    body = _ok(got["tb"])
    assert got["tb_apex"]["body"] == got["tb_mail"]["body"] == body
    assert _ok(got["tb_apex"]) and "xml" in got["tb"]["type"]
    provider = ET.fromstring(body).find("emailProvider")
    assert provider is not None and provider.findtext("domain") == DOMAIN
    assert provider.find(".//password") is None  # the format has one; we never fill it
    servers = [
        (s.tag, s.get("type"), s.findtext("hostname"), s.findtext("port"),
         s.findtext("socketType"), s.findtext("username"))
        for s in provider
        if s.tag in ("incomingServer", "outgoingServer")
    ]  # fmt: skip
    assert servers == [
        ("incomingServer", "imap", MAIL, "993", "SSL", "%EMAILADDRESS%"),
        ("outgoingServer", "smtp", MAIL, "587", "STARTTLS", "%EMAILADDRESS%"),
        ("outgoingServer", "smtp", MAIL, "465", "SSL", "%EMAILADDRESS%"),
    ], servers


def _pox(body: str) -> dict[str, dict[str, str]]:
    account = ET.fromstring(body).find(f"{POX}Response/{POX}Account")
    assert account is not None, body
    return {
        p.findtext(f"{POX}Type", ""): {c.tag.removeprefix(POX): c.text or "" for c in p}
        for p in account.findall(f"{POX}Protocol")
    }


def test_outlook_autodiscover(got: dict[str, dict[str, Any]]) -> None:
    for key, login in (("pox", "carol"), ("pox_caps", "carol"), ("pox_apex", "d")):
        answer = got[key]
        protocols = _pox(_ok(answer))
        assert "xml" in answer["type"], answer["type"]
        imap, smtp = protocols["IMAP"], protocols["SMTP"]
        assert (imap["Server"], imap["Port"], imap["Encryption"]) == (MAIL, "993", "SSL"), key
        assert (smtp["Server"], smtp["Port"], smtp["Encryption"]) == (MAIL, "587", "TLS"), key
        assert imap["LoginName"] == smtp["LoginName"] == f"{login}@{DOMAIN}", key
    assert "LoginName" not in _pox(_ok(got["pox_get"]))["IMAP"]
    assert got["pox_foreign"]["status"] == 400, got["pox_foreign"]


def test_apple_profile(got: dict[str, dict[str, Any]]) -> None:
    answer = got["apple"]
    assert answer["type"] == "application/x-apple-aspen-config", answer["type"]
    profile = plistlib.loads(_ok(answer).encode())
    (mail,) = profile["PayloadContent"]
    assert mail["PayloadType"] == "com.apple.mail.managed"
    assert (mail["IncomingMailServerHostName"], mail["IncomingMailServerPortNumber"]) == (MAIL, 993)
    assert (mail["OutgoingMailServerHostName"], mail["OutgoingMailServerPortNumber"]) == (MAIL, 587)
    assert mail["IncomingMailServerUseSSL"] and mail["OutgoingMailServerUseSSL"]
    assert mail["IncomingMailServerUsername"] == f"dave@{DOMAIN}"
    # Apple's password keys are IncomingPassword and OutgoingPassword: neither is there.
    keys = set(profile) | set(mail)
    assert {k for k in keys if "Password" in k} == {"OutgoingPasswordSameAsIncomingPassword"}
    for key in ("apple_foreign", "apple_bad", "apple_none"):
        assert got[key]["status"] == 400, (key, got[key])
        assert "plist" not in got[key]["body"], key


def test_srv_records_from_the_cluster_dns(lab: Lab, vip: str) -> None:
    names = ["_imaps", "_submission", "_submissions", "_imap", "_pop3", "_autodiscover"]
    questions = [q for n in names for q in (f"{n}._tcp.{DOMAIN}", "SRV")]
    questions += [f"autodiscover.{DOMAIN}", "A"]
    out = lab.client(
        "dig", f"@{vip}", "+time=2", "+tries=2", "+noall", "+answer", *questions
    ).stdout
    answers = {(f[0], f[3]): " ".join(f[4:]) for f in (ln.split() for ln in out.splitlines()) if f}
    assert answers[(f"_imaps._tcp.{DOMAIN}.", "SRV")] == f"0 1 993 {MAIL}.", out
    assert answers[(f"_submission._tcp.{DOMAIN}.", "SRV")] == f"0 1 587 {MAIL}.", out
    assert answers[(f"_submissions._tcp.{DOMAIN}.", "SRV")] == f"1 1 465 {MAIL}.", out
    assert answers[(f"_imap._tcp.{DOMAIN}.", "SRV")] == "0 0 0 .", out
    assert answers[(f"_pop3._tcp.{DOMAIN}.", "SRV")] == "0 0 0 .", out
    target = f"autodiscover.{DOMAIN}"
    assert answers[(f"_autodiscover._tcp.{DOMAIN}.", "SRV")] == f"0 1 443 {target}.", out
    assert answers[(f"{target}.", "A")] == vip, out
