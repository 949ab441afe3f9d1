"""`failover --to` and `switchover`: their plans and checks against stand-ins (both run against
the lab in the drills: tests/lab/test_y_drills.py, drills 3 and 6)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest

from cluster.ops import cli, failover, switchover
from cluster.ops.failover import FailoverStep, StackView, plan_failover, run_failover
from cluster.ops.target import OpsError, Result
from cluster.services.role import ROLE_SCRIPT


def views(dc1: str, dc2: str, up1: bool = True, up2: bool = True) -> dict[str, StackView]:
    """Each stack's configured activeDc and whether its nodes answer."""
    return {"dc1": StackView("dc1", "dc1", dc1, up1), "dc2": StackView("dc2", "dc2", dc2, up2)}


def actions(plan: failover.FailoverPlan) -> list[tuple[str, str]]:
    return [(s.dc, s.action) for s in plan.steps]


def test_a_lost_dc_only_the_survivor_is_promoted_and_the_rejoin_is_left_for_later() -> None:
    plan = plan_failover("dc2", views("dc1", "dc1", up1=False))
    assert actions(plan) == [("dc2", "promote")]
    assert "dc1 cannot be reached" in plan.deferred and "failover --to dc2" in plan.deferred


def test_the_same_command_once_the_lost_dc_is_back_rejoins_it() -> None:
    plan = plan_failover("dc2", views("dc1", "dc2"))
    assert actions(plan) == [("dc1", "rejoin as the standby")]
    assert plan.steps[0].active_dc == "dc2" and not plan.deferred


def test_failback_steps_the_active_side_down_first() -> None:
    # Never two writable masters: the stack that becomes the standby is applied before the other.
    plan = plan_failover("dc1", views("dc2", "dc2"))
    assert actions(plan) == [("dc2", "step down"), ("dc1", "promote")]
    assert all(s.active_dc == "dc1" for s in plan.steps)


def test_nothing_to_do_when_both_stacks_agree() -> None:
    plan = plan_failover("dc1", views("dc1", "dc1"))
    assert plan.steps == () and "nothing to apply" in plan.describe()


def test_a_partly_reachable_old_dc_is_refused() -> None:
    # One node of dc1 is dead, the other may still be the writable master: two masters if dc2
    # were promoted now, and dc1's apply cannot run.
    v = views("dc1", "dc1", up1=False)
    v["dc1"] = StackView("dc1", "dc1", "dc1", reachable=False, partial=True)
    with pytest.raises(OpsError, match="dc1 is only partly reachable"):
        plan_failover("dc2", v)


def test_an_unreachable_target_cannot_be_promoted() -> None:
    with pytest.raises(OpsError, match="dc2 cannot be reached"):
        plan_failover("dc2", views("dc1", "dc1", up2=False))


def test_an_unknown_dc_is_named() -> None:
    with pytest.raises(OpsError, match="--to: must be one of dc1, dc2"):
        plan_failover("dc3", views("dc1", "dc1"))


class FakeApplier:
    def __init__(self, v: dict[str, StackView], fail_on: str = "") -> None:
        self.v = v
        self.fail_on = fail_on
        self.applied: list[tuple[str, str]] = []

    def views(self) -> dict[str, StackView]:
        return self.v

    def apply(self, step: FailoverStep, log: failover.Log) -> None:
        if step.dc == self.fail_on:
            raise OpsError(f"stack {step.stack}: `up` failed")
        self.applied.append((step.stack, step.active_dc))


def test_steps_run_in_order_and_a_failure_stops_the_sequence() -> None:
    plan = plan_failover("dc1", views("dc2", "dc2"))
    ok = FakeApplier(views("dc2", "dc2"))
    lines: list[str] = []
    run_failover(plan, ok, lines.append)
    assert ok.applied == [("dc2", "dc1"), ("dc1", "dc1")]
    assert lines[0].startswith("[1/2] dc2") and any(line.startswith("[2/2] dc1") for line in lines)
    failing = FakeApplier(views("dc2", "dc2"), fail_on="dc2")
    with pytest.raises(OpsError):
        run_failover(plan, failing, lines.append)
    assert failing.applied == []  # dc1 was never promoted while dc2 still claimed the role


