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
    # zone -> (serial, digest) or (serial, digest, signed text, expires)
    serials: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    # zone -> (name, public, private, ds)
    zone_keys: dict[str, tuple[str, str, str, str]] = field(default_factory=dict)
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
        if sql.startswith("INSERT IGNORE INTO mailcluster.dkim_keys"):
            found = re.search(
                r"VALUES \('([^']+)', '([^']+)', X'([0-9a-f]+)', '([^']+)', UTC_TIMESTAMP\(\), "
                r"(\d+)\)", sql)  # fmt: skip
            assert found, sql
            d, s, pem_hex, pub, active = found.groups()
            if not any(k[:2] == (d, s) for k in self.keys):
                self.keys.append((d, s, bytes.fromhex(pem_hex).decode(), pub, int(active)))
            return []
        if sql.startswith("SELECT zone, serial, digest, HEX(signed), expires"):
            out = []
            for z, (n, d, *signed) in sorted(self.serials.items()):
                text, expires = signed or (None, None)
                out.append([z, str(n), d, "NULL" if text is None else text.encode().hex(),
                            "NULL" if expires is None else str(expires)])  # fmt: skip
            return out
        if sql.startswith("INSERT INTO mailcluster.zone_serials"):
            found = re.search(
                r"VALUES \('([^']+)', (\d+), '([0-9a-f]+)', (NULL|X'[0-9a-f]+'), (NULL|\d+)\)",
                sql)  # fmt: skip
            assert found, sql
            zone, n, d, signed, expires = found.groups()
            if signed == "NULL":
                self.serials[zone] = (int(n), d)
            else:
                self.serials[zone] = (int(n), d, bytes.fromhex(signed[2:-1]).decode(),
                                      int(expires))  # fmt: skip
            return []
        if sql.startswith("SELECT zone, name, HEX(public_key)"):
            return [[z, name, *(v.encode().hex() for v in rest)]
                    for z, (name, *rest) in sorted(self.zone_keys.items())]  # fmt: skip
        if sql.startswith("INSERT IGNORE INTO mailcluster.dnssec_keys"):
            found = re.search(r"VALUES \('([^']+)', '([^']+)', X'([0-9a-f]+)', X'([0-9a-f]+)', "
                              r"X'([0-9a-f]+)', UTC_TIMESTAMP\(\)\)", sql)  # fmt: skip
            assert found, sql
            zone, name, *hexes = found.groups()
            public, private, ds = (bytes.fromhex(h).decode() for h in hexes)
            self.zone_keys.setdefault(zone, (name, public, private, ds))
            return []
        if sql.startswith("DELETE FROM mailcluster.dnssec_keys"):
            gone = re.search(r"zone='([^']+)'", sql)
            assert gone
            self.zone_keys.pop(gone.group(1))
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
    """The commands a node runs: the role script's answer and named's, openssl for real; BIND's
    DNSSEC tools are stand-ins (the real ones: tests/render/test_dnssec.py) that keep what the
    code under test gave them."""

    writer: bool = True
    named_running: bool = True
    check_fails: bool = False
    ran: list[list[str]] = field(default_factory=list)
    signed: list[tuple[str, str, int]] = field(default_factory=list)  # zone, input, -e
    served: dict[str, str] = field(default_factory=dict)  # dig: zone -> RRSIG expiration

    def __call__(self, argv: list[str], **kw: Any) -> subprocess.CompletedProcess[Any]:
        self.ran.append(list(argv))
        if argv[0] == "openssl":
            return subprocess.run(argv, **kw)
        if argv[0].startswith(("dnssec-", "dig")):
            return subprocess.CompletedProcess(argv, 0, self._dnssec_tool(argv), "")
        code = 0
        if argv[-1] == "is-writer":
            code = 0 if self.writer else 1
        elif argv[:2] == ["rndc", "status"]:
            code = 0 if self.named_running else 1
        elif argv[0] == "named-checkconf":
            code = 1 if self.check_fails else 0
        return subprocess.CompletedProcess(argv, code, "zone broken" if code else "", "")

    def _dnssec_tool(self, argv: list[str]) -> str:
        zone = argv[-1]
        if argv[0] == "dnssec-keygen":
            tag = 10000 + len(self.ran)
            name = f"K{zone}.+013+{tag}"
            keydir = Path(argv[argv.index("-K") + 1])
            (keydir / f"{name}.key").write_text(
                f"; a comment line\n{zone}. 300 IN DNSKEY 257 3 13 UFVCTElD{tag}\n"
            )
            (keydir / f"{name}.private").write_text(f"PrivateKey: SECRET{tag}\n")
            return name + "\n"
        if argv[0] == "dnssec-dsfromkey":
            tag = zone.rsplit("+", 1)[1].removesuffix(".key")
            return f"{zone.split('/')[-1][1:].split('+')[0]} IN DS {tag} 13 2 ABCDEF\n"
        if argv[0] == "dnssec-signzone":
            name, keydir = argv[-1], Path(argv[argv.index("-K") + 1])
            private = Path(f"{name}.private")
            assert private.stat().st_mode & 0o777 == 0o600 and keydir.stat().st_mode & 0o77 == 0
            origin, expires = argv[argv.index("-o") + 1], argv[argv.index("-e") + 1]
            unsigned = Path(argv[-2]).read_text()
            self.signed.append((origin, unsigned, dom.dnssec.parse_stamp(expires)))
            return f"{unsigned}{origin}. 300 IN RRSIG SOA 13 2 300 {expires} 1 1 {origin}. Zz==\n"
        if argv[0] == "dig":
            zone = argv[-2]
            if zone not in self.served:
                return ""
            return f"{zone}. 300 IN RRSIG SOA 13 2 300 {self.served[zone]} 1 1 {zone}. Zz==\n"
        raise AssertionError(f"unexpected command {argv}")

    def reloads(self) -> int:
        return sum(1 for a in self.ran if a == ["rndc", "reload"])


