"""What a lab apply of a stack knows of the other data centre: what a `pulumi up` of it would
(cluster/lab/stacks.py). No lab needed: the state is a plain record."""

from __future__ import annotations

import pytest

from cluster.lab.run import LabError
from cluster.lab.stacks import (
    applied_topology,
    forget_applied,
    keep_sets,
    record_applied,
    stale_stacks,
)
from cluster.lab.state import LabState


def test_a_first_deployment_is_dc1_dc2_dc1() -> None:
    state = LabState()
    # dc2 is the standby of dc1: refused until dc1 was applied, as the program refuses it.
    with pytest.raises(LabError, match="activeDc is dc1, which was never applied"):
        applied_topology(state, "dc2")
    first = applied_topology(state, "dc1")
    assert sorted(first.dcs) == ["dc1"] and len(first.nodes) == 2
    record_applied(state, first)
    assert stale_stacks(state) == []
    second = applied_topology(state, "dc2")
    assert sorted(second.dcs) == ["dc1", "dc2"]
    record_applied(state, second)
    # dc1 was applied without dc2: the third run.
    assert stale_stacks(state) == ["dc1"]
    third = applied_topology(state, "dc1")
    assert sorted(third.dcs) == ["dc1", "dc2"]
    record_applied(state, third)
    assert stale_stacks(state) == []
    # Four new nodes (wipe): a first deployment again.
    forget_applied(state)
    assert sorted(applied_topology(state, "dc1").dcs) == ["dc1"]


def test_a_failed_over_standby_needs_no_peer() -> None:
    state = LabState(sets={"dc2": {"activeDc": "dc2"}})
    assert sorted(applied_topology(state, "dc2").dcs) == ["dc2"]


def test_the_vpc_subnet_cannot_be_set_in_the_lab() -> None:
    state = LabState()
    with pytest.raises(LabError, match="vpcSubnet: fixed by the lab's network"):
        keep_sets(state, "dc1", {"vpcSubnet": "198.18.9.0/24"})
    assert state.sets == {}
