"""mailcluster-domains (mailnode/domains.py): a node follows the database's mail domains.

A fake database (the two Postfix Admin tables and the keys' table) and real files in a temporary
tree; openssl is the real one. The writer makes one key per domain and drops a gone domain's;
every node writes the keys and the selector map; a DNS master writes each zone, hosted.conf and
the catalog, reloads named only when something changed, and keeps serials that only grow.
"""

from __future__ import annotations

import base64
import re
import secrets
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from mailnode import domains as dom
from mailnode.mysql import DbError

MAIN = "example.com"


@dataclass
class FakeDb:
    domains: list[str] = field(default_factory=list)
    alias_domains: list[str] = field(default_factory=list)
    # domain, selector, private PEM, public key, active_at
    keys: list[tuple[str, str, str, str, int]] = field(default_factory=list)
    serials: dict[str, tuple[int, str]] = field(default_factory=dict)
    missing_tables: bool = False
    statements: list[str] = field(default_factory=list)

    def query(self, sql: str) -> list[list[str]]:
        self.statements.append(sql)
        if self.missing_tables:
            raise DbError("mariadb: ERROR 1146 (42S02) at line 1: Table doesn't exist")
        if sql.startswith("SELECT domain FROM"):
            return [[d] for d in [*self.domains, "ALL", *self.alias_domains]]
        if sql.startswith("SELECT domain, selector"):
            rows = sorted(self.keys, key=lambda k: (k[0], k[4], k[1]))
            return [[d, s, p.encode().hex().upper(), b, str(t)] for d, s, p, b, t in rows]
        if sql.startswith("INSERT IGNORE"):
            found = re.search(
                r"VALUES \('([^']+)', '([^']+)', X'([0-9a-f]+)', '([^']+)', UTC_TIMESTAMP\(\), "
                r"(\d+)\)", sql)  # fmt: skip
            assert found, sql
            d, s, pem_hex, pub, active = found.groups()
            if not any(k[:2] == (d, s) for k in self.keys):
                self.keys.append((d, s, bytes.fromhex(pem_hex).decode(), pub, int(active)))
            return []
        if sql.startswith("SELECT zone, serial, digest"):
            return [[z, str(n), d] for z, (n, d) in sorted(self.serials.items())]
        if sql.startswith("INSERT INTO mailcluster.zone_serials"):
            found = re.search(r"VALUES \('([^']+)', (\d+), '([0-9a-f]+)'\)", sql)
            assert found, sql
            self.serials[found.group(1)] = (int(found.group(2)), found.group(3))
            return []
        if sql.startswith("DELETE FROM mailcluster.zone_serials"):
            gone = re.search(r"zone='([^']+)'", sql)
            assert gone
            self.serials.pop(gone.group(1))
            return []
        if sql.startswith("DELETE FROM"):
            gone = re.search(r"domain='([^']+)'(?: AND selector='([^']+)')?", sql)
            assert gone
            d, selector = gone.groups()
            self.keys = [k for k in self.keys if k[0] != d or (selector and k[1] != selector)]
            return []
        raise AssertionError(f"unexpected SQL: {sql}")


@dataclass
class Commands:
    """The commands a node runs: the role script's answer and named's, openssl for real."""

    writer: bool = True
    named_running: bool = True
    check_fails: bool = False
    ran: list[list[str]] = field(default_factory=list)

    def __call__(self, argv: list[str], **kw: Any) -> subprocess.CompletedProcess[Any]:
        self.ran.append(list(argv))
        if argv[0] == "openssl":
            return subprocess.run(argv, **kw)
        code = 0
        if argv[-1] == "is-writer":
            code = 0 if self.writer else 1
        elif argv[:2] == ["rndc", "status"]:
            code = 0 if self.named_running else 1
        elif argv[0] == "named-checkconf":
            code = 1 if self.check_fails else 0
        return subprocess.CompletedProcess(argv, code, "zone broken" if code else "", "")

    def reloads(self) -> int:
        return sum(1 for a in self.ran if a == ["rndc", "reload"])


