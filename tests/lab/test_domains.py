"""A further mail domain, whole after one `ops domain add` (issue 26; cluster/services/domains.py,
mailnode/domains.py): every name server of both data centres serves its zone (the standby data
centre's through the catalog zone, with no change to its configuration), mail from it carries a
DKIM signature of its own key that verifies against the key DNS publishes, `ops domain del`
refuses while mailboxes exist and afterwards leaves nothing of the domain on any node, and the
cluster's own domain cannot be deleted this way."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import shlex
import time
from collections.abc import Iterable

import dkim
import pytest

from cluster.lab import addresses as A
from cluster.lab.driver import DriverError, Lab, public_ip
from cluster.plan import CHANGED_MARK
from cluster.services import domains

DOMAIN = "example.com"
HOSTED = "shop.example"  # kept for the drills after this module (test_y_drills)
GONE = "gone.example"
NODES = ("dc1-svr1", "dc1-svr2", "dc2-svr1", "dc2-svr2")
VIP1 = A.lab_dc_addresses("dc1").shared_ipv4
VIP1_6 = str(A.lab_dc_addresses("dc1").shared_ipv6)
# The standby data centre's secondaries take a new member through the catalog: NOTIFY, the
# catalog's transfer, BIND's catalog update (min-update-interval 1 s), the member's transfer.
# Measured in the lab on 2 cores: MEASURE. The margin covers a busy machine.
SECONDARIES_WITHIN_S = 30


def dig_all(lab: Lab, queries: Iterable[tuple[str, str, str]]) -> dict[tuple[str, str, str], str]:
    """Each (server, name, type)'s answer (``dig +short``; a refused or empty answer is ""),
    from the lab's client, in one command."""
    qs = list(queries)
    script = "; ".join(
        f"dig @{shlex.quote(s)} {shlex.quote(n)} {t} +short +time=2 +tries=2; echo ===="
        for s, n, t in qs
    )
    out = lab.client("sh", "-c", script).stdout
    parts = out.split("====\n")
    return {q: parts[i].strip() for i, q in enumerate(qs)}


def answered(
    lab: Lab, queries: list[tuple[str, str, str]], within_s: float
) -> dict[tuple[str, str, str], str]:
    """Every query's answer once none is empty; fails naming those still empty."""
    deadline = time.monotonic() + within_s
    while True:
        got = dig_all(lab, queries)
        empty = [q for q, a in got.items() if not a]
        if not empty:
            took = within_s - (deadline - time.monotonic())
            print(f"answered by every name server after {took:.1f} s")
            return got
        assert time.monotonic() < deadline, f"no answer after {within_s} s: {empty}"
        time.sleep(1)


def txt(answer: str) -> str:
    """A TXT answer's strings joined, as resolvers hand them to DKIM checkers."""
    return "".join(re.findall(r'"([^"]*)"', answer))


def servers() -> list[str]:
    return [public_ip(n) for n in NODES]


@pytest.fixture(scope="module")
def added(lab: Lab) -> str:
    """`ops domain add`'s output (the registrar's records and the zone)."""
    if HOSTED in lab.ops("domain", "list").stdout.split():
        return lab.ops("domain", "records", HOSTED).stdout
    return lab.ops("domain", "add", HOSTED).stdout


def published_selector(added: str) -> tuple[str, str]:
    """The selector that signs now and its published record, from `domain add|records`."""
    signs = re.search(r"^DKIM (s\d{8}[a-z]?): signs$", added, re.M)
    assert signs, added
    found = re.search(rf"^\s+{signs.group(1)}\._domainkey IN TXT (.+)$", added, re.M)
    assert found, added
    return signs.group(1), txt(found.group(1))


