"""mailcluster-alerts' decisions (``mailnode/alerts.py``, the node's own module): which
conditions a node owns, grace periods, "resolved", the outbox; and the plan's side: its config
and keys."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cluster.config import ConfigError, load_config
from cluster.hostplan import build_host_plan
from cluster.lab.model import lab_topology
from cluster.material import ClusterSecrets
from cluster.services import alerts as alerts_service
from cluster.services.alerts import ALERTS_CONFIG, ALERTS_SCRIPT, RULES
from mailnode import alerts as M

BASE = {"domain": "example.com", "sshKeys": ["ssh-ed25519 AAAAC3Nza x@y"],
        "adminCidrs": ["203.0.113.7/32"]}  # fmt: skip


def cfg(node: str = "dc2-svr2", **over: Any) -> dict[str, Any]:
    base = {"node": node, "rules": list(RULES), "events": alerts_service.EVENTS,
            "bind_serials": {"severity": "warning", "grace_s": 600},
            "fenced_mark": "/nonexistent/fenced", "fence_stamp": "/nonexistent/fenced-at",
            "webhook": "", "emails": [], "outbox_max_age_s": 3600}  # fmt: skip
    return {**base, **over}


CHECKS = [
    ("mariadb.replication", False, "-1", "io=No sql=Yes"),
    ("disk.volume", False, "91", "/srv/mail 91% used"),
    ("disk.os", True, "40", "/ 40% used"),
    ("tls.users", False, "3", "/etc/ssl/x"),
    ("replication.dc2-svr1", False, "12", "failing for 200s: exit 75: connect refused"),
    ("bind.serial", False, "none", "no zone"),  # per node: not an alert (the writer compares)
    ("heartbeat", False, "standby", "peer dead"),  # the takeover event reports that
    ("heartbeat.resources", False, "transition", "counted transition; it is the standby"),
]


def test_a_standby_reports_only_its_own_resources() -> None:
    got = M.health_conditions(cfg(), CHECKS, writer=False)
    # Its mailbox replication is its own too: the node that pushes reports its targets.
    assert set(got) == {"mariadb.replication", "disk.volume", "replication.dc2-svr1",
                        "heartbeat.resources"}  # fmt: skip
    assert got["disk.volume"]["severity"] == "critical"
    assert "91%" in got["disk.volume"]["detail"]


def test_the_writer_also_reports_the_cluster_wide_checks() -> None:
    got = M.health_conditions(cfg("dc1-svr1"), CHECKS, writer=True)
    assert set(got) == {"mariadb.replication", "disk.volume", "tls.users", "replication.dc2-svr1",
                        "heartbeat.resources"}  # fmt: skip
    assert got["replication.dc2-svr1"]["grace_s"] == alerts_service.REPLICATION_GRACE_S


def test_heartbeat_counting_resources_it_does_not_hold_is_critical_after_a_minute() -> None:
    """A node whose Heartbeat counts resources it does not hold (a lost takeover message left
    nobody holding the shared IP) reports it itself; a takeover's seconds of "transition"
    never reach the operator."""
    got = M.health_conditions(cfg(), CHECKS, writer=False)["heartbeat.resources"]
    assert got["severity"] == "critical" and got["grace_s"] == alerts_service.HEARTBEAT_GRACE_S
    assert got["detail"].startswith("transition: ")
    state, send = M.transitions({"heartbeat.resources": got}, {}, now=1000.0)
    state, send = M.transitions({}, state, now=1030.0)
    assert send == [] and state == {}


def test_fires_after_grace_once_and_resolves_once() -> None:
    cond = {"x": {"severity": "critical", "grace_s": 120, "detail": "d"}}
    state, send = M.transitions(cond, {}, now=1000.0)
    assert send == [] and state["x"]["since"] == 1000.0
    state, send = M.transitions(cond, state, now=1060.0)
    assert send == []
    state, send = M.transitions(cond, state, now=1120.0)
    assert [(k, r) for k, _, r in send] == [("x", False)]
    state, send = M.transitions(cond, state, now=1180.0)
    assert send == []  # fired already: not again
    state, send = M.transitions({}, state, now=1240.0)
    assert [(k, r) for k, _, r in send] == [("x", True)]
    assert state == {}


def test_grace_counts_from_when_the_check_says_the_failing_began() -> None:
    got = M.health_conditions(cfg("dc1-svr1"), CHECKS, writer=True)
    assert got["replication.dc2-svr1"]["lasted_s"] == 200
    state, send = M.transitions({"d": got["replication.dc2-svr1"]}, {}, now=1000.0)
    assert state["d"]["since"] == 800.0 and [k for k, _, _ in send] == ["d"]


def test_a_condition_that_clears_within_its_grace_is_never_sent() -> None:
    cond = {"x": {"severity": "critical", "grace_s": 120, "detail": "d"}}
    state, _ = M.transitions(cond, {}, now=0.0)
    state, send = M.transitions({}, state, now=60.0)
    assert send == [] and state == {}


def test_takeover_is_the_new_writers_event() -> None:
    c = cfg("dc1-svr2")
    assert "takeover" in M.event_conditions(c, {"was_writer": False}, True, 10.0)
    assert "takeover" not in M.event_conditions(c, {"was_writer": True}, True, 10.0)
    assert "takeover" not in M.event_conditions(c, {}, True, 10.0)  # first run: no history
    assert "takeover" not in M.event_conditions(c, {"was_writer": True}, False, 10.0)


def test_a_fence_between_two_runs_is_reported(tmp_path: Path) -> None:
    stamp = tmp_path / "fenced-at"
    stamp.touch()
    c = cfg(fence_stamp=str(stamp), fenced_mark=str(tmp_path / "fenced"))
    mtime = stamp.stat().st_mtime
    got = M.event_conditions(c, {"last_run": mtime - 30}, False, mtime + 30)
    assert "rejoined" in got["fenced"]["detail"]
    assert M.event_conditions(c, {"last_run": mtime + 1}, False, mtime + 30) == {}
    (tmp_path / "fenced").touch()
    assert "fenced" in M.event_conditions(c, {"last_run": mtime + 1}, False, mtime + 30)


def test_serials_that_differ_from_the_writers() -> None:
    c = cfg("dc1-svr1")
    assert M.serial_condition(c, {"dc1-svr1": "7", "dc2-svr1": "7"}) == {}
    got = M.serial_condition(c, {"dc1-svr1": "7", "dc2-svr1": "6", "dc2-svr2": "none"})
    assert got["bind.serials"]["grace_s"] == 600
    assert "dc2-svr1 6" in got["bind.serials"]["detail"]


def test_a_condition_moves_with_the_writer_role_without_a_resolved() -> None:
    assert M.rule_owned(cfg(), "disk.volume", writer=False)
    assert not M.rule_owned(cfg(), "tls.users", writer=False)
    assert not M.rule_owned(cfg(), "bind.serials", writer=False)
    assert M.rule_owned(cfg(), "tls.users", writer=True)


def test_undelivered_messages_wait_in_the_outbox(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[tuple[str, str]] = []

    def webhook(c: dict[str, Any], msg: dict[str, Any]) -> str | None:
        sent.append(("webhook", msg["alert"]))
        return None

    def mail(c: dict[str, Any], msg: dict[str, Any]) -> str | None:
        return "mail: refused"

    monkeypatch.setattr(M, "CHANNELS", {"webhook": webhook, "email": mail})
    msg = M.message(cfg(), "disk.os", {"severity": "critical", "detail": "d"}, False, 0.0)
    assert set(msg) == {"alert", "severity", "node", "detail", "time", "resolved"}
    left = M.flush(cfg(), [{"message": msg, "pending": ["webhook", "email"], "queued": 9e12}])
    assert sent == [("webhook", "disk.os")]
    assert [e["pending"] for e in left] == [["email"]]
    old = M.flush(cfg(), [{"message": msg, "pending": ["email"], "queued": 0}])
    assert old == []  # older than outbox_max_age_s: dropped


# -- the plan's side ---------------------------------------------------------------------------


def test_alert_keys_are_validated() -> None:
    ok = load_config({**BASE, "alertEmail": ["ops@example.org"],
                      "alertWebhook": "https://hooks.example.org/a?t=1"}, "dc1")  # fmt: skip
    assert ok.alert_emails == ("ops@example.org",)
    assert ok.alert_webhook == "https://hooks.example.org/a?t=1"
    default = load_config(BASE, "dc1")
    assert default.alert_emails == () and default.alert_webhook is None
    with pytest.raises(ConfigError) as e:
        load_config({**BASE, "alertEmail": ["not-mail"], "alertWebhook": "ftp://x/y"}, "dc1")
    assert "mailcluster:alertEmail:" in str(e.value)
    assert "mailcluster:alertWebhook: must be an http:// or https:// URL" in str(e.value)
    with pytest.raises(ConfigError, match="alertWebhook"):
        load_config({**BASE, "alertWebhook": "https://user:pw@hooks.example.org/"}, "dc1")


def test_every_node_gets_the_script_its_config_and_its_timer(
    secrets: ClusterSecrets,
) -> None:
    topo = lab_topology("dc1")
    plan = build_host_plan(topo, "dc2-svr1", secrets, "lab")
    files = {f.path: f for f in plan.files}
    conf = json.loads(files[ALERTS_CONFIG].content)
    assert files[ALERTS_CONFIG].mode == "0600"
    assert conf["emails"] == [topo.config.postmaster]
    assert conf["webhook"].startswith("http://192.0.2.100:")
    # The command runs the node package's module, from a timer (no cron twin).
    assert "from mailnode.alerts import main" in files[ALERTS_SCRIPT].content
    assert "/etc/systemd/system/mailcluster-alerts.timer" in files
    assert "/etc/cron.d/mailcluster-alerts" not in files
