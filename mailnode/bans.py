"""mailcluster-bans: cluster-wide bans (fail2ban's action, the operator's commands, the loader).

A ban is an element of this node's nft set (``inet <table> <set4|set6>``, with the ban's
remaining time as its timeout: it expires by itself) and a row of the replicated table
``<db>.<db_table>`` (``expires_at``; ``changed_at``, the loader's watermark). Commands::

    mailcluster-bans ban IP SECONDS JAIL [SINCE]   fail2ban's actionban (SINCE: the ban's start,
                                                   epoch seconds; default now)
    mailcluster-bans unban IP JAIL                 fail2ban's actionunban; JAIL "manual": an
                                                   operator lifts every ban of IP
    mailcluster-bans sync                          one round of the loader, now
    mailcluster-bans loop                          the loader (mailcluster-bans.service)
    mailcluster-bans list                          the bans in force, from the table

Only the writer (the active data centre's shared-IP holder, the MariaDB master; the role script
answers ``is-writer``) writes the table: root bypasses read_only, and a write on a replica would
fork the GTID history. Another node keeps its bans in the pending file and records them when it
becomes the writer. Attacks on mail and web reach the writer, so their bans are in the table at
once; a standby's own bans (only sshd can raise one) stay local until then.

The loader runs on every node: every ``poll_s`` it reads, from its own replica, the rows changed
since the last it saw (``changed_at`` above the watermark, less ``slack_s`` for statements
that committed out of order) and applies them to its sets: a ban with its remaining time, a lifted
ban (``expires_at`` in the past) removed. Every ``resync_s`` it puts back any ban in force that is
missing from the sets (a restarted nftables.service starts with empty sets). On the writer it
records the pending bans and deletes rows that ended over ``purge_after_s`` ago.

``adminCidrs``, loopback and the cluster's own addresses (``never_ban``) are refused here too,
whatever fail2ban or a row asks.
"""

from __future__ import annotations

import argparse
import datetime as dt
import fcntl
import ipaddress
import json
import math
import os
import re
import subprocess
import sys
import syslog
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

from mailnode.mysql import DbError, Session

CONFIG = "/etc/mailcluster/bans.json"
MANUAL = "manual"  # the jail name of an operator's unban: every ban of the address is lifted
MAX_BAN_S = 366 * 86400  # banTimeSeconds allows 30 days; anything above a year is a typo
PENDING_RETRY_S = 5.0  # how often a node with pending bans asks whether it became the writer
PURGE_EVERY_S = 600.0
MAX_BACKOFF_S = 10.0
_JAIL = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_NAME = re.compile(r"[A-Za-z0-9_]{1,64}")
_DATETIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d{1,6})?")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class BanError(Exception):
    """Bad input, or a ban that must not happen: the message names the value and the rule."""


class FirewallError(Exception):
    """nft refused a change or a listing."""


# -- configuration (written by the plan: cluster/services/fail2ban.py) ----------------------------
@dataclass(frozen=True)
class Config:
    node: str
    table: str
    set4: str
    set6: str
    db: str
    db_table: str
    mysql: tuple[str, ...]
    nft: tuple[str, ...]
    role_script: str
    pending: str
    never_ban: tuple[Network, ...]
    poll_s: float
    slack_s: int
    resync_s: float
    purge_after_s: int

    @property
    def sql_table(self) -> str:
        return f"{self.db}.{self.db_table}"


