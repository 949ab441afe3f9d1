"""mailcluster-domains: every mail domain of Postfix Admin made whole on this node.

The list of mail domains lives in the replicated database (Postfix Admin's ``domain`` and
``alias_domain`` tables), so a domain added by ``ops domain add`` or in Postfix Admin's web pages
reaches every node without a ``pulumi up``. ``sync`` (a timer every minute, the plan, and ``ops``
at once) makes this node follow it:

- **DKIM**: each domain other than the cluster's own has a key of its own, generated once by the
  writer (the MariaDB master) and kept in ``mailcluster.dkim_keys``, so every node signs with the
  key DNS publishes, whichever node is active. Each node writes the keys to ``dkim_dir``
  (0640 root:_rspamd) and the selectors to rspamd's ``selector_map``; rspamd notices the map's
  change by itself (a file map, replaced by rename), so no restart.
- **DNS**, on the data centre's DNS masters only: one zone per domain (``zone``'s shared records,
  its SOA and its DKIM key), a ``hosted.conf`` that BIND includes, and the catalog zone (RFC 9432)
  that lists them. The secondaries consume the catalog, so a new domain reaches the other data
  centre's name servers by a zone transfer, with no change to their configuration.
  Serials are kept in the database with a digest of each zone's content: the writer gives
  changed content the next serial (Unix time, or one more), so both masters of a data centre
  serve one serial per content, and a master promoted in the other data centre carries on.
- **DNSSEC** (the stack key ``dnssec``): the writer signs each zone with the zone's key, both kept
  in the database, and stores the signed text beside the serial; every master serves those bytes
  (mailnode/dnssec.py says why one signer), and ``health`` watches the signatures' expiry.
- **Rotation**: ``rotate DOMAIN`` (the writer) adds a key that is published at once and signs
  two TTLs later; the old key is removed a week after that.

The writer makes a new domain's key and drops a gone domain's in ``sync``; ``records DOMAIN``
prints what to set at the registrar; ``status`` compares this node with the database for
``ops status``. Nothing here touches the cluster's own
domain: its zone and key are the plan's (cluster/services/bind.py, rspamd.py).
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from mailnode import dnssec
from mailnode.dnssec import ZoneKey
from mailnode.mysql import DbError, Session

CONFIG = "/etc/mailcluster/domains.json"
CHANGED_MARK = "mailcluster: changed"  # cluster.plan.CHANGED_MARK: a step's output that changed
_DOMAIN = re.compile(r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}")
_SELECTOR = re.compile(r"[a-z][a-z0-9-]{0,62}")
CATALOG_REFRESH_S, CATALOG_RETRY_S = 300, 60
# A rotation's new key is published at once and signs after this many TTLs of the zone (a
# resolver that cached "no such selector" or the old answer has forgotten it by then), plus one
# timer period (the last node to publish it).
ROTATE_AFTER_TTLS = 2
# The old key stays published this long after the new one signs: mail it signed is verified on
# arrival, and a few days cover a queue's retries and a late reader.
RETIRE_AFTER_S = 7 * 86400
KEY_BITS = 2048  # RFC 8301: at least 1024, 2048 recommended; 4096 does not fit every DNS setup
NO_SUCH_TABLE = ("ERROR 1146", "ERROR 1049")  # a replica that has not got the table yet
# A master that is not the writer waits this long (tries x wait) for the writer's serials of
# content it already has (the writer signs: well under a second a zone).
CATCH_UP_TRIES, CATCH_UP_WAIT_S = 10, 1.0
# A member that is in the database but not yet in a secondary's copy waits this long at most
# for the next catalog transfer (BIND's min-update-interval is 5 s by default).
EXPECT_WAIT_S = 15.0


class DomainError(Exception):
    """Bad input or a broken configuration: exit status 2, the message names what is wrong."""


@dataclass(frozen=True)
class Record:
    name: str
    type: str
    value: str


@dataclass(frozen=True)
class Zone:
    """What every further domain's zone shares: SOA timers and the records of ``records``."""

    ttl: int
    soa_mname: str
    soa_rname: str
    refresh: int
    retry: int
    expire: int
    negative_ttl: int
    records: tuple[Record, ...]


@dataclass(frozen=True)
class Config:
    node: str
    main_domain: str
    is_dns_master: bool
    mysql: tuple[str, ...]
    role_script: str
    db: str
    dkim_table: str
    zone_serials_table: str
    postfixadmin_db: str
    dkim_dir: str
    selector_map: str
    key_group: str
    zone: Zone
    zone_dir: str
    hosted_conf: str
    catalog: str
    catalog_file: str
    notify: tuple[str, ...]
    bind_group: str
    named_check: tuple[str, ...]
    named_reload: tuple[str, ...]
    named_running: tuple[str, ...]
    name_servers: tuple[str, ...]
    sync_every_s: int
    named_zones_url: str
    dnssec: bool
    dnssec_table: str
    named_address: str
    # The cluster's own zone: whether it is signed (not with dnssec false, nor where Linode's
    # name servers serve it too), and on a DNS master the plan's unsigned file (mailcluster-zone
    # writes it) and the signed one named serves ("" elsewhere).
    main_zone_signed: bool
    main_zone_file: str
    main_signed_file: str

    @property
    def keys_table(self) -> str:
        return f"{self.db}.{self.dkim_table}"

    @property
    def zone_keys_table(self) -> str:
        return f"{self.db}.{self.dnssec_table}"

    @property
    def serials_table(self) -> str:
        return f"{self.db}.{self.zone_serials_table}"


