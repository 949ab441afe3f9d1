"""mailnode.bans with a fake database and a fake nft: the SQL and nft commands it issues for a
ban, an unban and each loader round, expiries, idempotence, writers and non-writers, bad input.
(The same module against a real MariaDB and nft: tests/render/test_bans_db.py.)"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mailnode import bans as B
from mailnode.mysql import DbError

SET = re.compile(r"(add|delete) element inet (\w+) (\w+) \{ (\S+)(?: timeout (\d+)s)? \}")


@dataclass
class Clock:
    now: float = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeNft:
    """nft's sets as the kernel keeps them: a transaction applies whole or not at all, ``add``
    keeps an existing element's timeout (as older kernels do), ``delete`` of an absent element
    fails, an element is gone once its timeout ran out."""

    clock: Clock
    table: str = "mailcluster"
    sets: dict[str, dict[str, float]] = field(
        default_factory=lambda: {"banned4": {}, "banned6": {}}
    )
    scripts: list[str] = field(default_factory=list)
    fail: str = ""

    def _live(self) -> dict[str, dict[str, float]]:
        now = self.clock()
        return {s: {a: t for a, t in e.items() if t > now} for s, e in self.sets.items()}

    def apply(self, script: str) -> None:
        self.scripts.append(script)
        if self.fail:
            raise B.FirewallError(self.fail)
        work = self._live()
        for line in script.splitlines():
            m = SET.fullmatch(line)
            assert m, f"unexpected nft line {line!r}"
            op, table, name, address, timeout = m.groups()
            assert table == self.table
            if op == "add":
                work[name].setdefault(address, self.clock() + int(timeout))
            elif address in work[name]:
                del work[name][address]
            else:
                raise B.FirewallError(f"Could not process rule: No such file or directory: {line}")
        self.sets = work

    def elements(self, set_name: str) -> dict[str, float | None]:
        return {a: t - self.clock() for a, t in self._live()[set_name].items()}

    def left(self, address: str) -> float | None:
        """Seconds the address stays banned, None if it is not."""
        found = self.elements("banned6" if ":" in address else "banned4").get(address)
        return found


@dataclass
class FakeDb:
    respond: Callable[[str], list[list[str]]] = lambda sql: []
    queries: list[str] = field(default_factory=list)
    fail: str = ""
    closed: int = 0

    def query(self, sql: str) -> list[list[str]]:
        self.queries.append(sql)
        if self.fail:
            raise DbError(self.fail)
        return self.respond(sql)

    def close(self) -> None:
        self.closed += 1


def config_data(tmp_path: Path) -> dict[str, Any]:
    return {
        "node": "dc1-svr1", "table": "mailcluster", "set4": "banned4", "set6": "banned6",
        "db": "mailcluster", "db_table": "bans", "mysql": ["mariadb", "--protocol=socket"],
        "nft": ["nft"], "role_script": "/usr/local/sbin/mailcluster-role",
        "pending": str(tmp_path / "bans.pending"),
        "never_ban": ["127.0.0.0/8", "::1", "203.0.113.7/32", "2001:db8:1::/64"],
        "poll_s": 1.0, "slack_s": 10, "resync_s": 30.0, "purge_after_s": 86400,
    }  # fmt: skip


@dataclass
class World:
    bans: B.Bans
    db: FakeDb
    nft: FakeNft
    clock: Clock
    logs: list[tuple[int, str]]
    writer: list[bool]

    def loader(self) -> B.Loader:
        return B.Loader(self.bans, monotonic=self.clock, sleep=self.sleep)

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.clock.now += seconds

    slept: list[float] = field(default_factory=list)


@pytest.fixture
def world(tmp_path: Path) -> World:
    clock = Clock()
    db, nft = FakeDb(), FakeNft(clock)
    logs: list[tuple[int, str]] = []
    writer = [True]
    cfg = B.parse_config(config_data(tmp_path))
    bans = B.Bans(cfg, db, nft, lambda: writer[0], clock=clock,
                  log=lambda p, m: logs.append((p, m)))  # fmt: skip
    return World(bans, db, nft, clock, logs, writer)


# -- input -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:DB8:0::7", "2001:db8::7"),
        (" 198.51.100.1 ", "198.51.100.1"),
    ],
)
def test_addresses_are_canonical(text: str, canonical: str) -> None:
    assert B.parse_address(text) == canonical


@pytest.mark.parametrize(
    "text", ["192.0.2.300", "192.0.2.7'; DROP TABLE bans; --", "", "2001:db8::g", "example.com",
             "192.0.2.0/24"],
)  # fmt: skip
def test_a_malformed_address_is_refused_naming_it(text: str) -> None:
    with pytest.raises(B.BanError, match=re.escape(f"bad address {text!r}: not an IPv4 or IPv6")):
        B.parse_address(text)


@pytest.mark.parametrize("text", ["0", "-5", "1.5", "99999999999", "60s", ""])
def test_bad_seconds_are_refused(text: str) -> None:
    with pytest.raises(B.BanError, match=re.escape(f"bad seconds {text!r}: a whole number")):
        B.parse_seconds(text)


@pytest.mark.parametrize("text", ["", "a b", "x" * 65, "sshd'", "post/fix"])
def test_bad_jails_are_refused(text: str) -> None:
    with pytest.raises(B.BanError, match=re.escape(f"bad jail {text!r}")):
        B.parse_jail(text)


def test_the_command_line_refuses_bad_input_before_touching_anything(
    world: World,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    conf = tmp_path / "bans.json"
    conf.write_text(json.dumps(config_data(tmp_path)))
    monkeypatch.setattr(B, "make", lambda cfg: world.bans)
    code = B.main(["--config", str(conf), "ban", "192.0.2.999", "600", "sshd"])
    assert code == 2
    assert capsys.readouterr().err == (
        "mailcluster-bans: bad address '192.0.2.999': not an IPv4 or IPv6 address\n"
    )
    assert world.db.queries == [] and world.nft.scripts == []
    assert B.main(["--config", str(conf), "unban", "192.0.2.7", "ssh d"]) == 2
    assert "bad jail 'ssh d'" in capsys.readouterr().err
    assert world.db.queries == [] and world.nft.scripts == []


def test_a_bad_configuration_names_every_bad_key(tmp_path: Path) -> None:
    data = config_data(tmp_path)
    data.pop("set6")
    data.update(table="mail cluster", poll_s=0, never_ban=["192.0.2.0/33"], mysql=[])
    with pytest.raises(B.BanError) as err:
        B.parse_config(data, "bans.json")
    text = str(err.value)
    for key in ("table:", "set6:", "poll_s:", "never_ban:", "mysql:"):
        assert key in text, text
    assert text.startswith("bans.json: ")
    assert "db:" not in text


def test_never_banned_addresses_are_refused(world: World) -> None:
    for address in ("127.0.0.1", "203.0.113.7", "2001:db8:1::42", "::1"):
        with pytest.raises(B.BanError, match=f"refusing to ban {re.escape(address)}: it is in"):
            world.bans.ban(address, 600, "sshd")
    assert world.db.queries == [] and world.nft.scripts == []


# -- ban -------------------------------------------------------------------------------------------
def test_a_ban_on_the_writer_is_local_at_once_and_recorded(world: World) -> None:
    world.bans.ban("192.0.2.7", 3600, "dovecot")
    assert world.nft.scripts == [
        "add element inet mailcluster banned4 { 192.0.2.7 timeout 3600s }\n"
        "delete element inet mailcluster banned4 { 192.0.2.7 }\n"
        "add element inet mailcluster banned4 { 192.0.2.7 timeout 3600s }\n"
    ]
    assert world.nft.left("192.0.2.7") == 3600
    [insert] = world.db.queries
    assert insert.startswith(
        "INSERT INTO mailcluster.bans (address, jail, node, banned_at, expires_at, changed_at) "
        "VALUES ('192.0.2.7', 'dovecot', 'dc1-svr1', UTC_TIMESTAMP(), "
        "UTC_TIMESTAMP() + INTERVAL 3600 SECOND, UTC_TIMESTAMP(6)) ON DUPLICATE KEY UPDATE"
    )
    # The later end wins; expires_at is compared before it is assigned (left to right).
    assert "expires_at = GREATEST(expires_at, VALUES(expires_at))" in insert
    assert insert.index("jail = IF(VALUES(expires_at) >= expires_at") < insert.index("GREATEST")
    assert insert.endswith("changed_at = VALUES(changed_at)")
    assert not Path(world.bans.cfg.pending).exists()


def test_a_ban_counts_from_its_start(world: World) -> None:
    """fail2ban passes the ban's start (<time>): a ban restored after a restart keeps its end."""
    world.bans.ban("192.0.2.7", 600, "sshd", since=world.clock.now - 100)
    assert world.nft.left("192.0.2.7") == 500
    assert "INTERVAL 500 SECOND" in world.db.queries[0]
    world.bans.ban("192.0.2.8", 600, "sshd", since=world.clock.now - 600)
    assert world.nft.left("192.0.2.8") is None
    assert len(world.db.queries) == 1, "a ban that is over is not recorded"


