"""Client autoconfiguration (cluster/services/autoconfig.py): the documents parsed as clients
parse them (XML, plist), their servers against the port table, the SRV records in the zone, and
the PHP scripts run by the base's own PHP on good and bad addresses."""

from __future__ import annotations

import plistlib
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from rendertools import files, in_base

from cluster.hostplan import build_host_plan
from cluster.material import ClusterSecrets
from cluster.plan import HostPlan
from cluster.services import apache, autoconfig, bind
from cluster.topology import Topology

POX = "{http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a}"


def _servers(xml: str, kind: str) -> list[tuple[str, str, int, str, str, str]]:
    provider = ET.fromstring(xml).find("emailProvider")
    assert provider is not None
    return [
        (
            server.get("type", ""),
            server.findtext("hostname", ""),
            int(server.findtext("port", "0")),
            server.findtext("socketType", ""),
            server.findtext("authentication", ""),
            server.findtext("username", ""),
        )
        for server in provider.findall(kind)
    ]


def test_thunderbird_config(plan: tuple[Topology, HostPlan]) -> None:
    topo, hp = plan
    xml = files(hp)[autoconfig.CONFIG_XML]
    root = ET.fromstring(xml)
    assert root.tag == "clientConfig" and root.get("version") == "1.1"
    assert root.findtext("emailProvider/domain") == topo.domain
    host = topo.mail_host
    cleartext = ("password-cleartext", "%EMAILADDRESS%")
    assert _servers(xml, "incomingServer") == [("imap", host, 993, "SSL", *cleartext)]
    assert _servers(xml, "outgoingServer") == [
        ("smtp", host, 587, "STARTTLS", *cleartext),
        ("smtp", host, 465, "SSL", *cleartext),
    ]
    assert "password>" not in xml.lower()  # no <password> element, ever


def _zone_records(body: str) -> dict[tuple[str, str], list[str]]:
    out: dict[tuple[str, str], list[str]] = {}
    for line in body.splitlines():
        parts = line.split(None, 3)
        if len(parts) == 4 and parts[1] == "IN":
            out.setdefault((parts[0], parts[2]), []).append(parts[3])
    return out


def test_zone_has_srv_records_and_autodiscover(plan: tuple[Topology, HostPlan]) -> None:
    topo, hp = plan
    if not topo.is_dns_master(topo.node(hp.host)):
        assert bind.BODY not in files(hp)  # a secondary's zone comes by transfer
        return
    records = _zone_records(files(hp)[bind.BODY])
    mail = f"{topo.mail_host}."
    assert records[("_imaps._tcp", "SRV")] == [f"0 1 993 {mail}"]
    assert records[("_submission._tcp", "SRV")] == [f"0 1 587 {mail}"]
    assert records[("_submissions._tcp", "SRV")] == [f"1 1 465 {mail}"]
    # RFC 6186 3.4: "." is "not offered" (no plaintext IMAP by default, no POP3 at all).
    for label in ("_imap._tcp", "_pop3._tcp", "_pop3s._tcp"):
        assert records[(label, "SRV")] == ["0 0 0 ."], label
    assert records[("_autodiscover._tcp", "SRV")] == [f"0 1 443 autodiscover.{topo.domain}."]
    # autodiscover answers wherever autoconfig does, in both families.
    for rtype in ("A", "AAAA"):
        assert records[("autodiscover", rtype)] == records[("autoconfig", rtype)], rtype
        assert records[("autodiscover", rtype)] == records[("mail", rtype)], rtype


def test_site_maps_the_urls(plan: tuple[Topology, HostPlan]) -> None:
    topo, hp = plan
    site = files(hp)[apache.SITE]
    assert f"ServerName autoconfig.{topo.domain}" in site
    assert f"ServerAlias autodiscover.{topo.domain}" in site
    # Both the autoconfig vhost and the main one (the domain's own name lands there).
    assert site.count(f"Alias {autoconfig.WELL_KNOWN_URL} {autoconfig.CONFIG_XML}") == 2
    assert site.count(f'"{autoconfig.AUTODISCOVER_PHP}"') == 2


# -- the PHP, run by the base's PHP CLI ------------------------------------------------------

# Runs a script as Apache would for one request: method, query, body; prints the status, the
# status on stderr, the body on stdout.
RUN = r"""
[$script, $method, $email] = array_slice($argv, 1);
$_SERVER['REQUEST_METHOD'] = $method;
$_GET = $email === '-' ? [] : ['email' => $email];
register_shutdown_function(function () {
    // The CLI's code is false until a script sets one: a web server's 200.
    fwrite(STDERR, 'STATUS ' . (http_response_code() ?: 200));
});
include $script;
"""


def _scripts(hp: HostPlan, tmp: Path) -> Path:
    rendered = files(hp)
    for path in (autoconfig.COMMON_PHP, autoconfig.AUTODISCOVER_PHP, autoconfig.MOBILECONFIG_PHP):
        text = rendered[path]
        if path == autoconfig.AUTODISCOVER_PHP:
            # The CLI has no request body: the test hands it the body on stdin instead.
            assert text.count("php://input") == 1
            text = text.replace("php://input", "php://stdin")
        (tmp / path.rsplit("/", 1)[1]).write_text(text)
    return tmp