def test_a_new_domain_is_served_by_every_name_server(lab: Lab, added: str) -> None:
    assert f"{HOSTED}. NS ns1.{DOMAIN}." in added and f"{HOSTED}. NS ns2.{DOMAIN}." in added
    assert "PRIVATE" not in added
    selector, key = published_selector(added)
    assert key.startswith("v=DKIM1; k=rsa; p=MII")
    queries = [
        (s, n, t)
        for s in servers()
        for n, t in ((HOSTED, "SOA"), (HOSTED, "MX"), (f"{selector}._domainkey.{HOSTED}", "TXT"))
    ]

    got = answered(lab, queries, SECONDARIES_WITHIN_S)
    serials = {s: got[(s, HOSTED, "SOA")].split()[2] for s in servers()}
    assert len(set(serials.values())) == 1, serials  # the secondaries hold the master's copy
    for s in servers():
        assert got[(s, HOSTED, "MX")] == f"10 mail.{DOMAIN}.", (s, got)
        assert txt(got[(s, f"{selector}._domainkey.{HOSTED}", "TXT")]) == key, s
    # The catalog itself is not for the world: no name server answers for it from outside.
    catalog = dig_all(lab, [(servers()[0], domains.CATALOG, "SOA")])
    assert not next(iter(catalog.values())), catalog

    # Idempotent: once every node has the domain, another sync on each changes nothing.
    for node in NODES:
        again = lab.exec(node, domains.SCRIPT, "sync").stdout
        assert CHANGED_MARK not in again, (node, again)


def dnskey_of(records: str, zone: str) -> str:
    """The zone's DNSKEY record, as `domain add|records` prints it."""
    found = re.search(rf"^(?:\s+|The zone's key: )({re.escape(zone)}\. \d+ IN DNSKEY 257 3 13 .+)$",
                      records, re.M)  # fmt: skip
    assert found, records
    return found.group(1)


def ds_of(dnskey: str) -> str:
    """The DS (SHA-256, RFC 4509) of a DNSKEY record line, computed here (RFC 4034 5.1.4 and
    appendix B), to check the one the cluster prints for the registrar."""
    owner, _ttl, _cls, _type, flags, proto, alg, *material = dnskey.split()
    rdata = (int(flags).to_bytes(2, "big") + bytes([int(proto), int(alg)])
             + base64.b64decode("".join(material)))  # fmt: skip
    wire = b"".join(bytes([len(label)]) + label.lower().encode()
                    for label in owner.rstrip(".").split(".")) + b"\0"  # fmt: skip
    acc = sum(b << 8 if i % 2 == 0 else b for i, b in enumerate(rdata))
    tag = (acc + (acc >> 16)) & 0xFFFF
    return f"{owner} IN DS {tag} {alg} 2 {hashlib.sha256(wire + rdata).hexdigest().upper()}"


def test_the_zone_is_signed_and_validates_at_every_name_server(lab: Lab, added: str) -> None:
    """DNSSEC (dnssec: true, the default): every name server of both data centres serves the
    zone signed with the key `domain records` prints; a validator that trusts only that key
    validates the MX and the DKIM record at each; the DS printed for the registrar is that
    key's; the same for the cluster's own zone; every node's health says when the signatures it
    serves expire."""
    records = lab.ops("domain", "records", HOSTED).stdout
    dnskey = dnskey_of(records, HOSTED)
    assert f"  {ds_of(dnskey)}\n" in records, records
    # The cluster's own zone too, from the plan's records, with its own key.
    own = lab.ops("domain", "records", DOMAIN).stdout
    own_key = dnskey_of(own, DOMAIN)
    assert f"  {ds_of(own_key)}\n" in own and own_key != dnskey, own
    assert "PrivateKey" not in records and "Private-key-format" not in records
    selector, _ = published_selector(records)
    for server in servers():
        mx = lab.validated(server, dnskey, HOSTED, "MX")
        assert f"10 mail.{DOMAIN}." in mx, mx
        lab.validated(server, dnskey, f"{selector}._domainkey.{HOSTED}", "TXT")
        assert f"10 mail.{DOMAIN}." in lab.validated(server, own_key, DOMAIN, "MX")
    # One signer: every node serves the same signatures (the same serial, the same RRSIG), once
    # a change has reached all (a re-signing of the timer can be under way: NOTIFY, transfer).
    for zone in (HOSTED, DOMAIN):

        def one_signature(zone: str = zone) -> set[str] | None:
            sigs = dig_all(lab, [(s, zone, "SOA +dnssec") for s in servers()])
            rrsig = {a.splitlines()[-1] if a else "" for a in sigs.values()}
            return rrsig if len(rrsig) == 1 else None  # +short: "SOA 13 2 TTL EXP ..."

        rrsig = lab.wait_for(f"one signature of {zone} everywhere", one_signature,
                             SECONDARIES_WITHIN_S, 1)  # fmt: skip
        assert next(iter(rrsig)).startswith("SOA 13 "), rrsig
    for node in NODES:
        health = lab.exec(node, "mailcluster-health").stdout
        for zone in (HOSTED, DOMAIN):
            line = next(ln for ln in health.splitlines() if ln.startswith(f"dnssec.{zone}\t"))
            _, verdict, days, _ = line.split("\t")
            assert verdict == "ok" and float(days) > 10, (node, line)