def config(tmp: Path, master: bool = True, dnssec: bool = False, main: bool = False
           ) -> dom.Config:  # fmt: skip
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
        "dnssec": dnssec, "dnssec_table": "dnssec_keys", "named_address": "127.0.0.1",
        "main_zone_signed": main,
        "main_zone_file": str(tmp / "db.main") if main else "",
        "main_signed_file": str(tmp / "db.main.signed") if main else "",
    })  # fmt: skip


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def node(tmp: Path, db: FakeDb, cmds: Commands, master: bool = True, clock: Clock | None = None,
         dnssec: bool = False, main: bool = False) -> tuple[dom.Node, list[str]]:  # fmt: skip
    said: list[str] = []
    n = dom.Node(config(tmp, master, dnssec, main), db, run=cmds, clock=clock or Clock(),
                 say=said.append, sleep=lambda s: None)  # fmt: skip
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


# -- DNSSEC ------------------------------------------------------------------------------------


def signed_masters(tmp_path: Path) -> tuple[FakeDb, Commands, Clock, dom.Node, dom.Node]:
    db = FakeDb(domains=["example.org"])
    for side in ("w", "o"):
        (tmp_path / side).mkdir()
    clock = Clock(1_800_000_000)
    cmds = Commands()
    writer, _ = node(tmp_path / "w", db, cmds, clock=clock, dnssec=True)
    other, _ = node(tmp_path / "o", db, Commands(writer=False), clock=clock, dnssec=True)
    return db, cmds, clock, writer, other


def test_the_writer_signs_once_and_every_master_serves_its_bytes(tmp_path: Path) -> None:
    """One key per zone, made once by the writer and kept in the database; the zone signed by
    the writer alone, the signed text in the database; the other master serves those bytes."""
    db, cmds, clock, writer, other = signed_masters(tmp_path)
    writer.sync()
    (name, _, private, ds) = db.zone_keys["example.org"]
    assert name.startswith("Kexample.org.+013+")
    assert ds.endswith(f"IN DS {name[-5:]} 13 2 ABCDEF")
    (zone, unsigned, expires) = cmds.signed[-1]
    assert zone == "example.org" and expires == clock.now + dom.dnssec.VALIDITY_S
    assert "IN DNSKEY 257 3 13" in unsigned and "@ IN MX 10 mail.example.com." in unsigned
    served_w = (tmp_path / "w/zones/db.example.org").read_text()
    assert served_w.startswith(unsigned) and "RRSIG SOA" in served_w
    other.sync()
    assert (tmp_path / "o/zones/db.example.org").read_text() == served_w
    # The private key is only in the database: in no zone file, no output.
    assert private.strip() not in served_w
    assert not any("SECRET" in " ".join(a) for a in cmds.ran)
    # Nothing new to sign: a second run signs nothing; the catalog is never signed.
    writer.sync()
    assert len(cmds.signed) == 1 and "RRSIG" not in (tmp_path / "w/catalog.db").read_text()
    assert db.zone_keys["example.org"][0] == name