def parse_config(data: Any, source: str = CONFIG) -> Config:
    """A ``Config`` from the JSON object the plan writes; every bad key reported at once."""
    if not isinstance(data, dict):
        raise BanError(f"{source}: a JSON object is needed")
    errors: list[str] = []

    def get(key: str, kind: Any, check: Callable[[Any], object], rule: str) -> Any:
        value = data.get(key)
        ok = isinstance(value, kind) and not isinstance(value, bool) and check(value)
        if not ok:
            errors.append(f"{key}: {rule} (got {value!r})")
        return value

    def argv(value: Any) -> bool:
        return bool(value) and all(isinstance(a, str) and a for a in value)

    def networks(value: Any) -> bool:
        try:
            [ipaddress.ip_network(v, strict=False) for v in value]
        except (TypeError, ValueError):
            return False
        return True

    name = "letters, digits or _ (at most 64)"
    node = get("node", str, lambda v: bool(_JAIL.fullmatch(v)), "a node name")
    table = get("table", str, _NAME.fullmatch, f"an nft table name: {name}")
    set4 = get("set4", str, _NAME.fullmatch, f"an nft set name: {name}")
    set6 = get("set6", str, _NAME.fullmatch, f"an nft set name: {name}")
    db = get("db", str, _NAME.fullmatch, f"a database name: {name}")
    db_table = get("db_table", str, _NAME.fullmatch, f"a table name: {name}")
    mysql = get("mysql", list, argv, "the client command as a non-empty list of strings")
    nft = get("nft", list, argv, "the nft command as a non-empty list of strings")
    role = get("role_script", str, os.path.isabs, "an absolute path")
    pending = get("pending", str, os.path.isabs, "an absolute path")
    never = get("never_ban", list, networks, "a list of addresses or networks (CIDR)")
    poll = get("poll_s", (int, float), lambda v: 0.05 <= v <= 60, "seconds, 0.05 to 60")
    slack = get("slack_s", int, lambda v: 0 <= v <= 3600, "whole seconds, 0 to 3600")
    resync = get("resync_s", (int, float), lambda v: 1 <= v <= 86400, "seconds, 1 to 86400")
    purge = get("purge_after_s", int, lambda v: v >= 3600, "whole seconds, at least 3600")
    if errors:
        raise BanError(f"{source}: " + "; ".join(errors))
    return Config(
        node=node, table=table, set4=set4, set6=set6, db=db, db_table=db_table,
        mysql=tuple(mysql), nft=tuple(nft), role_script=role, pending=pending,
        never_ban=tuple(ipaddress.ip_network(v, strict=False) for v in never),
        poll_s=float(poll), slack_s=slack, resync_s=float(resync), purge_after_s=purge,
    )  # fmt: skip


def load_config(path: str = CONFIG) -> Config:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise BanError(f"{path}: {e}") from None
    return parse_config(data, path)


# -- input checks: whatever reaches SQL or nft is one of these ------------------------------------
def parse_address(text: str) -> str:
    """The address in its canonical form (``2001:DB8::1`` -> ``2001:db8::1``)."""
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise BanError(f"bad address {text!r}: not an IPv4 or IPv6 address") from None


def parse_seconds(text: str) -> int:
    if not re.fullmatch(r"[0-9]{1,9}", text) or not 1 <= int(text) <= MAX_BAN_S:
        raise BanError(f"bad seconds {text!r}: a whole number from 1 to {MAX_BAN_S}")
    return int(text)


def parse_jail(text: str) -> str:
    if not _JAIL.fullmatch(text):
        raise BanError(f"bad jail {text!r}: 1 to 64 letters, digits, '_', '.' or '-'")
    return text


def parse_since(text: str) -> float:
    try:
        since = float(text)
    except ValueError:
        since = math.nan
    if not (math.isfinite(since) and since >= 0):
        raise BanError(f"bad start {text!r}: the ban's start in seconds since the epoch")
    return since


def _datetime(text: str) -> dt.datetime:
    """A DATETIME(6) the table returned (checked before it goes back into SQL)."""
    if not _DATETIME.fullmatch(text):
        raise DbError(f"unexpected time stamp {text!r} from the table")
    return dt.datetime.fromisoformat(text)


def _sql_time(value: dt.datetime) -> str:
    return value.isoformat(sep=" ", timespec="microseconds")


# -- the firewall ----------------------------------------------------------------------------------
class Firewall(Protocol):
    def apply(self, script: str) -> None:
        """Run ``script`` (nft commands, one a line) as one transaction."""

    def elements(self, set_name: str) -> dict[str, float | None]:
        """The set's addresses and the seconds each has left (None: no timeout)."""