def _php(script: Path, method: str, email: str = "-", body: str = "") -> tuple[int, str]:
    proc = in_base("php", "-r", RUN, "--", str(script), method, email, input=body)
    assert proc.stderr.startswith("STATUS "), proc.stderr
    status = proc.stderr.removeprefix("STATUS ")
    return int(status), proc.stdout


@pytest.mark.checkers
def test_php_lint(plan: tuple[Topology, HostPlan], tmp_path: Path) -> None:
    _, hp = plan
    for php in sorted(_scripts(hp, tmp_path).glob("*.php")):
        assert "No syntax errors detected" in in_base("php", "-l", str(php)).stdout, php


@pytest.mark.checkers
def test_mobileconfig(plan: tuple[Topology, HostPlan], tmp_path: Path) -> None:
    topo, hp = plan
    script = _scripts(hp, tmp_path) / "mobileconfig.php"
    address = f"Alice.B+tag@{topo.domain.upper()}"
    status, body = _php(script, "GET", address)
    assert status == 200, body
    profile = plistlib.loads(body.encode())
    (mail,) = profile["PayloadContent"]
    email = address.lower()
    assert mail["PayloadType"] == "com.apple.mail.managed"
    assert profile["PayloadType"] == "Configuration"
    assert (mail["EmailAddress"], mail["EmailAccountType"]) == (email, "EmailTypeIMAP")
    assert (mail["IncomingMailServerHostName"], mail["IncomingMailServerPortNumber"]) == (
        topo.mail_host,
        993,
    )
    assert (mail["OutgoingMailServerHostName"], mail["OutgoingMailServerPortNumber"]) == (
        topo.mail_host,
        587,
    )
    assert mail["IncomingMailServerUseSSL"] is True and mail["OutgoingMailServerUseSSL"] is True
    assert mail["IncomingMailServerUsername"] == mail["OutgoingMailServerUsername"] == email
    # Apple's password keys are IncomingPassword and OutgoingPassword: no key of either
    # dictionary holds one (the one "Password" key allowed only says "the same as incoming").
    keys = set(profile) | set(mail)
    assert {k for k in keys if "Password" in k} == {"OutgoingPasswordSameAsIncomingPassword"}
    # Deterministic: the PHP's UUIDv5 is Python's, from the namespace the plan rendered.
    ns = uuid.UUID(autoconfig.profile_namespace(topo.domain))
    assert profile["PayloadUUID"] == str(uuid.uuid5(ns, f"profile:{email}"))
    assert mail["PayloadUUID"] == str(uuid.uuid5(ns, f"mail:{email}"))
    assert profile["PayloadIdentifier"].startswith("com.example.mailcluster.mail.")
    assert _php(script, "GET", address)[1] == body  # the same profile on every request


BAD = [
    "-",  # no address
    "alice@example.org",  # another domain
    "alice@mail.example.com",  # a subdomain is not the domain
    "alice@example.com.evil.test",
    "<script>@example.com",
    ".alice@example.com",
    "al..ice@example.com",
    "alice@example.com\n",
    "a" * 65 + "@example.com",
    "alice",
]


@pytest.mark.checkers
@pytest.mark.parametrize("address", BAD)
def test_mobileconfig_refuses(
    topologies: dict[str, Topology], secrets: ClusterSecrets, tmp_path: Path, address: str
) -> None:
    hp = build_host_plan(topologies["dc1"], "dc1-svr1", secrets, "lab")
    status, body = _php(_scripts(hp, tmp_path) / "mobileconfig.php", "GET", address)
    assert status == 400, body
    assert "<" not in body and "plist" not in body


def _request(address: str) -> str:
    return (
        '<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/'
        f'requestschema/2006"><Request><EMailAddress>{address}</EMailAddress>'
        "<AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/outlook/"
        "responseschema/2006a</AcceptableResponseSchema></Request></Autodiscover>"
    )


def _protocols(body: str) -> dict[str, dict[str, str]]:
    account = ET.fromstring(body).find(f"{POX}Response/{POX}Account")
    assert account is not None
    return {
        p.findtext(f"{POX}Type", ""): {c.tag.removeprefix(POX): c.text or "" for c in p}
        for p in account.findall(f"{POX}Protocol")
    }


@pytest.mark.checkers
def test_autodiscover(plan: tuple[Topology, HostPlan], tmp_path: Path) -> None:
    topo, hp = plan
    script = _scripts(hp, tmp_path) / "autodiscover.php"
    status, body = _php(script, "POST", body=_request(f"Bob@{topo.domain}"))
    assert status == 200, body
    protocols = _protocols(body)
    assert set(protocols) == {"IMAP", "SMTP"}
    imap, smtp = protocols["IMAP"], protocols["SMTP"]
    assert (imap["Server"], imap["Port"], imap["Encryption"]) == (topo.mail_host, "993", "SSL")
    assert (smtp["Server"], smtp["Port"], smtp["Encryption"]) == (topo.mail_host, "587", "TLS")
    assert imap["LoginName"] == smtp["LoginName"] == f"bob@{topo.domain}"
    # A GET (or a body without an address): the settings, no login name.
    status, body = _php(script, "GET")
    assert status == 200 and "LoginName" not in _protocols(body)["IMAP"], body
    for bad in ("bob@example.org", "<x>", "&amp;@example.com"):
        status, body = _php(script, "POST", body=_request(bad))
        assert status == 400 and "<" not in body, (bad, body)