def iso(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def check_domain(domain: str) -> str:
    d = domain.strip().lower().rstrip(".")
    if not _DOMAIN.fullmatch(d):
        raise DomainError(f"{domain!r} is not a domain name (like example.org)")
    return d


# How a JSON value becomes a field of Config or Zone, by the field's declared type.
_CONVERT: dict[str, Callable[[Any], Any]] = {
    "str": str,
    "int": int,
    "bool": bool,
    "tuple[str, ...]": lambda v: tuple(str(a) for a in v),
}
T = TypeVar("T")


def _fields(cls: type[T], data: Any, **special: Callable[[Any], Any]) -> T:
    """``cls`` from the JSON object ``data``: every field by its type, or by ``special``."""
    values = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        convert = special.get(f.name) or _CONVERT[str(f.type)]
        values[f.name] = convert(data[f.name])
    return cls(**values)


def _domain_of(value: Any) -> str:
    return check_domain(str(value))


def parse_config(data: Any, source: str = CONFIG) -> Config:
    """A ``Config`` from the JSON object the plan writes (cluster/services/domains.py)."""
    try:
        zone = _fields(
            Zone, data["zone"], records=lambda rs: tuple(Record(*map(str, r)) for r in rs)
        )
        cfg = _fields(Config, data, zone=lambda _: zone, main_domain=_domain_of, catalog=_domain_of)
    except (KeyError, TypeError, ValueError, DomainError) as e:
        raise DomainError(f"{source}: {type(e).__name__}: {e}") from None
    paths = (cfg.role_script, cfg.dkim_dir, cfg.selector_map, cfg.zone_dir, cfg.hosted_conf,
             cfg.catalog_file)  # fmt: skip
    if not cfg.mysql or not all(os.path.isabs(p) for p in paths):
        raise DomainError(f"{source}: mysql must be a command and every path absolute")
    return cfg


def load_config(path: str = CONFIG) -> Config:
    try:
        with open(path) as f:
            return parse_config(json.load(f), path)
    except (OSError, ValueError) as e:
        raise DomainError(f"{path}: {e}") from None


# -- the database ------------------------------------------------------------------------------


class Db(Protocol):
    def query(self, sql: str) -> list[list[str]]: ...


@dataclass(frozen=True)
class Key:
    """A DKIM key: published in the zone from the moment it exists, signing from ``active_at``
    (Unix time) until a newer key signs."""

    domain: str
    selector: str
    private_pem: str
    public_b64: str
    active_at: int = 0


def signing_key(keys: Sequence[Key], now: float) -> Key | None:
    """The newest key whose time to sign has come (``keys`` oldest first)."""
    due = [k for k in keys if k.active_at <= now]
    return due[-1] if due else None


def retired(keys: Sequence[Key], now: float) -> list[Key]:
    """Keys older than the signing one, once it has signed for ``RETIRE_AFTER_S``: mail they
    signed has long been verified by then."""
    signer = signing_key(keys, now)
    if signer is None or signer.active_at + RETIRE_AFTER_S > now:
        return []
    return [k for k in keys if k.active_at < signer.active_at]


def table_sql(cfg: Config) -> str:
    """The DKIM keys', the serials' (with each zone's signed text) and the DNSSEC keys' tables
    (the plan creates them on the writer). A private key is a secret made on a node and kept in
    the replicated database, never in a file of the plan."""
    return f"""CREATE DATABASE IF NOT EXISTS {cfg.db};
CREATE TABLE IF NOT EXISTS {cfg.keys_table} (
  domain VARCHAR(253) NOT NULL,
  selector VARCHAR(63) NOT NULL,
  private_key TEXT NOT NULL,
  public_key TEXT NOT NULL,
  created_at DATETIME NOT NULL,
  active_at INT UNSIGNED NOT NULL,
  PRIMARY KEY (domain, selector)
);
CREATE TABLE IF NOT EXISTS {cfg.serials_table} (
  zone VARCHAR(253) NOT NULL PRIMARY KEY,
  serial INT UNSIGNED NOT NULL,
  digest CHAR(64) NOT NULL
);
ALTER TABLE {cfg.serials_table}
  ADD COLUMN IF NOT EXISTS signed MEDIUMTEXT NULL,
  ADD COLUMN IF NOT EXISTS expires INT UNSIGNED NULL;
CREATE TABLE IF NOT EXISTS {cfg.zone_keys_table} (
  zone VARCHAR(253) NOT NULL PRIMARY KEY,
  name VARCHAR(300) NOT NULL,
  public_key TEXT NOT NULL,
  private_key TEXT NOT NULL,
  ds TEXT NOT NULL,
  created_at DATETIME NOT NULL
)"""


def _rows(db: Db, sql: str) -> list[list[str]]:
    """``sql``'s rows; a table a replica has not received yet reads as empty."""
    try:
        return db.query(sql)
    except DbError as e:
        if any(code in str(e) for code in NO_SUCH_TABLE):
            return []
        raise


def hosted_domains(db: Db, cfg: Config) -> list[str]:
    """Every active mail domain and alias domain but the cluster's own, sorted."""
    pfa = cfg.postfixadmin_db
    rows = _rows(
        db,
        f"SELECT domain FROM {pfa}.domain WHERE active=1 AND domain<>'ALL' "
        f"UNION SELECT alias_domain FROM {pfa}.alias_domain WHERE active=1",
    )
    out = set()
    for row in rows:
        d = row[0].strip().lower()
        # Postfix Admin checks names, but a row the checks here refuse is skipped, never
        # written into a zone or a BIND configuration.
        if d != cfg.main_domain and _DOMAIN.fullmatch(d):
            out.add(d)
    return sorted(out)


def stored_keys(db: Db, cfg: Config) -> dict[str, list[Key]]:
    """Each domain's keys, oldest first (the newest signs)."""
    rows = _rows(
        db,
        f"SELECT domain, selector, HEX(private_key), public_key, active_at FROM {cfg.keys_table} "
        "ORDER BY domain, active_at, selector",
    )
    out: dict[str, list[Key]] = {}
    for domain, selector, private_hex, public_b64, active_at in rows:
        if not _DOMAIN.fullmatch(domain) or not _SELECTOR.fullmatch(selector):
            continue
        pem = bytes.fromhex(private_hex).decode()
        key = Key(domain, selector, pem, public_b64, int(active_at))
        out.setdefault(domain, []).append(key)
    return out


def stored_zone_keys(db: Db, cfg: Config) -> dict[str, ZoneKey]:
    """Each zone's DNSSEC key."""
    rows = _rows(db, f"SELECT zone, name, HEX(public_key), HEX(private_key), HEX(ds) "
                     f"FROM {cfg.zone_keys_table}")  # fmt: skip
    out = {}
    for zone, name, public, private, ds in rows:
        if _DOMAIN.fullmatch(zone) and dnssec.key_name_of(zone, name):
            text = [bytes.fromhex(h).decode() for h in (public, private, ds)]
            out[zone] = ZoneKey(zone, name, *text)
    return out


def store_zone_key(db: Db, cfg: Config, key: ZoneKey) -> None:
    db.query(
        f"INSERT IGNORE INTO {cfg.zone_keys_table} "
        "(zone, name, public_key, private_key, ds, created_at) VALUES "
        f"('{key.zone}', '{key.name}', X'{key.public.encode().hex()}', "
        f"X'{key.private.encode().hex()}', X'{key.ds.encode().hex()}', UTC_TIMESTAMP())"
    )


def new_key(
    domain: str, selector: str, active_at: int, run: Callable[..., Any] = subprocess.run
) -> Key:
    """A fresh RSA key, made by openssl on pipes (never a file or a command line)."""
    made = run(
        ["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", f"rsa_keygen_bits:{KEY_BITS}"],
        capture_output=True, check=True,
    )  # fmt: skip
    pem = made.stdout.decode()
    der = run(["openssl", "pkey", "-pubout", "-outform", "DER"], input=made.stdout,
              capture_output=True, check=True).stdout  # fmt: skip
    return Key(domain, selector, pem, base64.b64encode(der).decode(), active_at)


def selector_for(now: float, taken: Iterable[str] = ()) -> str:
    """A new key's selector: the day it was made (a letter more for a second key that day)."""
    day = "s" + time.strftime("%Y%m%d", time.gmtime(now))
    used = set(taken)
    suffixes: list[str] = ["", *"bcdefghijklmnopqrstuvwxyz"]
    for suffix in suffixes:
        selector = f"{day}{suffix}"
        if selector not in used:
            return selector
    raise DomainError(f"26 keys made on {day[1:]} already: rotate again tomorrow")


def store_key(db: Db, cfg: Config, key: Key) -> None:
    db.query(
        f"INSERT IGNORE INTO {cfg.keys_table} "
        "(domain, selector, private_key, public_key, created_at, active_at) VALUES "
        f"('{key.domain}', '{key.selector}', X'{key.private_pem.encode().hex()}', "
        f"'{key.public_b64}', UTC_TIMESTAMP(), {key.active_at})"
    )


# -- files -------------------------------------------------------------------------------------


def write_if_changed(path: str, text: str, mode: int = 0o644, group: str = "") -> bool:
    """Replace ``path`` by rename (readers never see half a file: rspamd's map watcher reads
    it at once), with its mode set before the content is written. False when it already held
    exactly ``text``."""
    try:
        with open(path) as f:
            if f.read() == text:
                return False
    except FileNotFoundError:
        pass
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".mailcluster-")
    try:
        os.fchmod(fd, mode)
        if group:
            import grp

            os.fchown(fd, 0, grp.getgrnam(group).gr_gid)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return True