@dataclass
class NftCli:
    """``Firewall`` through the ``nft`` command."""

    argv: Sequence[str]
    table: str

    def apply(self, script: str) -> None:
        proc = subprocess.run([*self.argv, "-f", "-"], input=script, capture_output=True,
                              text=True, timeout=30)  # fmt: skip
        if proc.returncode != 0:
            raise FirewallError(f"nft: {proc.stderr.strip() or proc.returncode}")

    def elements(self, set_name: str) -> dict[str, float | None]:
        proc = subprocess.run([*self.argv, "-j", "list", "set", "inet", self.table, set_name],
                              capture_output=True, text=True, timeout=30)  # fmt: skip
        if proc.returncode != 0:
            raise FirewallError(f"nft: {proc.stderr.strip() or proc.returncode}")
        return set_elements(json.loads(proc.stdout))


def set_elements(listing: dict[str, Any]) -> dict[str, float | None]:
    """Addresses and seconds left from ``nft -j list set`` (an element is a plain value, or an
    ``elem`` object when it has a timeout)."""
    found: dict[str, float | None] = {}
    for item in listing.get("nftables", []):
        for elem in item.get("set", {}).get("elem", []):
            if isinstance(elem, dict) and "elem" in elem:
                inner = elem["elem"]
                left = inner.get("expires", inner.get("timeout"))
                found[str(inner["val"])] = float(left) if left is not None else None
            elif isinstance(elem, str):
                found[elem] = None
    return found


def _set_for(cfg: Config, address: str) -> str:
    return cfg.set6 if ":" in address else cfg.set4


def ban_lines(cfg: Config, address: str, seconds: int) -> list[str]:
    """nft lines that leave ``address`` banned for exactly ``seconds``, present or not. (A plain
    ``add`` keeps an existing element's timeout on older kernels; ``delete`` fails on an absent
    one: add, delete, add, in one transaction, works on both.)"""
    where = f"inet {cfg.table} {_set_for(cfg, address)}"
    add = f"add element {where} {{ {address} timeout {seconds}s }}"
    return [add, f"delete element {where} {{ {address} }}", add]


def lift_lines(cfg: Config, address: str) -> list[str]:
    """nft lines that leave ``address`` unbanned, whether it was banned or not."""
    where = f"inet {cfg.table} {_set_for(cfg, address)}"
    return [f"add element {where} {{ {address} timeout 1s }}",
            f"delete element {where} {{ {address} }}"]  # fmt: skip


# -- the pending file: a non-writer's bans, "IP SECONDS JAIL START" a line ----------------------
@dataclass(frozen=True)
class Pending:
    address: str
    seconds: int
    jail: str
    since: float

    def left(self, now: float) -> int:
        return math.ceil(self.seconds - (now - self.since))

    def line(self) -> str:
        return f"{self.address} {self.seconds} {self.jail} {int(self.since)}\n"


@dataclass
class PendingFile:
    path: str
    log: Callable[[int, str], None]

    @contextmanager
    def _locked(self) -> Iterator[IO[str]]:
        # fail2ban runs several actions at once, and the loader takes the file: one at a time.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        with os.fdopen(fd, "r+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield f

    def _parse(self, f: IO[str]) -> list[Pending]:
        f.seek(0)
        out: list[Pending] = []
        for line in f:
            try:
                ip, secs, jail, since = line.split()
                out.append(Pending(parse_address(ip), parse_seconds(secs), parse_jail(jail),
                                   parse_since(since)))  # fmt: skip
            except (ValueError, BanError) as e:
                self.log(syslog.LOG_WARNING, f"{self.path}: skipped a bad line {line!r}: {e}")
        return out

    def _write(self, f: IO[str], entries: Iterable[Pending]) -> None:
        f.seek(0)
        f.truncate()
        f.writelines(p.line() for p in entries)

    def entries(self) -> list[Pending]:
        if not os.path.exists(self.path):
            return []
        with self._locked() as f:
            return self._parse(f)

    def add(self, entry: Pending) -> None:
        with self._locked() as f:
            f.seek(0, os.SEEK_END)
            f.write(entry.line())

    def drop(self, address: str, jail: str | None) -> None:
        """Forget ``address``'s entries (of ``jail`` only, unless None)."""
        if not os.path.exists(self.path):
            return
        with self._locked() as f:
            kept = [p for p in self._parse(f)
                    if p.address != address or (jail is not None and p.jail != jail)]  # fmt: skip
            self._write(f, kept)

    def take(self, record: Callable[[list[Pending]], None]) -> int:
        """Hand every entry to ``record``; the file is emptied only if that succeeds."""
        if not os.path.exists(self.path) or os.path.getsize(self.path) == 0:
            return 0
        with self._locked() as f:
            entries = self._parse(f)
            if entries:
                record(entries)
            self._write(f, [])
            return len(entries)