@pytest.fixture
def fake_applier(monkeypatch: pytest.MonkeyPatch) -> FakeApplier:
    fake = FakeApplier(views("dc1", "dc1"))
    monkeypatch.setattr(cli, "applier_of", lambda args: fake)
    return fake


def test_dry_run_prints_the_plan_and_changes_nothing(
    fake_applier: FakeApplier, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["--lab", "failover", "--to", "dc2", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "1. dc1 (stack dc1): set activeDc=dc2, apply: step down" in out
    assert "2. dc2 (stack dc2): set activeDc=dc2, apply: promote" in out
    assert fake_applier.applied == []


def test_without_yes_a_script_is_refused(
    fake_applier: FakeApplier, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["--lab", "failover", "--to", "dc2"]) == 2  # stdin is not a terminal here
    assert "add --yes" in capsys.readouterr().err
    assert fake_applier.applied == []
    assert cli.main(["--lab", "failover", "--to", "dc2", "--yes"]) == 0
    assert fake_applier.applied == [("dc1", "dc2"), ("dc2", "dc2")]


# -- switchover -----------------------------------------------------------------------------------
def status(role: str, *, io: str = "Yes", hb: bool = True, fenced: bool = False,
           read_only: bool = True) -> dict[str, Any]:  # fmt: skip
    return {"role": role, "heartbeat_running": hb, "fenced": fenced,
            "db": {"running": True, "read_only": read_only},
            "replication": {"io_running": io, "sql_running": io}}  # fmt: skip


class RoleTarget:
    """Four nodes answering `mailcluster-role status --json`; hb_standby on the active node
    hands the role to its peer, as Heartbeat does."""

    description = "fake"

    def __init__(self, states: dict[str, dict[str, Any]]) -> None:
        self.states = states
        self.calls: list[tuple[str, tuple[str, ...]]] = []

    def nodes(self) -> tuple[str, ...]:
        return tuple(self.states)

    def run(self, node: str, argv: Sequence[str], stdin: str = "") -> Result:
        self.calls.append((node, tuple(argv)))
        if list(argv) == [ROLE_SCRIPT, "status", "--json"]:
            return Result(0, json.dumps(self.states[node]), "")
        if list(argv) == [switchover.HB_STANDBY, "all"]:
            peer = "dc1-svr2" if node == "dc1-svr1" else "dc1-svr1"
            self.states[peer] = status("active", io="", read_only=False)
            self.states[node] = status("standby")
            return Result(0, "", "")
        raise AssertionError(argv)


def cluster(**peer: Any) -> dict[str, dict[str, Any]]:
    return {"dc1-svr1": status("active", io="", read_only=False),
            "dc1-svr2": status("standby", **peer),
            "dc2-svr1": status("standby"), "dc2-svr2": status("standby")}  # fmt: skip


def test_switchover_hands_the_role_to_the_dc_peer() -> None:
    target = RoleTarget(cluster())
    result = switchover.switchover(target, lambda line: None)
    assert (result.old, result.new) == ("dc1-svr1", "dc1-svr2")
    assert ("dc1-svr1", (switchover.HB_STANDBY, "all")) in target.calls
    assert result.promoted_s <= result.rejoined_s


@pytest.mark.parametrize(
    ("peer", "reason"),
    [({"io": "No"}, "not replicating"), ({"hb": False}, "Heartbeat is not running"),
     ({"fenced": True}, "fenced")],
)  # fmt: skip
def test_switchover_refuses_a_peer_that_cannot_take_the_role(
    peer: dict[str, Any], reason: str
) -> None:
    target = RoleTarget(cluster(**peer))
    with pytest.raises(OpsError, match=reason):
        switchover.switchover(target, lambda line: None)
    assert not [c for c in target.calls if c[1][0] == switchover.HB_STANDBY]


def test_switchover_needs_one_active_node() -> None:
    states = cluster()
    states["dc1-svr1"] = status("standby")
    with pytest.raises(OpsError, match="exactly one active node"):
        switchover.switchover(RoleTarget(states), lambda line: None)