def test_a_ban_never_shortens_a_longer_one_on_this_node(world: World) -> None:
    world.bans.ban("2001:db8:9::1", 3600, "dovecot")
    world.clock.now += 100
    world.bans.ban("2001:db8:9::1", 600, "postfix-sasl")
    assert world.nft.left("2001:db8:9::1") == 3500
    assert "banned6 { 2001:db8:9::1 timeout 3500s }" in world.nft.scripts[-1]


def test_a_ban_on_a_standby_waits_in_the_pending_file(world: World) -> None:
    world.writer[0] = False
    world.bans.ban("192.0.2.7", 600, "sshd")
    assert world.nft.left("192.0.2.7") == 600
    assert world.db.queries == []
    assert (
        Path(world.bans.cfg.pending).read_text() == f"192.0.2.7 600 sshd {int(world.clock.now)}\n"
    )
    assert "until it becomes the writer" in world.logs[-1][1]


def test_a_ban_the_table_does_not_take_waits_in_the_pending_file(world: World) -> None:
    world.db.fail = "ERROR 2002 (HY000): Can't connect to local server"
    world.bans.ban("192.0.2.7", 600, "sshd")
    assert world.nft.left("192.0.2.7") == 600
    assert Path(world.bans.cfg.pending).read_text().startswith("192.0.2.7 600 sshd ")
    assert "the table did not answer: ERROR 2002" in world.logs[-1][1]