# -- the commands ----------------------------------------------------------------------------------
class Sql(Protocol):
    def query(self, sql: str) -> list[list[str]]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Row:
    """A row of the table as the loader reads it."""

    address: str
    expires_at: str
    left: int  # whole seconds the ban still holds; 0: over or lifted
    changed_at: str


def _log_to_syslog(priority: int, message: str) -> None:
    syslog.syslog(syslog.LOG_AUTH | priority, message)


@dataclass
class Bans:
    """Everything a node does with bans. ``db``, ``nft``, ``is_writer`` and ``clock`` are the
    outside world (the unit tests give fakes)."""

    cfg: Config
    db: Sql
    nft: Firewall
    is_writer: Callable[[], bool]
    clock: Callable[[], float] = time.time
    log: Callable[[int, str], None] = _log_to_syslog
    pending: PendingFile = field(init=False)

    def __post_init__(self) -> None:
        self.pending = PendingFile(self.cfg.pending, self.log)

    def protected(self, address: str) -> Network | None:
        ip = ipaddress.ip_address(address)
        return next((n for n in self.cfg.never_ban if ip.version == n.version and ip in n), None)

    # fail2ban's actionban, or an operator
    def ban(self, address: str, seconds: int, jail: str, since: float | None = None) -> None:
        now = self.clock()
        start = now if since is None else min(since, now)
        entry = Pending(address, seconds, jail, start)
        net = self.protected(address)
        if net is not None:
            raise BanError(f"refusing to ban {address}: it is in {net}, which is never banned "
                           "(loopback, adminCidrs or the cluster's own addresses)")  # fmt: skip
        left = entry.left(now)
        if left <= 0:
            self.log(syslog.LOG_NOTICE, f"ban of {address} (jail {jail}) is already over")
            return
        # At once on this node, never shortening a longer ban another jail put there. If this
        # node's sets refuse, the table still takes the ban (the other nodes apply it, and this
        # node's loader puts it back within resync_s); the error is reported after.
        local: FirewallError | None = None
        try:
            held = self.nft.elements(_set_for(self.cfg, address)).get(address, 0.0)
            self.nft.apply("\n".join(ban_lines(self.cfg, address, max(left, math.ceil(held or 0))))
                           + "\n")  # fmt: skip
        except FirewallError as e:
            local = e
        where = "the cluster's table"
        if self.is_writer():
            try:
                self.record([entry])
            except DbError as e:
                self.pending.add(entry)
                where = f"this node only for now (the table did not answer: {e})"
        else:
            self.pending.add(entry)
            where = "this node until it becomes the writer"
        if local is not None:
            where += f"; NOT in this node's sets: {local}"
        self.log(syslog.LOG_WARNING, f"banned {address} for {left} s (jail {jail}, on "
                                     f"{self.cfg.node}; {where})")  # fmt: skip
        if local is not None:
            raise local

    def record(self, entries: Sequence[Pending]) -> None:
        """Write bans into the table (the writer only). A ban that is already there keeps the
        later end; its jail and node are those of the ban that ends last."""
        now = self.clock()
        values = [
            f"('{e.address}', '{e.jail}', '{self.cfg.node}', UTC_TIMESTAMP(), "
            f"UTC_TIMESTAMP() + INTERVAL {e.left(now)} SECOND, UTC_TIMESTAMP(6))"
            for e in entries
            if e.left(now) > 0
        ]
        if not values:
            return
        # MariaDB assigns left to right, so expires_at is compared before it is updated.
        self.db.query(
            f"INSERT INTO {self.cfg.sql_table} "
            "(address, jail, node, banned_at, expires_at, changed_at) VALUES "
            + ", ".join(values)
            + " ON DUPLICATE KEY UPDATE"
            " jail = IF(VALUES(expires_at) >= expires_at, VALUES(jail), jail),"
            " node = IF(VALUES(expires_at) >= expires_at, VALUES(node), node),"
            " banned_at = IF(expires_at <= UTC_TIMESTAMP(), VALUES(banned_at), banned_at),"
            " expires_at = GREATEST(expires_at, VALUES(expires_at)),"
            " changed_at = VALUES(changed_at)"
        )

    # fail2ban's actionunban (at the end of its ban, or `fail2ban-client unban`), or an operator
    def unban(self, address: str, jail: str) -> None:
        manual = jail == MANUAL
        self.pending.drop(address, None if manual else jail)
        writer = self.is_writer()
        only_jail = "" if manual else f" AND jail = '{jail}'"
        lift = (
            f"UPDATE {self.cfg.sql_table} SET expires_at = UTC_TIMESTAMP(), "
            f"changed_at = UTC_TIMESTAMP(6) WHERE address = '{address}' "
            f"AND expires_at > UTC_TIMESTAMP(){only_jail}; "
        )
        still = (
            f"SELECT jail FROM {self.cfg.sql_table} WHERE address = '{address}' "
            "AND expires_at > UTC_TIMESTAMP()"
        )
        table: DbError | None = None
        try:
            holding = [r[0] for r in self.db.query((lift if writer else "") + still)]
        except DbError as e:
            # A table that does not answer: lift here as asked; on the writer the lift did not
            # reach the other nodes, which the exit status reports.
            holding, table = [], e if writer else None
            self.log(syslog.LOG_WARNING, f"unban {address}: the table did not answer: {e}")
        now = self.clock()
        others = [p.jail for p in self.pending.entries()
                  if p.address == address and p.left(now) > 0]  # fmt: skip
        # A ban of another jail still holds it (fail2ban unbans each jail's own at its end).
        if not manual and (holding or others):
            self.log(syslog.LOG_NOTICE, f"{jail} ended its ban of {address}; still banned by "
                                        f"{', '.join(holding + others)}")  # fmt: skip
            return
        self.nft.apply("\n".join(lift_lines(self.cfg, address)) + "\n")
        note = ""
        if manual and holding and not writer:
            note = "; the table still holds it: lift it on the writer (the active node)"
        self.log(syslog.LOG_NOTICE, f"unbanned {address} (jail {jail}, on {self.cfg.node}){note}")
        if table is not None:
            raise table

    def list_rows(self) -> list[list[str]]:
        return self.db.query(
            f"SELECT address, jail, node, banned_at, expires_at FROM {self.cfg.sql_table} "
            "WHERE expires_at > UTC_TIMESTAMP() ORDER BY banned_at"
        )