def key_path(cfg: Config, domain: str, selector: str) -> str:
    return f"{cfg.dkim_dir}/{domain}.{selector}.key"


# -- zones -------------------------------------------------------------------------------------


def txt(text: str) -> str:
    """A TXT value: 255-byte quoted strings (RFC 4408 3.1.3), as topology._txt writes them."""
    return " ".join(f'"{text[i : i + 255]}"' for i in range(0, len(text), 255))


def zone_text(
    cfg: Config, domain: str, keys: Sequence[Key], serial: int, zone_key: ZoneKey | None = None
) -> str:
    z = cfg.zone
    lines = [
        f"; {domain}: managed by mailcluster-domains (mailnode/domains.py); edits are overwritten",
        f"$ORIGIN {domain}.",
        f"$TTL {z.ttl}",
        f"@ IN SOA {z.soa_mname} {z.soa_rname} {serial} {z.refresh} {z.retry} {z.expire} "
        f"{z.negative_ttl}",
    ]
    lines += [f"{r.name} IN {r.type} {r.value}" for r in z.records]
    for key in keys:  # every key that exists is published; the newest signs
        lines.append(
            f"{key.selector}._domainkey IN TXT {txt(f'v=DKIM1; k=rsa; p={key.public_b64}')}"
        )
    if zone_key is not None:  # signed: the key is part of the content (and of its digest)
        lines.append(zone_key.dnskey)
    return "\n".join(lines) + "\n"