def test_a_ban_this_nodes_sets_refuse_still_reaches_the_table(world: World) -> None:
    world.nft.fail = "Error: No such file or directory; did you mean table 'mailcluster'"
    with pytest.raises(B.FirewallError):
        world.bans.ban("192.0.2.7", 600, "sshd")
    assert world.db.queries[0].startswith("INSERT INTO mailcluster.bans")
    assert "NOT in this node's sets" in world.logs[-1][1]


# -- unban -----------------------------------------------------------------------------------------
def test_a_manual_unban_on_the_writer_lifts_the_ban_everywhere(world: World) -> None:
    world.bans.ban("192.0.2.7", 600, "sshd")
    world.db.queries.clear()
    world.bans.unban("192.0.2.7", B.MANUAL)
    [sql] = world.db.queries
    assert sql.startswith(
        "UPDATE mailcluster.bans SET expires_at = UTC_TIMESTAMP(), changed_at = UTC_TIMESTAMP(6) "
        "WHERE address = '192.0.2.7' AND expires_at > UTC_TIMESTAMP(); SELECT jail"
    )
    assert world.nft.left("192.0.2.7") is None


def test_a_writer_whose_table_is_down_lifts_here_and_says_the_cluster_did_not(
    world: World,
) -> None:
    world.bans.ban("192.0.2.7", 600, "sshd")
    world.db.fail = "ERROR 2002 (HY000): Can't connect"
    with pytest.raises(DbError, match="ERROR 2002"):
        world.bans.unban("192.0.2.7", B.MANUAL)
    assert world.nft.left("192.0.2.7") is None


def test_a_jail_ending_its_ban_keeps_another_jails_longer_one(world: World) -> None:
    """fail2ban unbans each jail's own ban at its end: the table's row is the other jail's."""
    world.bans.ban("192.0.2.7", 3600, "postfix-sasl")
    world.db.respond = lambda sql: [["postfix-sasl"]] if "SELECT jail" in sql else []
    world.bans.unban("192.0.2.7", "dovecot")
    assert "AND jail = 'dovecot'; SELECT jail" in world.db.queries[-1]
    assert world.nft.left("192.0.2.7") == 3600
    assert "still banned by postfix-sasl" in world.logs[-1][1]