def test_the_mx_presents_the_certificate_its_validated_tlsa_record_names(lab: Lab) -> None:
    """DANE (services/dane.py): every name server serves the MX host's TLSA record, validated
    with the zone's key; OpenSSL's DANE verifier, given that record, accepts the chain the MX
    presents after STARTTLS on IPv4 and IPv6, and refuses it for another digest or for a name
    the certificate does not carry (so the acceptance is the record's doing). The further
    domains' MX is the same host: this one record covers them. dc2's certificate: drill 3."""
    own_key = dnskey_of(lab.ops("domain", "records", DOMAIN).stdout, DOMAIN)
    mx, name = f"mail.{DOMAIN}", f"_25._tcp.mail.{DOMAIN}"
    found = {tuple(lab.tlsa_validated(server, own_key, name)) for server in servers()}
    assert len(found) == 1, found
    (tlsa,) = next(iter(found))
    assert re.fullmatch(r"2 1 1 [0-9A-F]{64}", tlsa), tlsa
    for vip in (VIP1, VIP1_6):
        matched = lab.smtp_dane(vip, mx, tlsa)
        assert "matched TA certificate at depth 1" in matched, (vip, matched)
    other = tlsa[:-1] + ("0" if tlsa[-1] != "0" else "1")
    with pytest.raises(DriverError, match="no matching DANE TLSA records"):
        lab.smtp_dane(VIP1, mx, other)
    with pytest.raises(DriverError, match="not verified"):
        lab.smtp_dane(VIP1, f"mx.{HOSTED}", tlsa)


def dns_txt_from(lab: Lab, server: str) -> object:
    """dkimpy's DNS lookup, answered by ``server`` from the lab's client."""

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        answer = dig_all(lab, [(server, name.decode().rstrip("."), "TXT")])
        value = txt(next(iter(answer.values())))
        return value.encode() or None

    return lookup


def test_mail_from_the_new_domain_carries_its_own_verified_signature(
    lab: Lab, vip: str, added: str
) -> None:
    user = lab.new_mailbox(HOSTED, "bob")
    selector, _ = published_selector(added)
    subject = f"hosted dkim {secrets.token_hex(4)}"
    sent = lab.send(vip, user, subject)
    assert sent["ok"], sent
    (holder,) = lab.holders(("dc1-svr1", "dc1-svr2"))
    fetch = ("doveadm", "fetch", "-u", user[0], "text", "mailbox", "INBOX", "header",
             "Subject", subject)  # fmt: skip
    raw = lab.wait_for(
        "the message in the mailbox",
        lambda: lab.exec(holder, *fetch, check=False).stdout,
        timeout=30,
    )
    message = raw.split("\n", 1)[1].rstrip("\f\n") + "\n"  # doveadm's "text:" line and \f
    signatures = [v for k, v in re.findall(r"^(DKIM-Signature): (.*(?:\n[ \t].*)*)", message, re.M)]
    assert len(signatures) == 1, message[:2000]
    tags = dict(
        t.strip().split("=", 1) for t in re.sub(r"\s+", "", signatures[0]).split(";") if "=" in t
    )
    assert tags["d"] == HOSTED and tags["s"] == selector, tags
    # Verified by dkimpy, with the key as a standby-data-centre secondary serves it.
    crlf = message.replace("\r\n", "\n").replace("\n", "\r\n").encode()
    assert dkim.verify(crlf, dnsfunc=dns_txt_from(lab, public_ip("dc2-svr2"))), tags