# The SOA of a zone file as BIND's tools and mailcluster-zone write it: "@ IN SOA m r ( N ..."
_SOA_SERIAL = re.compile(r"^(@\s+(?:\d+\s+)?IN\s+SOA\s+\S+\s+\S+\s+\(?\s*)(\d+)", re.M)


def soa_serial(text: str) -> int:
    found = _SOA_SERIAL.search(text)
    if not found:
        raise DomainError("no SOA record of the form '@ IN SOA MNAME RNAME ( SERIAL ...'")
    return int(found.group(2))


def member_label(domain: str) -> str:
    """A catalog member's unique label (RFC 9432 4.1): a hash of its name, as BIND's own tests."""
    return hashlib.sha1(domain.encode()).hexdigest()


def catalog_text(cfg: Config, domains: Iterable[str], serial: int) -> str:
    lines = [
        "; the catalog of the cluster's further mail domains (RFC 9432); managed by "
        "mailcluster-domains",
        f"$ORIGIN {cfg.catalog}.",
        "$TTL 0",
        # Polled often (it is small, and a transfer that failed is retried in a minute), and
        # expiring no sooner than the members: an expired catalog would drop them.
        f"@ IN SOA invalid. invalid. {serial} {CATALOG_REFRESH_S} {CATALOG_RETRY_S} "
        f"{cfg.zone.expire} 0",
        "@ IN NS invalid.",
        'version IN TXT "2"',
    ]
    lines += [f"{member_label(d)}.zones IN PTR {d}." for d in domains]
    return "\n".join(lines) + "\n"


def zone_file(cfg: Config, domain: str) -> str:
    return f"{cfg.zone_dir}/db.{domain}"


def hosted_conf_text(cfg: Config, domains: Iterable[str]) -> str:
    notify = "".join(f" {a};" for a in cfg.notify)
    lines = ["// managed by mailcluster-domains (mailnode/domains.py): the further mail domains"]
    for d in domains:
        lines.append(
            f'zone "{d}" {{ type primary; file "{zone_file(cfg, d)}";'
            + (f" also-notify {{{notify} }};" if notify else "")
            + " };"
        )
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Serial:
    """A zone's serial for the content of ``digest``; when signed, the signed text (what every
    master serves, byte for byte) and when its signatures expire."""

    serial: int
    digest: str
    signed: str | None = None
    expires: int = 0


def stored_serials(db: Db, cfg: Config) -> dict[str, Serial]:
    rows = _rows(db, f"SELECT zone, serial, digest, HEX(signed), expires FROM {cfg.serials_table}")
    out = {}
    for zone, serial, dig, signed, expires in rows:
        text = None if signed == "NULL" else bytes.fromhex(signed).decode()
        out[zone] = Serial(int(serial), dig, text, 0 if expires == "NULL" else int(expires))
    return out


def store_serial(db: Db, cfg: Config, zone: str, row: Serial) -> None:
    signed = "NULL" if row.signed is None else f"X'{row.signed.encode().hex()}'"
    expires = str(row.expires) if row.signed is not None else "NULL"
    db.query(
        f"INSERT INTO {cfg.serials_table} (zone, serial, digest, signed, expires) VALUES "
        f"('{zone}', {row.serial}, '{row.digest}', {signed}, {expires}) ON DUPLICATE KEY "
        "UPDATE serial=VALUES(serial), digest=VALUES(digest), signed=VALUES(signed), "
        "expires=VALUES(expires)"
    )


def digest(render: Callable[[int], str]) -> str:
    """What a zone holds, its serial aside: equal digests, equal zones."""
    return hashlib.sha256(render(0).encode()).hexdigest()


def next_serial(old: Serial | None, now: float) -> int:
    """Unix time, or one more than the last serial when that is already ahead (two changes in
    one second); within the 32 bits of RFC 1982 arithmetic for the next 80 years."""
    return min(max((old.serial + 1) if old else 0, int(now)), 2**32 - 1)


# -- sync --------------------------------------------------------------------------------------