def test_a_standby_unban_drops_its_pending_ban_and_writes_nothing(world: World) -> None:
    world.writer[0] = False
    world.bans.ban("192.0.2.7", 600, "sshd")
    world.bans.ban("192.0.2.8", 600, "sshd")
    world.bans.unban("192.0.2.7", "sshd")
    assert not any(q.startswith("UPDATE") for q in world.db.queries)
    assert world.nft.left("192.0.2.7") is None and world.nft.left("192.0.2.8") == 600
    assert Path(world.bans.cfg.pending).read_text().startswith("192.0.2.8 600 sshd ")


# -- the loader ------------------------------------------------------------------------------------
def row(address: str, left: int, changed: str, expires: str = "") -> list[str]:
    return [address, expires or f"2027-01-15 08:{left // 60 % 60:02d}:{left % 60:02d}", str(left),
            changed]  # fmt: skip


def test_the_loader_applies_changes_once_and_moves_its_watermark(world: World) -> None:
    rows = [row("192.0.2.7", 600, "2027-01-15 08:00:01.000001"),
            row("2001:db8:9::1", 300, "2027-01-15 08:00:02.500000"),
            row("192.0.2.9", 0, "2027-01-15 08:00:03.000000")]  # fmt: skip
    world.nft.apply("add element inet mailcluster banned4 { 192.0.2.9 timeout 900s }\n")
    world.nft.scripts.clear()
    world.db.respond = lambda sql: rows
    loader = world.loader()
    assert loader.poll() == 3
    first = world.db.queries[-1]
    assert (
        "WHERE expires_at > UTC_TIMESTAMP() OR changed_at > UTC_TIMESTAMP(6) - INTERVAL 10" in first
    )
    assert world.nft.left("192.0.2.7") == 600 and world.nft.left("2001:db8:9::1") == 300
    assert world.nft.left("192.0.2.9") is None, "a lifted ban is removed"
    assert len(world.nft.scripts) == 1, "one transaction a round"
    # The same rows again (inside the slack window): nothing to do.
    assert loader.poll() == 0
    assert ("WHERE changed_at > CAST('2027-01-15 08:00:03.000000' AS DATETIME(6)) - INTERVAL 10 "
            "SECOND ORDER BY changed_at") in world.db.queries[-1]  # fmt: skip
    assert len(world.nft.scripts) == 1
    # A longer ban of the same address: applied, exactly.
    rows[0] = row("192.0.2.7", 1200, "2027-01-15 08:00:04.000000", "2027-01-15 08:20:00")
    assert loader.poll() == 1
    assert world.nft.left("192.0.2.7") == 1200
    assert "CAST('2027-01-15 08:00:04.000000'" not in world.db.queries[-1]
    loader.poll()
    assert "CAST('2027-01-15 08:00:04.000000' AS DATETIME(6))" in world.db.queries[-1]


def test_the_loader_forgets_rows_past_the_slack_window(world: World) -> None:
    rows = [row("192.0.2.7", 600, "2027-01-15 08:00:00.000000")]
    world.db.respond = lambda sql: rows
    loader = world.loader()
    loader.poll()
    assert "192.0.2.7" in loader.applied
    rows[:] = [row("192.0.2.8", 600, "2027-01-15 08:00:30.000000")]
    loader.poll()
    assert set(loader.applied) == {"192.0.2.8"}


def test_the_loader_skips_never_banned_and_malformed_rows_saying_so_once(world: World) -> None:
    rows = [row("203.0.113.7", 600, "2027-01-15 08:00:01.000000"),
            row("192.0.2.7; DROP", 600, "2027-01-15 08:00:01.000000"),
            row("192.0.2.8", 600, "2027-01-15 08:00:01.000000")]  # fmt: skip
    world.db.respond = lambda sql: rows
    loader = world.loader()
    loader.poll()
    loader.poll()
    assert world.nft.left("203.0.113.7") is None and world.nft.left("192.0.2.8") == 600
    skipped = [m for _, m in world.logs if "table row skipped" in m]
    assert skipped == [
        "table row skipped: 203.0.113.7 is in 203.0.113.7/32, which is never banned",
        "table row skipped: bad address '192.0.2.7; DROP': not an IPv4 or IPv6 address",
    ]