def config(tmp: Path, master: bool = True) -> dom.Config:
    for d in ("dkim", "zones"):
        (tmp / d).mkdir(exist_ok=True)
    return dom.parse_config({
        "node": "dc1-svr1", "main_domain": MAIN, "is_dns_master": master,
        "mysql": ["mariadb"], "role_script": "/usr/local/sbin/mailcluster-role",
        "db": "mailcluster", "dkim_table": "dkim_keys",
        "zone_serials_table": "zone_serials", "postfixadmin_db": "postfixadmin",
        "dkim_dir": str(tmp / "dkim"), "selector_map": str(tmp / "dkim/selectors.map"),
        "key_group": "",
        "zone": {"ttl": 300, "soa_mname": "ns1.example.com.",
                 "soa_rname": "hostmaster.example.com.", "refresh": 3600, "retry": 600,
                 "expire": 1209600, "negative_ttl": 300,
                 "records": [["@", "NS", "ns1.example.com."],
                             ["@", "MX", "10 mail.example.com."]]},
        "zone_dir": str(tmp / "zones"), "hosted_conf": str(tmp / "hosted.conf"),
        "catalog": "catalog.mailcluster.invalid", "catalog_file": str(tmp / "catalog.db"),
        "notify": ["10.99.0.3", "10.99.0.4"], "bind_group": "",
        "named_check": ["named-checkconf", "-z"], "named_reload": ["rndc", "reload"],
        "named_running": ["rndc", "status"], "name_servers": ["ns1.example.com.",
                                                              "ns2.example.com."],
        "sync_every_s": 60,
        "named_zones_url": "http://127.0.0.1:8053/json/v1/zones",
    })  # fmt: skip


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def node(tmp: Path, db: FakeDb, cmds: Commands, master: bool = True, clock: Clock | None = None
         ) -> tuple[dom.Node, list[str]]:  # fmt: skip
    said: list[str] = []
    n = dom.Node(config(tmp, master), db, run=cmds, clock=clock or Clock(), say=said.append)
    return n, said


def serial(path: Path) -> int:
    found = re.search(r"^@ IN SOA \S+ \S+ (\d+) ", path.read_text(), re.M)
    assert found, path.read_text()
    return int(found.group(1))


def test_the_writer_makes_one_key_per_domain_and_every_file_once(tmp_path: Path) -> None:
    db = FakeDb(domains=[MAIN, "example.org"], alias_domains=["example.net"])
    cmds = Commands()
    n, said = node(tmp_path, db, cmds)
    assert n.sync() == ["example.net", "example.org"]  # never the cluster's own domain
    assert sorted(k[0] for k in db.keys) == ["example.net", "example.org"]
    _, selector, pem, public, _ = next(k for k in db.keys if k[0] == "example.org")
    assert selector == "s20270115"
    # A private key openssl accepts (made at run time by the code under test).
    subprocess.run(["openssl", "pkey", "-check", "-noout"], input=pem.encode(),
                   capture_output=True, check=True)  # fmt: skip
    # The published key is the private key's own public half.
    der = subprocess.run(["openssl", "pkey", "-pubout", "-outform", "DER"], input=pem.encode(),
                         capture_output=True, check=True).stdout  # fmt: skip
    assert base64.b64decode(public) == der
    key_file = tmp_path / f"dkim/example.org.{selector}.key"
    assert key_file.read_text() == pem and key_file.stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "dkim/selectors.map").read_text() == (
        f"example.net {selector}\nexample.org {selector}\n"
    )
    zone = (tmp_path / "zones/db.example.org").read_text()
    assert "@ IN MX 10 mail.example.com." in zone
    assert f"{selector}._domainkey IN TXT {dom.txt(f'v=DKIM1; k=rsa; p={public}')}" in zone
    conf = (tmp_path / "hosted.conf").read_text()
    assert 'zone "example.org" { type primary; file "' in conf
    assert "also-notify { 10.99.0.3; 10.99.0.4; };" in conf and MAIN not in conf
    catalog = (tmp_path / "catalog.db").read_text()
    assert f"{dom.member_label('example.org')}.zones IN PTR example.org." in catalog
    assert 'version IN TXT "2"' in catalog
    assert cmds.reloads() == 1 and any(dom.CHANGED_MARK in s for s in said)

    # A second run changes nothing: no key, no file, no reload, no changed mark.
    said.clear()
    assert n.sync() == ["example.net", "example.org"]
    assert said == [] and cmds.reloads() == 1 and len(db.keys) == 2


def test_a_gone_domain_loses_key_zone_and_catalog_entry(tmp_path: Path) -> None:
    db = FakeDb(domains=[MAIN, "example.org", "example.net"])
    cmds = Commands()
    clock = Clock()
    n, _ = node(tmp_path, db, cmds, clock=clock)
    n.sync()
    before = serial(tmp_path / "catalog.db")
    db.domains.remove("example.net")
    clock.now += 1
    n.sync()
    assert [k[0] for k in db.keys] == ["example.org"]
    assert not (tmp_path / "zones/db.example.net").exists()
    assert not list((tmp_path / "dkim").glob("example.net.*"))
    assert "example.net" not in (tmp_path / "dkim/selectors.map").read_text()
    assert "example.net" not in (tmp_path / "hosted.conf").read_text()
    catalog = tmp_path / "catalog.db"
    assert "example.net" not in catalog.read_text() and serial(catalog) > before
    assert cmds.reloads() == 2