@dataclass
class Node:
    """One node's view: the database, the files, and the commands it runs."""

    cfg: Config
    db: Db
    run: Callable[..., subprocess.CompletedProcess[Any]] = subprocess.run
    clock: Callable[[], float] = time.time
    say: Callable[[str], None] = print
    sleep: Callable[[float], None] = time.sleep

    def is_writer(self) -> bool:
        return self.run([self.cfg.role_script, "is-writer"], check=False).returncode == 0

    def changed(self, what: str) -> None:
        self.say(f"{CHANGED_MARK} {what}")

    def sync(self) -> list[str]:
        """Make this node follow the database; returns the hosted domains."""
        writer = self.is_writer()
        domains, behind = self._sync_once(writer)
        # The other master of the data centre: the writer's sync (an apply runs both at once)
        # may store the new rows a moment after this one looked. Look again briefly rather
        # than serve the old zones until the next timer run.
        for _ in range(CATCH_UP_TRIES if behind and not writer else 0):
            self.sleep(CATCH_UP_WAIT_S)
            domains, behind = self._sync_once(writer)
            if not behind:
                break
        return domains

    def _sync_once(self, writer: bool) -> tuple[list[str], list[str]]:
        """The hosted domains, and the zones whose content has no serial in the database yet."""
        domains = hosted_domains(self.db, self.cfg)
        keys = stored_keys(self.db, self.cfg)
        if writer:
            keys = self._keys_follow_domains(domains, keys)
        signing = {d: keys[d] for d in domains if keys.get(d)}
        self._write_keys(signing)
        behind: list[str] = []
        if self.cfg.is_dns_master:
            zone_keys = self._zone_keys(domains, writer)
            behind = self._write_zones(domains, signing, writer, zone_keys)
        return domains, behind

    def _zone_keys(self, domains: list[str], writer: bool) -> dict[str, ZoneKey]:
        """The DNSSEC keys of the zones to sign (none with ``dnssec`` off). The writer makes a
        new zone's key and drops a gone zone's; a key outlives ``dnssec: false`` (turned on
        again, the zone signs with the key whose DS the parent may still hold)."""
        cfg = self.cfg
        keys = stored_zone_keys(self.db, cfg)
        zones = [*domains, *([cfg.main_domain] if cfg.main_zone_signed else [])]
        if writer:
            for d in sorted(set(keys) - set(zones) - {cfg.main_domain}):
                self.db.query(f"DELETE FROM {cfg.zone_keys_table} WHERE zone='{d}'")
                self.changed(f"DNSSEC key of {d} removed")
            for d in zones if cfg.dnssec else ():
                if d not in keys:
                    key = dnssec.new_key(d, cfg.zone.ttl, self.run)
                    store_zone_key(self.db, cfg, key)
                    self.changed(f"DNSSEC key {key.tag} for {d}")
            keys = stored_zone_keys(self.db, cfg)
        return {d: k for d, k in keys.items() if d in zones} if cfg.dnssec else {}

    def _keys_follow_domains(
        self, domains: list[str], keys: dict[str, list[Key]]
    ) -> dict[str, list[Key]]:
        """On the writer: a key for each domain that has none, none for a domain gone."""
        now = self.clock()
        for d in domains:
            if d not in keys:  # a new domain's first key signs at once: nothing to wait for
                key = new_key(d, selector_for(now), int(now), self.run)
                store_key(self.db, self.cfg, key)
                self.changed(f"DKIM key {key.selector} for {d}")
        for d in sorted(set(keys) - set(domains)):
            self.db.query(f"DELETE FROM {self.cfg.keys_table} WHERE domain='{d}'")
            self.changed(f"DKIM keys of {d} removed")
        for d in sorted(set(keys) & set(domains)):
            for old in retired(keys[d], now):
                self.db.query(f"DELETE FROM {self.cfg.keys_table} "
                              f"WHERE domain='{d}' AND selector='{old.selector}'")  # fmt: skip
                self.changed(f"DKIM key {old.selector} of {d} retired")
        return stored_keys(self.db, self.cfg)

    def rotate(self, domain: str) -> str:
        """On the writer: a new key for ``domain``, published now, signing after
        ``ROTATE_AFTER_TTLS`` TTLs; refused while a rotation is under way."""
        d = check_domain(domain)
        if not self.is_writer():
            raise DomainError("not the writer: run it on the node that serves mail")
        if d not in hosted_domains(self.db, self.cfg):
            raise DomainError(f"{d} is not a mail domain of this cluster (`domain add {d}`)")
        keys = stored_keys(self.db, self.cfg).get(d, [])
        now = self.clock()
        pending = [k for k in keys if k.active_at > now]
        if pending:
            raise DomainError(f"a rotation of {d} is under way: {pending[-1].selector} signs from "
                              f"{iso(pending[-1].active_at)}")  # fmt: skip
        z = self.cfg.zone
        wait = ROTATE_AFTER_TTLS * max(z.ttl, z.negative_ttl) + self.cfg.sync_every_s
        key = new_key(d, selector_for(now, (k.selector for k in keys)), int(now + wait), self.run)
        store_key(self.db, self.cfg, key)
        old = signing_key(keys, now)
        return (f"{d}: new DKIM key {key.selector}, published now, signs from "
                f"{iso(key.active_at)} ({wait} s: {ROTATE_AFTER_TTLS} TTLs of {z.ttl} s and a "
                f"timer period); {old.selector if old else 'no key'} signs until then and stays "
                f"published {RETIRE_AFTER_S // 86400} days more\n")  # fmt: skip

    def _write_keys(self, signing: dict[str, list[Key]]) -> None:
        """Every key that exists (a rotation's next key is in place before it signs); the map
        names the one that signs now."""
        cfg = self.cfg
        wanted: set[str] = set()
        for d, ks in signing.items():
            for k in ks:
                path = key_path(cfg, d, k.selector)
                wanted.add(os.path.basename(path))
                if write_if_changed(path, k.private_pem, 0o640, cfg.key_group):
                    self.changed(f"{path}")
        # The newest key signs (rspamd: the selector, then path's $domain.$selector).
        now = self.clock()
        signers = {d: signing_key(ks, now) for d, ks in sorted(signing.items())}
        text = "".join(f"{d} {k.selector}\n" for d, k in signers.items() if k)
        if write_if_changed(cfg.selector_map, text):
            self.changed(cfg.selector_map)
        for name in sorted(os.listdir(cfg.dkim_dir)):
            if name.endswith(".key") and name not in wanted:
                os.unlink(f"{cfg.dkim_dir}/{name}")
                self.changed(f"{cfg.dkim_dir}/{name} removed")

    def _write_zones(self, domains: list[str], signing: dict[str, list[Key]], writer: bool,
                     zone_keys: dict[str, ZoneKey]) -> list[str]:  # fmt: skip
        """Each zone with the serial the database holds for its content. The writer gives a
        zone whose content changed the next serial (``next_serial``) and stores it with the
        content's digest (and, signed, the signed text); another master waits for that row (a
        timer run or ``ops``), so both masters of a data centre serve one serial per content,
        and a master promoted in the other data centre continues from the serials the old one
        published. Returns the zones whose content has no serial yet (a master that is not
        the writer waits for it)."""
        cfg = self.cfg
        serials = stored_serials(self.db, cfg)
        behind: list[str] = []

        def renderer(d: str) -> Callable[[int], str]:
            return lambda serial: zone_text(cfg, d, signing.get(d, []), serial, zone_keys.get(d))

        served: list[str] = []
        changed = False
        for d in domains:
            serves, written, current = self._zone(d, zone_file(cfg, d), renderer(d), serials,
                                                  writer, zone_keys.get(d))  # fmt: skip
            behind += [] if current else [d]
            served += [d] if serves else []
            changed |= written

        def catalog(serial: int) -> str:
            return catalog_text(cfg, served, serial)

        if write_if_changed(cfg.hosted_conf, hosted_conf_text(cfg, served), 0o644, cfg.bind_group):
            self.changed(cfg.hosted_conf)
            changed = True
        _, written, current = self._zone(cfg.catalog, cfg.catalog_file, catalog, serials, writer)
        changed |= written
        behind += [] if current else [cfg.catalog]
        wanted = {os.path.basename(zone_file(cfg, d)) for d in served}
        for name in sorted(os.listdir(cfg.zone_dir)):
            if name.startswith("db.") and name not in wanted:
                os.unlink(f"{cfg.zone_dir}/{name}")
                self.changed(f"zone file {name} removed")
        if writer:
            gone = sorted(set(serials) - set(domains) - {cfg.catalog, cfg.main_domain})
            for zone in gone:
                self.db.query(f"DELETE FROM {cfg.serials_table} WHERE zone='{zone}'")
        main_key = zone_keys.get(cfg.main_domain)
        if main_key is not None:
            written, current = self._main_zone(serials, writer, main_key)
            changed |= written
            behind += [] if current else [cfg.main_domain]
        if changed:
            self._reload_named()
        return behind

    def _main_zone(self, serials: dict[str, Serial], writer: bool, key: ZoneKey
                   ) -> tuple[bool, bool]:  # fmt: skip
        """The cluster's own zone, signed as the others: its records are the plan's (the file
        mailcluster-zone keeps, with a serial of its own, YYYYMMDDnn), so the signed serial is
        above that one too (the secondaries must never see it go down)."""
        cfg = self.cfg
        try:
            with open(cfg.main_zone_file) as f:
                plan_text = f.read()
        except FileNotFoundError:
            return False, True  # the plan's bind.zone step writes it before named starts
        plan_serial = soa_serial(plan_text)
        # Its records only: the comments carry this node's own serial (mailcluster-zone's
        # template names it), and both masters must see the same content.
        records = "".join(line for line in plan_text.splitlines(keepends=True)
                          if not line.lstrip().startswith(";"))  # fmt: skip

        def render(serial: int) -> str:
            return _SOA_SERIAL.sub(rf"\g<1>{serial}", records, count=1) + key.dnskey + "\n"

        _, written, current = self._zone(cfg.main_domain, cfg.main_signed_file, render, serials,
                                         writer, key, floor=plan_serial + 1)  # fmt: skip
        return written, current

    def _zone(self, zone: str, path: str, render: Callable[[int], str],
              serials: dict[str, Serial], writer: bool,
              key: ZoneKey | None = None, floor: int = 0) -> tuple[bool, bool, bool]:  # fmt: skip
        """Write ``zone``'s file when its content or serial changed. Returns whether the zone
        can be served (not when this content has no serial yet and this node is not the writer,
        unless it served the zone before), whether the file was written, and whether the
        database holds a serial for this content (not yet: the writer's is a moment away). With
        ``key``, the writer also signs the zone, again whenever its signatures have less than
        ``dnssec.RESIGN_LEFT_S`` left (a new serial: the secondaries take the new signatures);
        ``floor``: the least serial it may give (the cluster's own zone: above the plan's)."""
        d = digest(render)
        row = serials.get(zone)
        now = self.clock()
        current = row is not None and row.digest == d
        due = key is not None and (
            row is None or row.signed is None or row.expires - now < dnssec.RESIGN_LEFT_S
        )
        if not current and not writer:
            # The writer has not given this content a serial yet (it runs at the same time, or
            # its row is a moment away): what this node served so far still serves.
            return os.path.exists(path), False, False
        if writer and (not current or due):
            serial = max(next_serial(row, now), floor)
            if key is None:
                row = Serial(serial, d)
            else:
                signed, expires = dnssec.sign(zone, render(serial), key, now, self.run)
                row = Serial(serial, d, signed, expires)
            store_serial(self.db, self.cfg, zone, row)
        assert row is not None
        text = row.signed if row.signed is not None else render(row.serial)
        written = write_if_changed(path, text, 0o644, self.cfg.bind_group)
        if written:
            self.changed(f"zone {zone} serial {row.serial}")
        return True, written, True

    def _reload_named(self) -> None:
        if self.run(list(self.cfg.named_running), capture_output=True, check=False).returncode:
            return  # named is not running: the plan's start loads these files
        check = self.run(list(self.cfg.named_check), capture_output=True, text=True, check=False)
        if check.returncode:
            raise DomainError(f"named-checkconf refuses the zones: {check.stdout}{check.stderr}")
        self.run(list(self.cfg.named_reload), capture_output=True, check=True)

    def init(self) -> None:
        """The files BIND's configuration names, made empty when missing (the plan, before it
        starts or reloads named; no database needed)."""
        cfg = self.cfg
        for directory in (cfg.zone_dir, os.path.dirname(cfg.hosted_conf)):
            os.makedirs(directory, mode=0o755, exist_ok=True)
        if not os.path.exists(cfg.hosted_conf):
            write_if_changed(cfg.hosted_conf, hosted_conf_text(cfg, []), 0o644, cfg.bind_group)
            self.changed(cfg.hosted_conf)
        if not os.path.exists(cfg.catalog_file):
            # Serial 1: below any the writer gives (Unix time), so this empty stand-in never
            # outranks the database's catalog.
            text = catalog_text(cfg, [], 1)
            write_if_changed(cfg.catalog_file, text, 0o644, cfg.bind_group)
            self.changed(cfg.catalog_file)

    def status(self, served: dict[str, int] | None = None) -> dict[str, Any]:
        """What ``ops status`` checks on this node: every hosted domain's zone loaded by named
        with the serial the database holds (masters and secondaries alike), and rspamd naming
        the key that signs now (a switch is given two timer periods). ``served``: named's
        serials (read from its statistics channel when None)."""
        cfg, now = self.cfg, self.clock()
        domains = hosted_domains(self.db, cfg)
        keys = stored_keys(self.db, cfg)
        serials = stored_serials(self.db, cfg)
        if served is None:
            served = named_serials(cfg.named_zones_url)
        mapped = read_selector_map(cfg.selector_map)
        problems: list[str] = []
        for d in domains:
            want, got = serials.get(d), served.get(d)
            if want is None:
                problems.append(f"{d}: no serial in the database yet (the writer's sync)")
            elif got != want.serial:
                problems.append(f"{d}: named serves {got or 'nothing'}, the database has "
                                f"{want.serial}")  # fmt: skip
            signer = signing_key(keys.get(d, []), now)
            late = signer is not None and now - signer.active_at > 2 * cfg.sync_every_s
            if signer is None:
                problems.append(f"{d}: no DKIM key")
            elif mapped.get(d) != signer.selector and late:
                problems.append(f"{d}: rspamd signs with {mapped.get(d) or 'nothing'}, not "
                                f"{signer.selector}")  # fmt: skip
        return {"domains": domains, "problems": problems}

    def signatures(self, served: Callable[[str], int | None] | None = None
                   ) -> list[tuple[str, bool, str, str]]:  # fmt: skip
        """mailcluster-health's lines for the signed zones: when the signatures this node's
        named serves expire. Less than ``dnssec.ALERT_LEFT_S`` left fails on the writer (it
        failed to re-sign: one report for the cluster, as every node serves its bytes) and on
        any other node that serves older signatures than the database holds (its copy is
        stale: only it knows). ``served``: a zone's expiry as named serves it (asked over
        loopback); None when unsigned or not served."""
        cfg, now = self.cfg, self.clock()
        ask = served or (lambda z: dnssec.served_expiry(z, cfg.named_address, self.run))
        serials = stored_serials(self.db, cfg)
        writer: bool | None = None
        out = []
        own = [cfg.main_domain] if cfg.main_zone_signed else []
        for d in [*own, *hosted_domains(self.db, cfg)]:
            row = serials.get(d)
            if row is None or row.signed is None:
                continue  # not signed (dnssec: false), or the writer has not signed it yet
            expires = ask(d)
            if expires is None:
                out.append((f"dnssec.{d}", False, "unsigned", "named here serves no signed SOA"))
                continue
            left = expires - now
            detail = f"signatures served here expire {iso(expires)}"
            if left < dnssec.ALERT_LEFT_S:
                writer = self.is_writer() if writer is None else writer
                if writer:
                    # Since when (an alert's grace counts from there: mailnode/alerts.py). A
                    # stale copy elsewhere gets no such start: its grace covers a transfer
                    # that is a moment behind a re-signing.
                    detail += f"; failing for {int(now - expires + dnssec.ALERT_LEFT_S)}s"
                if writer or expires < row.expires:
                    out.append((f"dnssec.{d}", False, f"{left / 86400:.1f}", detail))
                    continue
                detail += " (as the database holds them: the writer reports it)"
            out.append((f"dnssec.{d}", True, f"{left / 86400:.1f}", detail))
        return out

    def _main_records(self) -> str:
        """The cluster's own domain: its delegation and glue are the stack's (README, Day 1);
        what only the database knows is its DNSSEC key."""
        d, key = self.cfg.main_domain, stored_zone_keys(self.db, self.cfg).get(self.cfg.main_domain)
        lines = [f"{d} is the cluster's own domain: at its registrar, the name servers "
                 f"{' and '.join(n.rstrip('.') for n in self.cfg.name_servers)} with their glue "
                 "(the data centres' shared addresses: README, Day 1)"]  # fmt: skip
        if not self.cfg.main_zone_signed:
            lines.append(
                "DS: none (the zone is not signed: the stack key dnssec is false, or "
                "linodeSecondaryDns is true and Linode's name servers serve no DNSSEC)"
            )
        elif key is None:
            lines.append("DS: none yet (the writer makes the zone's key at its next sync)")
        else:
            lines += ["and, once the zone resolves signed, publish this DS record there:",
                      f"  {key.ds}", f"The zone's key: {key.dnskey}"]  # fmt: skip
        return "\n".join(lines) + "\n"

    def records(self, domain: str) -> str:
        """What the operator sets at the registrar, and the zone the cluster serves."""
        d = check_domain(domain)
        if d == self.cfg.main_domain:
            return self._main_records()
        if d not in hosted_domains(self.db, self.cfg):
            raise DomainError(f"{d} is not a mail domain of this cluster (`domain add {d}`)")
        keys = stored_keys(self.db, self.cfg).get(d, [])
        lines = [f"At the registrar of {d}, delegate it to the cluster's name servers:"]
        lines += [f"  {d}. NS {ns}" for ns in self.cfg.name_servers]
        lines.append("  (no glue: the name servers are in another domain)")
        zone_key = stored_zone_keys(self.db, self.cfg).get(d)
        if not self.cfg.dnssec:
            lines.append("DS: none (the stack key dnssec is false: the zone is not signed)")
        elif zone_key is None:
            lines.append("DS: none yet (the writer makes the zone's key at its next sync)")
        else:
            lines.append("and, once the zone resolves signed, publish this DS record there:")
            lines.append(f"  {zone_key.ds}")
        signer = signing_key(keys, self.clock())
        for k in keys:
            state = (
                "signs"
                if k is signer
                else (
                    f"signs from {iso(k.active_at)}" if k.active_at > self.clock() else "retiring"
                )
            )
            lines.append(f"DKIM {k.selector}: {state}")
        lines.append(f"The zone the cluster serves for {d} (the same records, to publish them")
        lines.append("elsewhere instead):")
        zone = zone_text(self.cfg, d, keys, 0, zone_key if self.cfg.dnssec else None).splitlines()
        lines += ["  " + line for line in zone if not line.startswith((";", "$", "@ IN SOA"))]
        return "\n".join(lines) + "\n"


