"""The operator CLI's logic against a stand-in target (the commands themselves run against the
lab in tests/lab/test_ops.py)."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest

from cluster.ops import cli
from cluster.ops.accounts import Accounts, check_address, check_domain
from cluster.ops.backup import MESSAGE_MAX, Backups, failure_message
from cluster.ops.status import collect, parse_health, render_text
from cluster.ops.target import OpsError, Result, StackTarget
from cluster.services.backup import BACKUP_SCRIPT
from cluster.services.bayes import SCRIPT as BAYES_SCRIPT
from cluster.services.domains import SCRIPT as DOMAINS_SCRIPT
from cluster.services.health import HEALTH_SCRIPT
from cluster.services.postfixadmin import MAILBOX_CLI
from cluster.services.replication import SCRIPT as REPLICATION_SCRIPT
from cluster.services.role import ROLE_SCRIPT

NODES = ("dc1-svr1", "dc1-svr2", "dc2-svr1", "dc2-svr2")


def health(serial: str = "7", holder: bool = False, lag_ok: bool = True) -> str:
    lines = [
        f"mariadb.replication\t{'ok' if lag_ok else 'fail'}\t0\tio=Yes sql=Yes",
        f"bind.serial\tok\t{serial}\tslave",
        "postfix.queue\tok\t0\toldest 0s",
        f"heartbeat\tok\t{'holder' if holder else 'standby'}\tpeer x active",
    ]
    return "\n".join(lines) + "\n"


FLUSH = ("doveadm", "auth", "cache", "flush")


def replication_state(node: str, writer: bool) -> dict[str, object]:
    """``mailcluster-replication status --json`` of a node (the parts ``ops status`` reads)."""
    spread = {"p50": 120, "p90": 180, "p99": 300, "max": 310, "n": 50}
    target = {
        "current": True,
        "queue": 2,
        "queue_events": 1,
        "oldest_pending_s": 0.4,
        "oldest_event_s": 0.4,
        "last_success": 990.0,
        "last_failure": 900.0,
        "last_error": "u@example.com: exit 75: refused",
        "failing_since": None,
        "consecutive_failures": 0,
        "sync_ms": spread,
        "lag_ms": spread,
    }
    targets = (
        {
            "dc2-svr1": target,
            "dc2-svr2": {
                **target,
                "current": writer,
                "failing_since": 940.0,
                "consecutive_failures": 3,
            },
        }
        if node == "dc1-svr1"
        else {}
    )
    return {"now": 1000.0, "role": "writer" if writer else "standby", "targets": targets}


class FakeTarget:
    description = "fake"

    def __init__(self, outputs: dict[str, str], writer: str | None = "dc1-svr1") -> None:
        self.outputs = outputs
        self.writer = writer
        self.calls: list[tuple[str, tuple[str, ...], str]] = []
        self.domain_problems: dict[str, list[str]] = {}

    def nodes(self) -> tuple[str, ...]:
        return NODES

    def run(self, node: str, argv: Sequence[str], stdin: str = "", timeout: float = 0) -> Result:
        self.calls.append((node, tuple(argv), stdin))
        if argv[0] == HEALTH_SCRIPT:
            if node not in self.outputs:
                return Result(255, "", "ssh: connect to host: No route to host")
            return Result(0, self.outputs[node], "")
        if list(argv) == [ROLE_SCRIPT, "is-writer"]:
            return Result(0 if node == self.writer else 1, "", "")
        if argv[0] == BACKUP_SCRIPT:
            return Result(0, "restored\n", "")
        if argv[0] == DOMAINS_SCRIPT:
            if argv[1] == "check" and argv[2] == "example.com":
                return Result(2, "", "mailcluster-domains: example.com is the cluster's own domain")
            if argv[1] == "status":
                problems = self.domain_problems.get(node, [])
                return Result(0, json.dumps({"domains": ["shop.example"], "problems": problems}),
                              "")  # fmt: skip
            if argv[1] == "sync" and node not in self.outputs:
                return Result(255, "", "ssh: connect to host: No route to host")
            said = {"records": "records of ", "rotate": "rotated "}.get(argv[1])
            return Result(0, f"{said}{argv[2]}\n" if said else "", "")
        if argv[0] == MAILBOX_CLI:
            if argv[1] == "domain-list":
                return Result(0, "example.com\nexample.org\n", "")
            if argv[1] == "list":
                return Result(0, "ann@example.com\tactive\t1\nbob@example.com\tactive\t0\n"
                              "new@example.com\tactive\t0\n", "")  # fmt: skip
            return Result(0, "changed\n", "")
        if list(argv) == ["doveadm", "-f", "tab", "quota", "get", "-A"]:
            return Result(0, "Username\tQuota name\tType\tValue\tLimit\t%\n"
                          "ann@example.com\tUser quota\tSTORAGE\t870\t1024\t84\n"
                          "ann@example.com\tUser quota\tMESSAGE\t9\t-\t0\n"
                          "bob@example.com\tUser quota\tSTORAGE\t2\t-\t0\n", "")  # fmt: skip
        if list(argv) == [REPLICATION_SCRIPT, "status", "--json"]:
            return Result(0, json.dumps(replication_state(node, node == self.writer)), "")
        if list(argv) == [BAYES_SCRIPT, "status", "--json"]:
            if node == "dc2-svr2":  # its Valkey is down
                return Result(1, "", "mailcluster-bayes: Valkey on 127.0.0.1:6379: refused")
            source = "" if node == self.writer else "198.19.10.1"
            return Result(0, json.dumps({"learned": {"spam": 12, "ham": 3}, "role":
                          "replica" if source else "master", "source": source,
                          "link": "up" if source else ""}), "")  # fmt: skip
        if list(argv[:4]) == ["doveadm", "auth", "cache", "flush"]:
            if node not in self.outputs:
                return Result(255, "", "ssh: connect to host: No route to host")
            return Result(0, "", "")
        raise AssertionError(argv)


def healthy() -> dict[str, str]:
    return {
        "dc1-svr1": health(holder=True),
        "dc1-svr2": health(),
        "dc2-svr1": health(holder=True),
        "dc2-svr2": health(),
    }


def test_a_healthy_cluster_is_ok() -> None:
    data = collect(FakeTarget(healthy()))
    assert data["ok"] is True
    names = {(c["name"], c["node"]) for c in data["checks"]}
    assert ("bind.serial-matches-master", "dc2-svr2") in names
    assert ("heartbeat.one-holder", "dc1") in names
    assert set(data["checks"][0]) == {"name", "node", "ok", "value", "detail"}


def test_a_further_domain_served_stale_fails_on_that_node() -> None:
    target = FakeTarget(healthy())
    target.domain_problems["dc2-svr1"] = ["shop.example: named serves nothing, the database has 7"]
    data = collect(target)
    assert data["ok"] is False
    (bad,) = [c for c in data["checks"] if c["name"] == "domains.current" and not c["ok"]]
    assert bad["node"] == "dc2-svr1" and "named serves nothing" in bad["detail"]
    assert bad["value"] == "1 domains"
    good = [c["node"] for c in data["checks"] if c["name"] == "domains.current" and c["ok"]]
    assert good == ["dc1-svr1", "dc1-svr2", "dc2-svr2"]


def test_a_stale_serial_a_second_holder_and_a_lost_node_fail() -> None:
    outputs = healthy()
    outputs["dc2-svr2"] = health(serial="6", holder=True)
    del outputs["dc1-svr2"]
    data = collect(FakeTarget(outputs))
    failing = {(c["name"], c["node"]) for c in data["checks"] if not c["ok"]}
    assert failing == {
        ("bind.serial-matches-master", "dc2-svr2"),
        ("heartbeat.one-holder", "dc2"),
        ("node.reachable", "dc1-svr2"),
    }
    assert data["ok"] is False


def test_status_shows_what_each_node_pushes(capsys: pytest.CaptureFixture[str]) -> None:
    data = collect(FakeTarget(healthy()))
    rep = data["replication"]
    assert set(rep) == set(NODES)
    assert rep["dc1-svr2"] == {"role": "standby", "targets": {}}
    far = rep["dc1-svr1"]["targets"]["dc2-svr2"]
    assert (far["last_success_s"], far["last_failure_s"], far["failing_s"]) == (10.0, 100.0, 60.0)
    assert rep["dc1-svr1"]["targets"]["dc2-svr1"]["failing_s"] is None
    text = render_text(data)
    assert "dc1-svr1  -> dc2-svr2  queue 2 (1 changes), oldest 0.4s, last success 10s ago" in text
    assert "sync 120/180/300, change 120/180/300; FAILING for 60s: u@example.com: exit 75" in text
    # A node whose controller does not answer says so, and the others are still shown.
    outputs = healthy()
    del outputs["dc2-svr2"]
    assert "dc2-svr2" not in collect(FakeTarget(outputs))["replication"]


def test_status_shows_what_each_node_has_learned() -> None:
    data = collect(FakeTarget(healthy()))
    assert data["bayes"]["dc1-svr1"] == {"learned": {"spam": 12, "ham": 3}, "role": "master",
                                         "source": "", "link": ""}  # fmt: skip
    text = render_text(data)
    assert "dc1-svr1  spam 12, ham 3; master" in text
    assert "dc1-svr2  spam 12, ham 3; replica of 198.19.10.1 (link up)" in text
    assert "dc2-svr2  mailcluster-bayes: Valkey on 127.0.0.1:6379: refused" in text


def test_mailbox_list_shows_the_usage_and_the_share_of_the_quota(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "target_of", lambda args: FakeTarget(healthy()))
    assert cli.main(["--lab", "mailbox", "list"]) == 0
    # Address, active, quota (MB), used (MB), share; a mailbox Dovecot has not seen yet: "?".
    assert capsys.readouterr().out.splitlines() == [
        "ann@example.com\tactive\t1\t0.8\t84%",
        "bob@example.com\tactive\t0\t0.0\t-",
        "new@example.com\tactive\t0\t?\t?",
    ]


def test_no_writer_is_a_failing_cluster_check() -> None:
    data = collect(FakeTarget(healthy(), writer=None))
    assert [c["name"] for c in data["checks"] if not c["ok"]] == ["cluster.writer"]


def test_a_garbled_health_line_is_an_error_naming_the_node() -> None:
    with pytest.raises(ValueError, match=r"dc1-svr1.*unexpected line"):
        parse_health("dc1-svr1", "mariadb.replication ok 0\n")


def test_status_exit_codes(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "target_of", lambda args: FakeTarget(healthy()))
    assert cli.main(["--lab", "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    bad = healthy()
    bad["dc1-svr2"] = health(lag_ok=False)
    monkeypatch.setattr(cli, "target_of", lambda args: FakeTarget(bad))
    assert cli.main(["--lab", "status"]) == 1
    assert "FAIL dc1-svr2" in capsys.readouterr().out


def test_a_target_is_required_and_only_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["status"]) == 2
    assert "--lab" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["--lab", "--stack", "dc1", "status"])


@pytest.mark.parametrize("bad", ["alice", "alice@", "@example.com", "a b@example.com",
                                 "alice@example", "alice@-x.com"])  # fmt: skip
def test_malformed_addresses_are_refused(bad: str) -> None:
    with pytest.raises(OpsError, match="not an e-mail address"):
        check_address(bad)


def test_domains_are_checked_and_lowered() -> None:
    assert check_domain("Example.COM") == "example.com"
    with pytest.raises(OpsError, match="not a domain"):
        check_domain("example")


def test_a_mailbox_in_an_unknown_domain_is_refused_before_anything_is_written() -> None:
    target = FakeTarget(healthy())
    acc = Accounts(target)
    with pytest.raises(OpsError, match=r"unknown domain 'other\.org'"):
        acc.mailbox_add("bob@other.org", "pw")
    written = [c for c in target.calls if c[1][0] == MAILBOX_CLI and c[1][1] != "domain-list"]
    assert written == []


def test_domain_add_makes_it_whole_on_every_node_the_writer_first() -> None:
    outputs = healthy()
    del outputs["dc2-svr2"]  # unreachable: warned, its timer catches up
    target = FakeTarget(outputs, writer="dc1-svr2")
    out = Accounts(target).domain_add("Shop.Example")
    calls = [(n, a) for n, a, _ in target.calls if a[0] in (DOMAINS_SCRIPT, MAILBOX_CLI)]
    assert calls[:2] == [
        ("dc1-svr2", (DOMAINS_SCRIPT, "check", "shop.example")),
        ("dc1-svr2", (MAILBOX_CLI, "domain-new", "shop.example")),
    ]
    syncs = [n for n, a in calls if a[1] == "sync"]
    assert syncs == ["dc1-svr2", "dc1-svr1", "dc2-svr1", "dc2-svr2"]
    assert all(a[2:] == ("--expect", "shop.example") for _, a in calls if a[1] == "sync")
    assert out.endswith("records of shop.example\n")


def test_dkim_rotate_runs_on_the_writer_then_publishes_everywhere() -> None:
    target = FakeTarget(healthy(), writer="dc1-svr2")
    out = Accounts(target).domain_dkim_rotate("shop.example")
    calls = [(n, a[1]) for n, a, _ in target.calls if a[0] == DOMAINS_SCRIPT]
    assert calls[:2] == [("dc1-svr2", "check"), ("dc1-svr2", "rotate")]
    assert [n for n, a in calls[2:] if a == "sync"] == ["dc1-svr2", "dc1-svr1", "dc2-svr1",
                                                          "dc2-svr2"]  # fmt: skip
    assert out == "rotated shop.example\n"


def test_the_clusters_own_domain_is_never_added_or_deleted_here() -> None:
    target = FakeTarget(healthy())
    acc = Accounts(target)
    for action in (acc.domain_add, acc.domain_del, acc.domain_dkim_rotate):
        with pytest.raises(OpsError, match="the cluster's own domain"):
            action("example.com")
    assert not [a for _, a, _ in target.calls if a[0] == MAILBOX_CLI and a[1].startswith("domain-")
                and a[1] != "domain-list"]  # fmt: skip


def test_domain_del_is_refused_while_it_has_mailboxes_unless_told() -> None:
    target = FakeTarget(healthy())
    acc = Accounts(target)
    with pytest.raises(
        OpsError, match=r"example\.org still has 3 mailbox\(es\) \(ann@.*--remove-mailboxes"
    ):
        acc.domain_del("example.org")
    assert not [
        a for _, a, _ in target.calls if a[0] == MAILBOX_CLI and a[1] in ("del", "domain-del")
    ]
    with pytest.raises(OpsError, match=r"no domain example\.net"):
        acc.domain_del("example.net")

    acc.domain_del("example.org", remove_mailboxes=True)
    steps = [a[1:] for _, a, _ in target.calls if a[0] in (MAILBOX_CLI, DOMAINS_SCRIPT)
             and a[1] in ("del", "domain-del", "sync")]  # fmt: skip
    assert steps[:4] == [("del", "ann@example.com"), ("del", "bob@example.com"),
                         ("del", "new@example.com"), ("domain-del", "example.org")]  # fmt: skip
    assert steps[4:] == [("sync", "--expect-gone", "example.org")] * 4


def test_passwords_travel_on_stdin_on_the_writer() -> None:
    target = FakeTarget(healthy(), writer="dc1-svr2")
    Accounts(target).mailbox_add("Bob@Example.com", "s3cret pass", quota_mb=5)
    node, argv, stdin = target.calls[-1]
    assert node == "dc1-svr2"
    assert argv == (MAILBOX_CLI, "add", "bob@example.com", "--quota", "5")
    assert stdin == "s3cret pass\n"
    assert not any("s3cret" in " ".join(c[1]) for c in target.calls)


@pytest.mark.parametrize("action", ["passwd", "del"])
def test_a_changed_or_deleted_mailbox_leaves_every_auth_cache(action: str) -> None:
    """Dovecot's auth cache would accept the old password for up to its TTL on each node."""
    target = FakeTarget(healthy())
    acc = Accounts(target)
    if action == "passwd":
        acc.mailbox_passwd("Bob@Example.com", "n3w pass")
    else:
        acc.mailbox_del("Bob@Example.com")
    change = next(i for i, c in enumerate(target.calls) if c[1][:2] == (MAILBOX_CLI, action))
    flushed = [c for c in target.calls[change:] if c[1][:4] == FLUSH]
    assert [c[0] for c in flushed] == list(NODES)
    assert all(c[1] == (*FLUSH, "bob@example.com") for c in flushed)