def test_a_zone_is_re_signed_before_its_signatures_run_short(tmp_path: Path) -> None:
    db, cmds, clock, writer, other = signed_masters(tmp_path)
    writer.sync()
    first = db.serials["example.org"]
    clock.now += dom.dnssec.VALIDITY_S - dom.dnssec.RESIGN_LEFT_S - 60  # not yet
    writer.sync()
    assert len(cmds.signed) == 1 and db.serials["example.org"] == first
    clock.now += 120
    writer.sync()
    second = db.serials["example.org"]
    assert len(cmds.signed) == 2 and second[0] > first[0] and second[3] > first[3]
    assert second[1] == first[1]  # same content, same digest: a new serial for new signatures
    other.sync()
    assert (tmp_path / "o/zones/db.example.org").read_text() == second[2]
    # A content change (a DKIM rotation) is signed at once.
    clock.now += 1
    writer.rotate("example.org")
    writer.sync()
    assert len(cmds.signed) == 3 and "_domainkey" in cmds.signed[-1][1]


def test_the_same_key_signs_after_the_writer_moves_and_goes_with_the_domain(
    tmp_path: Path,
) -> None:
    db, _, clock, writer, _ = signed_masters(tmp_path)
    writer.sync()
    name = db.zone_keys["example.org"][0]
    # The other data centre's master, promoted: same database, a new key would break the DS.
    (tmp_path / "p").mkdir()
    promoted_cmds = Commands()
    promoted, _ = node(tmp_path / "p", db, promoted_cmds, clock=clock, dnssec=True)
    clock.now += 10 * 86400
    promoted.sync()
    assert db.zone_keys["example.org"][0] == name
    assert not any(a[0] == "dnssec-keygen" for a in promoted_cmds.ran)
    assert any(a[0] == "dnssec-signzone" and a[-1].endswith(name) for a in promoted_cmds.ran)
    db.domains.remove("example.org")
    promoted.sync()
    assert db.zone_keys == {} and "example.org" not in db.serials


def test_dnssec_off_signs_nothing_and_keeps_the_key(tmp_path: Path) -> None:
    db, cmds, clock, writer, _ = signed_masters(tmp_path)
    writer.sync()
    off, _ = node(tmp_path / "w", db, cmds, clock=clock)
    clock.now += 1
    off.sync()
    text = (tmp_path / "w/zones/db.example.org").read_text()
    assert "RRSIG" not in text and "DNSKEY" not in text
    assert "example.org" in db.zone_keys  # on again, the same key (and DS) signs
    assert "not signed" in off.records("example.org")


def test_records_print_the_ds_for_the_registrar(tmp_path: Path) -> None:
    db, _, _, writer, _ = signed_masters(tmp_path)
    writer.sync()
    text = writer.records("example.org")
    assert "publish this DS record" in text and db.zone_keys["example.org"][3] in text
    assert "IN DNSKEY 257 3 13" in text and "SECRET" not in text


def test_health_fails_a_week_before_the_served_signatures_expire(tmp_path: Path) -> None:
    db, cmds, clock, writer, _ = signed_masters(tmp_path)
    writer.sync()
    expires = db.serials["example.org"][3]
    cmds.served["example.org"] = dom.dnssec.stamp(expires)
    assert writer.signatures() == [
        (
            "dnssec.example.org",
            True,
            "14.0",
            "signatures served here expire 2027-01-29 08:00:00 UTC",
        )
    ]
    clock.now = expires - dom.dnssec.ALERT_LEFT_S + 10  # the writer stopped re-signing
    ((_, ok, left, detail),) = writer.signatures(served=lambda z: expires)
    assert not ok and left == "7.0" and detail.endswith("; failing for 10s")
    # Another node serving the same bytes leaves the report to the writer ...
    (tmp_path / "x").mkdir()
    other, _ = node(tmp_path / "x", db, Commands(writer=False), clock=clock, dnssec=True)
    ((_, ok, _, detail),) = other.signatures(served=lambda z: expires)
    assert ok and "the writer reports it" in detail
    # ... but reports a stale copy of its own (older signatures than the database's).
    ((_, ok, _, detail),) = other.signatures(served=lambda z: expires - 1)
    assert not ok and "failing for" not in detail  # the alert's grace covers a late transfer
    cmds.served.clear()  # named serves it unsigned (or not at all)
    assert writer.signatures()[0][1:3] == (False, "unsigned")
    # A zone the database holds unsigned (dnssec: false) is not checked.
    db.serials["example.org"] = db.serials["example.org"][:2]
    assert writer.signatures() == []


