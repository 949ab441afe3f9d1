"""Render tests: every node of both lab stacks, rendered, then read by the daemons' checkers,
which run inside the lab's base root filesystem (the nodes' own packages), not on this machine."""

from __future__ import annotations

import pytest
from rendertools import NODES, base

from cluster.hostplan import build_host_plan
from cluster.lab.checkroot import CheckRoot
from cluster.material import ClusterSecrets
from cluster.plan import HostPlan
from cluster.topology import Topology


@pytest.fixture(scope="session")
def checkroot() -> CheckRoot:
    """The base the checkers run in (built or restored once per session, as the lab does)."""
    return base()


@pytest.fixture(params=NODES, ids=[n for _, n in NODES])
def plan(
    request: pytest.FixtureRequest, topologies: dict[str, Topology], secrets: ClusterSecrets
) -> tuple[Topology, HostPlan]:
    """(topology, plan) of one node; tests using it run once per node of both stacks."""
    stack, node = request.param
    return topologies[stack], build_host_plan(topologies[stack], node, secrets, "lab")