def test_a_lifted_row_leaves_a_ban_this_node_has_not_recorded_yet(world: World) -> None:
    world.writer[0] = False
    world.bans.ban("192.0.2.7", 600, "sshd")
    world.db.respond = lambda sql: [row("192.0.2.7", 0, "2027-01-15 08:00:01.000000")]
    world.loader().poll()
    assert world.nft.left("192.0.2.7") == 600


def test_a_malformed_answer_is_an_error_not_a_ban(world: World) -> None:
    world.db.respond = lambda sql: [["192.0.2.7", "2027-01-15 08:00:00", "soon", "x"]]
    with pytest.raises(DbError, match="unexpected row"):
        world.loader().poll()
    world.db.respond = lambda sql: [row("192.0.2.7", 6, "2027-01-15 08:00:00'; --")]
    with pytest.raises(DbError, match="unexpected time stamp"):
        world.loader().poll()
    assert world.nft.scripts == []


def test_resync_puts_back_only_the_missing_bans(world: World) -> None:
    world.nft.apply("add element inet mailcluster banned4 { 192.0.2.7 timeout 100s }\n")
    rows = [row("192.0.2.7", 600, "2027-01-15 08:00:01.000000"),
            row("192.0.2.8", 500, "2027-01-15 08:00:01.000000")]  # fmt: skip
    world.db.respond = lambda sql: rows
    assert world.loader().resync() == 1
    assert "WHERE expires_at > UTC_TIMESTAMP() ORDER BY" in world.db.queries[-1]
    assert world.nft.left("192.0.2.7") == 100 and world.nft.left("192.0.2.8") == 500
    assert world.loader().resync() == 0


def test_the_writer_records_pending_bans_with_their_time_left(world: World) -> None:
    world.writer[0] = False
    world.bans.ban("192.0.2.7", 600, "sshd")
    world.bans.ban("192.0.2.8", 60, "sshd")
    world.clock.now += 100
    loader = world.loader()
    assert loader.flush_pending() == 0, "not the writer yet"
    world.writer[0] = True
    world.db.fail = "ERROR 2013 (HY000): Lost connection"
    with pytest.raises(DbError):
        loader.flush_pending()
    assert len(Path(world.bans.cfg.pending).read_text().splitlines()) == 2, "kept for a retry"
    world.db.fail = ""
    assert loader.flush_pending() == 2
    insert = world.db.queries[-1]
    assert (
        "('192.0.2.7', 'sshd', 'dc1-svr1', UTC_TIMESTAMP(), UTC_TIMESTAMP() + INTERVAL 500"
        in insert
    )
    assert "192.0.2.8" not in insert, "its ban is over"
    assert Path(world.bans.cfg.pending).read_text() == ""


def test_purge_counts_before_it_deletes_and_only_on_the_writer(world: World) -> None:
    old = "expires_at < UTC_TIMESTAMP() - INTERVAL 86400 SECOND"
    world.db.respond = lambda sql: [["0"]]
    assert world.loader().purge() == 0
    assert world.db.queries == [f"SELECT COUNT(*) FROM mailcluster.bans WHERE {old}"]
    world.db.respond = lambda sql: [["3"]] if sql.startswith("SELECT") else []
    assert world.loader().purge() == 3
    assert world.db.queries[-1] == f"DELETE FROM mailcluster.bans WHERE {old}"
    world.writer[0] = False
    world.db.queries.clear()
    assert world.loader().purge() == 0 and world.db.queries == []


def test_the_loop_polls_every_second_backs_off_on_failure_and_says_when_it_works(
    world: World,
) -> None:
    world.db.respond = lambda sql: [["0"]] if "COUNT" in sql else []
    loader = world.loader()
    loader.run(rounds=3)
    assert world.slept == [1.0, 1.0, 1.0]
    world.db.fail = "ERROR 2002 (HY000): Can't connect"
    loader.run(rounds=4)
    assert world.slept[3:] == [2.0, 4.0, 8.0, 10.0]
    failures = [m for _, m in world.logs if m.startswith("loading bans failed")]
    assert failures == ["loading bans failed (1x): ERROR 2002 (HY000): Can't connect"]
    assert world.db.closed == 4, "a new client after each failure"
    world.db.fail = ""
    loader.run(rounds=1)
    assert world.logs[-1][1] == "loading bans works again"