def test_a_restored_database_empties_every_auth_cache() -> None:
    target = FakeTarget(healthy())
    Backups(target).restore_database("latest")
    restored = next(i for i, c in enumerate(target.calls) if c[1][0] == BACKUP_SCRIPT)
    flushed = [c for c in target.calls[restored:] if c[1][:4] == FLUSH]
    assert [c[0] for c in flushed] == list(NODES)
    assert all(c[1] == FLUSH for c in flushed)  # every user


def test_a_long_backup_error_keeps_what_failed_and_restics_last_words() -> None:
    # restic's check lists every damaged pack: the tail alone lost the script's own line.
    packs = "".join(f"error: {i:064x} pack file cannot be listed\n" for i in range(40))
    text = f"mailcluster-backup: repository check failed: {packs}Fatal: repository contains errors"
    msg = failure_message(text)
    assert msg.startswith("repository check failed: ") and msg.endswith("contains errors")
    assert len(msg) <= MESSAGE_MAX + len(" [...] ")
    assert failure_message("mailcluster-backup: wrong password") == "wrong password"
    assert failure_message("") == "failed"


def test_a_node_that_cannot_flush_is_named_and_the_change_stands(
    capsys: pytest.CaptureFixture[str],
) -> None:
    outputs = healthy()
    del outputs["dc2-svr2"]
    acc = Accounts(FakeTarget(outputs))
    assert acc.mailbox_passwd("bob@example.com", "n3w pass") == "changed\n"
    err = capsys.readouterr().err
    assert "dc2-svr2: Dovecot's auth cache not flushed (ssh: connect to host" in err
    assert "dc1-svr1" not in err


def test_no_writer_means_no_account_change() -> None:
    with pytest.raises(OpsError, match="no node is the writable master"):
        Accounts(FakeTarget(healthy(), writer=None))


def test_stack_target_reaches_nodes_by_ssh_without_prompting() -> None:
    t = StackTarget("dc1", {"dc2-svr1": "192.0.2.21", "dc1-svr1": "192.0.2.11"})
    assert t.nodes() == ("dc1-svr1", "dc2-svr1")
    argv = t.ssh_argv("dc2-svr1", [MAILBOX_CLI, "list", "example.com"])
    assert argv[:3] == ["ssh", "-o", "BatchMode=yes"]
    assert "root@192.0.2.21" in argv
    assert argv[-1] == f"{MAILBOX_CLI} list example.com"