PLAN_ZONE = """; managed by mailcluster; edits are overwritten
; mailcluster-zone puts a new serial in place of {serial} only when this text changed.
$ORIGIN example.com.
$TTL 300
@ IN SOA ns1.example.com. hostmaster.example.com. ( {serial} 3600 600 1209600 300 )
@ IN NS ns1.example.com.
@ IN MX 10 mail.example.com.
mail IN A {address}
; mailcluster-body-sha256 {address}
"""


def test_the_cluster_zone_is_signed_above_the_plan_serial_on_both_masters(tmp_path: Path) -> None:
    """The cluster's own zone: the plan's file (mailcluster-zone's YYYYMMDDnn serial) signed by
    the writer with a serial above the plan's (the secondaries hold at least that one), served
    byte for byte by the other master; a changed plan file is signed again at once; its key
    stays while further domains come and go."""
    db = FakeDb(domains=["example.org"])
    clock = Clock(1_800_000_000)
    cmds = Commands()
    sides = {}
    # Each master's plan file has a serial of its own (mailcluster-zone counts on each node;
    # a node promoted from secondary starts above the copy it held).
    for side, writer, plan_serial in (("w", True, 2027011500), ("o", False, 2027011400)):
        (tmp_path / side).mkdir()
        (tmp_path / side / "db.main").write_text(
            PLAN_ZONE.format(serial=plan_serial, address="192.0.2.1")
        )
        sides[side], _ = node(tmp_path / side, db, cmds if writer else Commands(writer=False),
                              clock=clock, dnssec=True, main=True)  # fmt: skip
    sides["w"].sync()
    sides["o"].sync()
    signed = (tmp_path / "w/db.main.signed").read_text()
    assert dom.soa_serial(signed) == 2027011501  # above the plan's, though Unix time is lower
    assert "mail IN A 192.0.2.1" in signed and "example.com. 300 IN DNSKEY 257 3 13" in signed
    assert "RRSIG SOA" in signed and (tmp_path / "o/db.main.signed").read_text() == signed
    assert set(db.zone_keys) == {"example.com", "example.org"}
    # The plan changed the records (a failover: the active data centre's address).
    clock.now += 60
    (tmp_path / "w/db.main").write_text(PLAN_ZONE.format(serial=2027011502, address="192.0.2.2"))
    sides["w"].sync()
    again = (tmp_path / "w/db.main.signed").read_text()
    assert "mail IN A 192.0.2.2" in again and dom.soa_serial(again) == 2027011503
    # The other master's plan file is not the same yet: it keeps serving what it had.
    sides["o"].sync()
    assert (tmp_path / "o/db.main.signed").read_text() == signed
    (tmp_path / "o/db.main").write_text(PLAN_ZONE.format(serial=2027011401, address="192.0.2.2"))
    sides["o"].sync()
    assert (tmp_path / "o/db.main.signed").read_text() == again
    db.domains.clear()
    sides["w"].sync()
    assert set(db.zone_keys) == {"example.com"} and set(db.serials) >= {"example.com"}
    # The cluster's own zone is in the health lines too.
    cmds.served["example.com"] = dom.dnssec.stamp(db.serials["example.com"][3])
    assert [line[0] for line in sides["w"].signatures()] == ["dnssec.example.com"]
    assert "DS" in sides["w"].records("example.com")


def test_the_other_master_waits_briefly_for_the_writers_serials(tmp_path: Path) -> None:
    """An apply runs the sync on both masters at once: the one that is not the writer, finding
    content the database has no serial for yet, looks again (a second apart, ten times at most)
    instead of serving the old zone until the next timer run."""
    db = FakeDb(domains=["example.org"])
    for side in ("w", "o"):
        (tmp_path / side).mkdir()
    writer, _ = node(tmp_path / "w", db, Commands())
    other, _ = node(tmp_path / "o", db, Commands(writer=False))
    waits: list[float] = []

    def writer_runs_meanwhile(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 3:
            writer.sync()

    other.sleep = writer_runs_meanwhile
    other.sync()
    assert waits == [dom.CATCH_UP_WAIT_S] * 3
    assert serial(tmp_path / "o/zones/db.example.org") == serial(
        tmp_path / "w/zones/db.example.org"
    )
    # Nothing new: no wait at all. The writer never waits.
    waits.clear()
    other.sync()
    writer.sleep = writer_runs_meanwhile
    db.domains.append("example.net")
    writer.sync()
    assert waits == []