def test_a_replica_copies_keys_but_never_makes_or_drops_them(tmp_path: Path) -> None:
    pem = f"key material {secrets.token_hex(8)}\n"  # copied as it is: any text will do
    keys = [("example.org", "s1", pem, "UFVC", 0), ("gone.example", "s1", pem, "UFVC", 0)]
    db = FakeDb(domains=["example.org", "example.net"], keys=keys)
    cmds = Commands(writer=False)
    n, _ = node(tmp_path, db, cmds, master=False)
    n.sync()
    assert not any(s.startswith(("INSERT", "DELETE")) for s in db.statements)
    assert (tmp_path / "dkim/example.org.s1.key").read_text() == pem
    # example.net has no key yet (the writer makes it): not in the map, so rspamd does not sign
    # it with a key DNS does not publish.
    assert (tmp_path / "dkim/selectors.map").read_text() == "example.org s1\n"
    # Not a DNS master: no zone, no configuration for BIND, no reload.
    assert not (tmp_path / "hosted.conf").exists() and not list((tmp_path / "zones").iterdir())
    assert cmds.reloads() == 0


def test_serials_come_from_the_database_so_every_master_serves_the_same(tmp_path: Path) -> None:
    """The writer gives changed content the next serial (Unix time, or one more when that is
    ahead); the other master of the data centre, with its own clock, serves the same serial,
    and does not serve a new zone before the writer's serial for it arrives."""
    db = FakeDb(domains=["example.org"])
    (tmp_path / "w").mkdir()
    (tmp_path / "o").mkdir()
    clock = Clock(1_800_000_000)
    writer, _ = node(tmp_path / "w", db, Commands(), clock=clock)
    other, _ = node(tmp_path / "o", db, Commands(writer=False), clock=Clock(1_800_000_555))
    other.sync()  # before the writer: nothing to serve yet
    assert not (tmp_path / "o/zones/db.example.org").exists()
    assert "example.org" not in (tmp_path / "o/hosted.conf").read_text()
    writer.sync()
    other.sync()
    for side in ("w", "o"):
        assert serial(tmp_path / side / "zones/db.example.org") == 1_800_000_000, side
        assert serial(tmp_path / side / "catalog.db") == 1_800_000_000, side
        assert 'zone "example.org"' in (tmp_path / side / "hosted.conf").read_text()
    clock.now += 100
    writer.sync()
    assert serial(tmp_path / "w/zones/db.example.org") == 1_800_000_000  # same content
    # A serial already ahead of the clock (a change a second ago) still grows.
    db.serials["example.org"] = (1_900_000_000, "0" * 64)
    writer.sync()
    assert serial(tmp_path / "w/zones/db.example.org") == 1_900_000_001
    other.sync()
    assert serial(tmp_path / "o/zones/db.example.org") == 1_900_000_001
    # A content change the writer has not given a serial yet: the other keeps serving the old.
    db.serials["example.org"] = (1_900_000_001, "f" * 64)
    before = (tmp_path / "o/zones/db.example.org").read_text()
    other.sync()
    assert (tmp_path / "o/zones/db.example.org").read_text() == before


def test_a_replica_without_the_tables_yet_hosts_nothing(tmp_path: Path) -> None:
    n, said = node(tmp_path, FakeDb(missing_tables=True), Commands(writer=False), master=False)
    assert n.sync() == []
    assert said == [f"{dom.CHANGED_MARK} {tmp_path}/dkim/selectors.map"]


def test_named_is_reloaded_only_when_its_check_passes(tmp_path: Path) -> None:
    cmds = Commands(check_fails=True)
    n, _ = node(tmp_path, FakeDb(domains=["example.org"]), cmds)
    with pytest.raises(dom.DomainError, match="named-checkconf refuses the zones: zone broken"):
        n.sync()
    assert cmds.reloads() == 0
    # named not running (a fresh node): files written, no reload (the plan's start loads them).
    cmds2 = Commands(named_running=False)
    (tmp_path / "x").mkdir()
    n2, _ = node(tmp_path / "x", FakeDb(domains=["example.net"]), cmds2)
    n2.sync()
    assert (tmp_path / "x/zones/db.example.net").exists() and cmds2.reloads() == 0


def test_init_makes_only_the_missing_files_empty(tmp_path: Path) -> None:
    n, said = node(tmp_path, FakeDb(), Commands())
    n.init()
    assert (tmp_path / "hosted.conf").read_text().count("zone ") == 0
    assert "PTR" not in (tmp_path / "catalog.db").read_text()
    said.clear()
    n.init()
    assert said == []