def test_del_refuses_while_mailboxes_exist_then_leaves_nothing(lab: Lab, added: str) -> None:
    own = lab.ops("domain", "del", DOMAIN, check=False)
    assert own.returncode == 2 and "the cluster's own domain" in own.stderr, own.stderr
    bad = lab.ops("domain", "add", "not_a.domain", check=False)
    assert bad.returncode == 2 and "is not a domain name" in bad.stderr, bad.stderr

    lab.ops("domain", "add", GONE)
    answered(lab, [(s, GONE, "SOA") for s in servers()], SECONDARIES_WITHIN_S)
    user = lab.new_mailbox(GONE, "left")
    refused = lab.ops("domain", "del", GONE, check=False)
    assert refused.returncode == 2 and "1 mailbox(es)" in refused.stderr, refused.stderr
    assert user[0] in refused.stderr and "--remove-mailboxes" in refused.stderr
    assert GONE in lab.ops("domain", "list").stdout.split()

    lab.ops("domain", "del", GONE, "--remove-mailboxes")
    assert GONE not in lab.ops("domain", "list").stdout.split()
    keys = lab.sql(NODES[0], f"SELECT COUNT(*) FROM {domains.DB}.{domains.DKIM_TABLE} "
                             f"WHERE domain='{GONE}'")  # fmt: skip
    assert keys == "0"
    for node in NODES:
        files = lab.exec(node, "sh", "-c", f"ls {domains.DKIM_DIR} {domains.ZONE_DIR} 2>&1; "
                                           f"cat {domains.SELECTOR_MAP}").stdout  # fmt: skip
        assert GONE not in files, (node, files)

    def gone_everywhere() -> bool:
        got = dig_all(lab, [(s, GONE, "SOA") for s in servers()])
        return not any(got.values())

    t0 = time.monotonic()
    lab.wait_for(f"{GONE} gone from every name server", gone_everywhere, SECONDARIES_WITHIN_S, 1)
    print(f"{GONE} gone from every name server after {time.monotonic() - t0:.1f} s")
    # The other domain kept its zone.
    kept = dig_all(lab, [(s, HOSTED, "MX") for s in servers()])
    assert set(kept.values()) == {f"10 mail.{DOMAIN}."}, kept


def test_a_dkim_rotation_publishes_the_new_key_everywhere_before_it_signs(lab: Lab) -> None:
    old, _ = published_selector(lab.ops("domain", "records", HOSTED).stdout)
    out = lab.ops("domain", "dkim-rotate", HOSTED).stdout
    found = re.search(rf"{HOSTED}: new DKIM key (s\d{{8}}[a-z]?), published now, signs from ", out)
    assert found, out
    new = found.group(1)
    got = answered(lab, [(s, f"{new}._domainkey.{HOSTED}", "TXT") for s in servers()], 5)
    assert all(txt(a).startswith("v=DKIM1; k=rsa; p=MII") for a in got.values()), got
    # Until its time comes, every node still signs with the old key, which stays published.
    for node in NODES:
        names = lab.exec(node, "cat", domains.SELECTOR_MAP).stdout
        assert f"{HOSTED} {old}\n" in names, (node, names)
    assert published_selector(lab.ops("domain", "records", HOSTED).stdout)[0] == old
    again = lab.ops("domain", "dkim-rotate", HOSTED, check=False)
    assert again.returncode == 2 and "under way" in again.stderr, again.stderr