# -- the loader ------------------------------------------------------------------------------------
@dataclass
class Loader:
    """Applies the table's changes to this node's sets (see the module's docstring)."""

    bans: Bans
    monotonic: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    mark: dt.datetime | None = None  # the latest changed_at applied
    applied: dict[str, tuple[str, str]] = field(default_factory=dict)  # address: (expires, changed)
    failures: int = 0  # loader rounds failed in a row
    _skipped: set[str] = field(default_factory=set)

    @property
    def cfg(self) -> Config:
        return self.bans.cfg

    def _select(self, where: str) -> str:
        return (
            "SELECT address, expires_at, GREATEST(0, TIMESTAMPDIFF(SECOND, UTC_TIMESTAMP(), "
            f"expires_at)), changed_at FROM {self.cfg.sql_table} WHERE {where} "
            "ORDER BY changed_at"
        )

    def _rows(self, sql: str) -> list[Row]:
        rows: list[Row] = []
        for cols in self.bans.db.query(sql):
            if len(cols) != 4 or not cols[2].isdigit():
                raise DbError(f"unexpected row {cols!r} from the table")
            _datetime(cols[1])
            _datetime(cols[3])
            rows.append(Row(cols[0], cols[1], int(cols[2]), cols[3]))
        return rows

    def _usable(self, row: Row) -> str | None:
        """The row's address if it may be applied (a bad or never-banned one is logged once)."""
        try:
            address = parse_address(row.address)
        except BanError as e:
            reason = str(e)
        else:
            net = self.bans.protected(address)
            if net is None:
                return address
            reason = f"{address} is in {net}, which is never banned"
        if row.address not in self._skipped:
            self._skipped.add(row.address)
            self.bans.log(syslog.LOG_WARNING, f"table row skipped: {reason}")
        return None

    def poll(self) -> int:
        """Apply the rows changed since the watermark; return how many changed the sets."""
        if self.mark is None:
            where = (f"expires_at > UTC_TIMESTAMP() OR changed_at > UTC_TIMESTAMP(6) - "
                     f"INTERVAL {self.cfg.slack_s} SECOND")  # fmt: skip
        else:
            where = (f"changed_at > CAST('{_sql_time(self.mark)}' AS DATETIME(6)) - "
                     f"INTERVAL {self.cfg.slack_s} SECOND")  # fmt: skip
        rows = self._rows(self._select(where))
        now = self.bans.clock()
        pending = None
        lines: list[str] = []
        changed: dict[str, tuple[str, str]] = {}
        for row in rows:
            address = self._usable(row)
            if address is None or self.applied.get(address, ("", ""))[0] == row.expires_at:
                continue
            if row.left > 0:
                lines += ban_lines(self.cfg, address, row.left)
            else:
                # A lifted ban; a ban this node raised itself and has not recorded yet stays.
                if pending is None:
                    pending = {p.address for p in self.bans.pending.entries() if p.left(now) > 0}
                if address not in pending:
                    lines += lift_lines(self.cfg, address)
            changed[address] = (row.expires_at, row.changed_at)
        if lines:
            self.bans.nft.apply("\n".join(lines) + "\n")
        self.applied.update(changed)
        if rows:
            newest = max(_datetime(r.changed_at) for r in rows)
            self.mark = max(self.mark or newest, newest)
        if self.mark is not None:
            # Only rows inside the slack window are read again: older memories are not needed.
            oldest = _sql_time(self.mark - dt.timedelta(seconds=self.cfg.slack_s + 1))
            self.applied = {a: v for a, v in self.applied.items() if v[1] >= oldest}
        return len(changed)

    def resync(self) -> int:
        """Put back every ban in force that is missing from the sets; return how many."""
        rows = self._rows(self._select("expires_at > UTC_TIMESTAMP()"))
        present = {**self.bans.nft.elements(self.cfg.set4), **self.bans.nft.elements(self.cfg.set6)}
        missing = [
            (a, row.left)
            for row in rows
            if (a := self._usable(row)) is not None and row.left > 0 and a not in present
        ]
        if missing:
            lines = [line for a, left in missing for line in ban_lines(self.cfg, a, left)]
            self.bans.nft.apply("\n".join(lines) + "\n")
            self.bans.log(
                syslog.LOG_WARNING, f"put back {len(missing)} ban(s) missing from the sets"
            )
        return len(missing)

    def flush_pending(self) -> int:
        """On the writer: record this node's pending bans in the table."""
        if not os.path.exists(self.cfg.pending) or os.path.getsize(self.cfg.pending) == 0:
            return 0
        if not self.bans.is_writer():
            return 0
        count = self.bans.pending.take(self.bans.record)
        if count:
            self.bans.log(syslog.LOG_NOTICE, f"recorded {count} pending ban(s) in the table")
        return count

    def purge(self) -> int:
        """On the writer: delete rows that ended over ``purge_after_s`` ago. Counted first: an
        idle cluster's binary log stays quiet."""
        if not self.bans.is_writer():
            return 0
        old = f"expires_at < UTC_TIMESTAMP() - INTERVAL {self.cfg.purge_after_s} SECOND"
        table = self.cfg.sql_table
        count = int(self.bans.db.query(f"SELECT COUNT(*) FROM {table} WHERE {old}")[0][0])
        if count:
            self.bans.db.query(f"DELETE FROM {self.cfg.sql_table} WHERE {old}")
        return count

    def sync(self) -> None:
        """One full round: missing bans back, the changes, the pending bans."""
        self.resync()
        self.poll()
        self.flush_pending()

    def run(self, rounds: int | None = None) -> None:
        """The service's loop (``rounds``: stop after that many, for the tests)."""
        next_resync = next_pending = next_purge = self.monotonic()
        done = 0
        while rounds is None or done < rounds:
            started = self.monotonic()
            try:
                if started >= next_resync:
                    self.resync()
                    next_resync = started + self.cfg.resync_s
                self.poll()
                if started >= next_pending:
                    self.flush_pending()
                    next_pending = started + PENDING_RETRY_S
                if started >= next_purge:
                    self.purge()
                    next_purge = started + PURGE_EVERY_S
                if self.failures:
                    self.bans.log(syslog.LOG_NOTICE, "loading bans works again")
                self.failures = 0
            except (DbError, FirewallError) as e:
                self.failures += 1
                self.bans.db.close()
                # The first failure, then one line a minute or so while it lasts.
                if self.failures == 1 or self.failures % 6 == 0:
                    self.bans.log(syslog.LOG_WARNING,
                                  f"loading bans failed ({self.failures}x): {e}")  # fmt: skip
            done += 1
            delay = self.cfg.poll_s
            if self.failures:
                delay = min(self.cfg.poll_s * 2**self.failures, MAX_BACKOFF_S)
            self.sleep(max(0.0, started + delay - self.monotonic()))