def named_serials(url: str) -> dict[str, int]:
    """Every zone named has loaded in its default view, and its serial (BIND's statistics
    channel, JSON)."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as r:
        data = json.load(r)
    zones = data.get("views", {}).get("_default", {}).get("zones", [])
    return {str(z["name"]): int(z["serial"]) for z in zones if "serial" in z}


def read_selector_map(path: str) -> dict[str, str]:
    try:
        with open(path) as f:
            return dict(line.split()[:2] for line in f if len(line.split()) >= 2)
    except FileNotFoundError:
        return {}


def wait_for(node: Node, domain: str, present: bool, timeout_s: float = EXPECT_WAIT_S) -> None:
    """Sync until ``domain`` is (or is not) among the hosted ones: a replica may be a few
    milliseconds behind the writer that ``ops`` just changed."""
    deadline = time.monotonic() + timeout_s
    while (domain in node.sync()) != present:
        if time.monotonic() > deadline:
            state = "not yet" if present else "still"
            raise DomainError(f"{domain} is {state} in this node's database after {timeout_s} s")
        time.sleep(0.5)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mailcluster-domains", description=__doc__.split("\n")[0])
    p.add_argument("--config", default=CONFIG)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sync", help="follow the database (keys, zones, catalog)")
    s.add_argument("--expect", metavar="DOMAIN", help="wait until DOMAIN is hosted here")
    s.add_argument("--expect-gone", metavar="DOMAIN", help="wait until DOMAIN is gone here")
    sub.add_parser("init", help="the files BIND names, empty when missing")
    sub.add_parser("table-sql", help="print the keys' table (the plan runs it on the writer)")
    sub.add_parser("records").add_argument("domain")
    sub.add_parser("status", help="this node's zones and keys against the database (JSON)")
    sub.add_parser("health", help="mailcluster-health's lines: the signatures served here")
    sub.add_parser("rotate", help="a new DKIM key (the writer)").add_argument("domain")
    sub.add_parser("check").add_argument("domain")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    session: Session | None = None
    try:
        cfg = load_config(args.config)
        if args.command == "table-sql":
            print(table_sql(cfg))
            return 0
        session = Session(cfg.mysql)
        node = Node(cfg, session)
        if args.command == "init":
            node.init()
        elif args.command == "sync":
            if args.expect:
                wait_for(node, check_domain(args.expect), True)
            elif args.expect_gone:
                wait_for(node, check_domain(args.expect_gone), False)
            else:
                node.sync()
        elif args.command == "records":
            print(node.records(args.domain), end="")
        elif args.command == "status":
            print(json.dumps(node.status()))
        elif args.command == "health":
            for name, ok, value, detail in node.signatures():
                print(f"{name}\t{'ok' if ok else 'fail'}\t{value}\t{detail}")
        elif args.command == "rotate":
            print(node.rotate(args.domain), end="")
        elif args.command == "check":
            # ops asks before it adds or deletes: the cluster's own domain is the plan's.
            d = check_domain(args.domain)
            if d == cfg.main_domain:
                raise DomainError(f"{d} is the cluster's own domain (the stack key `domain`)")
            print(d)
    except DomainError as e:
        print(f"mailcluster-domains: {e}", file=sys.stderr)
        return 2
    except (DbError, dnssec.DnssecError, subprocess.CalledProcessError, OSError) as e:
        print(f"mailcluster-domains: {e}", file=sys.stderr)
        return 1
    finally:
        if session is not None:
            session.close()
    return 0