def test_records_tell_the_operator_the_delegation_and_the_zone(tmp_path: Path) -> None:
    db = FakeDb(domains=["example.org"])
    n, _ = node(tmp_path, db, Commands())
    n.sync()
    text = n.records("Example.org.")
    assert "example.org. NS ns1.example.com." in text and "example.org. NS ns2.example.com." in text
    assert "DS: none" in text and "_domainkey IN TXT" in text
    assert "PRIVATE" not in text
    with pytest.raises(dom.DomainError, match="not a mail domain of this cluster"):
        n.records("example.net")


@pytest.mark.parametrize(
    "bad", ["", "x", "-a.example", "a..example", "a_b.example", "ex ample.org"]
)
def test_bad_domain_names_are_refused(bad: str) -> None:
    with pytest.raises(dom.DomainError, match="is not a domain name"):
        dom.check_domain(bad)


def test_a_broken_config_names_the_problem(tmp_path: Path) -> None:
    good = config(tmp_path)
    with pytest.raises(dom.DomainError, match="KeyError: 'zone'"):
        dom.parse_config({"node": "x"})
    assert replace(good, node="y").node == "y"


def test_a_rotation_publishes_the_new_key_first_and_signs_with_it_two_ttls_later(
    tmp_path: Path,
) -> None:
    db = FakeDb(domains=["example.org"])
    clock = Clock(1_800_000_000)
    n, _ = node(tmp_path, db, Commands(), clock=clock)
    n.sync()
    (first,) = db.keys
    clock.now += 3600
    said = n.rotate("example.org")
    second = next(k for k in db.keys if k[1] != first[1])
    # Same day: a letter more. It signs after 2 TTLs (300 s here) and one timer period.
    assert second[1] == first[1] + "b" and second[4] == 1_800_003_600 + 2 * 300 + 60
    assert f"{second[1]}, published now, signs from 2027-01-15" in said
    with pytest.raises(dom.DomainError, match=r"a rotation of example\.org is under way"):
        n.rotate("example.org")
    n.sync()
    zone = (tmp_path / "zones/db.example.org").read_text()
    assert f"{first[1]}._domainkey" in zone and f"{second[1]}._domainkey" in zone
    assert (tmp_path / f"dkim/example.org.{second[1]}.key").exists()
    selectors = tmp_path / "dkim/selectors.map"
    assert selectors.read_text() == f"example.org {first[1]}\n"  # the old key still signs
    clock.now = second[4]
    n.sync()
    assert selectors.read_text() == f"example.org {second[1]}\n"
    assert f"{first[1]}._domainkey" in (tmp_path / "zones/db.example.org").read_text()
    # A week after the switch the old key goes from the database, the zone and the disk.
    clock.now = second[4] + dom.RETIRE_AFTER_S
    n.sync()
    assert [k[1] for k in db.keys] == [second[1]]
    assert f"{first[1]}._domainkey" not in (tmp_path / "zones/db.example.org").read_text()
    assert not (tmp_path / f"dkim/example.org.{first[1]}.key").exists()


def test_only_the_writer_rotates_and_only_a_hosted_domain(tmp_path: Path) -> None:
    n, _ = node(tmp_path, FakeDb(domains=["example.org"]), Commands(writer=False))
    with pytest.raises(dom.DomainError, match="not the writer"):
        n.rotate("example.org")
    w, _ = node(tmp_path, FakeDb(domains=["example.org"]), Commands())
    with pytest.raises(dom.DomainError, match=r"example\.net is not a mail domain"):
        w.rotate("example.net")


def test_status_names_a_stale_zone_and_a_key_rspamd_does_not_use(tmp_path: Path) -> None:
    db = FakeDb(domains=["example.org", "example.net"])
    clock = Clock(1_800_000_000)
    n, _ = node(tmp_path, db, Commands(), clock=clock)
    n.sync()
    fresh = {d: db.serials[d][0] for d in ("example.org", "example.net")}
    assert n.status(served=fresh) == {"domains": ["example.net", "example.org"], "problems": []}
    stale = {**fresh, "example.org": fresh["example.org"] - 5}
    del stale["example.net"]
    problems = n.status(served=stale)["problems"]
    assert problems == [
        "example.net: named serves nothing, the database has 1800000000",
        f"example.org: named serves {fresh['example.org'] - 5}, the database has 1800000000",
    ]
    # The map lags behind the key that signs: fine for two timer periods, then a problem.
    (tmp_path / "dkim/selectors.map").write_text("example.org s20270115\n")
    assert n.status(served=fresh)["problems"] == []
    clock.now += 121
    assert n.status(served=fresh)["problems"] == [
        "example.net: rspamd signs with nothing, not s20270115"
    ]