# -- the command line ------------------------------------------------------------------------------
def _is_writer(cfg: Config) -> Callable[[], bool]:
    def ask() -> bool:
        try:
            done = subprocess.run([cfg.role_script, "is-writer"], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, timeout=30)  # fmt: skip
        except (OSError, subprocess.TimeoutExpired):
            return False  # no answer: behave as a non-writer (its bans wait in the pending file)
        return done.returncode == 0

    return ask


def make(cfg: Config) -> Bans:
    return Bans(cfg, Session(cfg.mysql), NftCli(cfg.nft, cfg.table), _is_writer(cfg))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mailcluster-bans", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=CONFIG, help=f"default {CONFIG}")
    sub = p.add_subparsers(dest="command", required=True)
    ban = sub.add_parser("ban", help="ban IP on this node and in the cluster's table")
    ban.add_argument("ip")
    ban.add_argument("seconds")
    ban.add_argument("jail")
    ban.add_argument("since", nargs="?", help="the ban's start, epoch seconds (default: now)")
    unban = sub.add_parser("unban", help=f"lift a ban (jail {MANUAL!r}: every ban of IP)")
    unban.add_argument("ip")
    unban.add_argument("jail")
    sub.add_parser("sync", help="one round of the loader, now")
    sub.add_parser("loop", help="the loader: apply the table's changes every poll_s")
    sub.add_parser("list", help="the bans in force, from the table")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    syslog.openlog("mailcluster-bans", 0, syslog.LOG_AUTH)
    bans: Bans | None = None
    try:
        bans = make(load_config(args.config))
        if args.command == "ban":
            since = parse_since(args.since) if args.since is not None else None
            bans.ban(parse_address(args.ip), parse_seconds(args.seconds), parse_jail(args.jail),
                     since)  # fmt: skip
        elif args.command == "unban":
            bans.unban(parse_address(args.ip), parse_jail(args.jail))
        elif args.command == "list":
            for row in bans.list_rows():
                print("\t".join(row))
        elif args.command == "sync":
            Loader(bans).sync()
        else:
            Loader(bans).run()
    except BanError as e:
        print(f"mailcluster-bans: {e}", file=sys.stderr)
        return 2
    except (DbError, FirewallError) as e:
        print(f"mailcluster-bans: {e}", file=sys.stderr)
        return 1
    finally:
        if bans is not None:
            bans.db.close()
    return 0
