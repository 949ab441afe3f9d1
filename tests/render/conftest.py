"""Render tests: every node of both lab stacks, rendered, then read by the daemons' checkers."""

from __future__ import annotations

import pytest
from rendertools import NODES

from cluster.hostplan import build_host_plan
from cluster.material import ClusterSecrets
from cluster.plan import HostPlan
from cluster.topology import Topology


@pytest.fixture(params=NODES, ids=[n for _, n in NODES])
def plan(
    request: pytest.FixtureRequest, topologies: dict[str, Topology], secrets: ClusterSecrets
) -> tuple[Topology, HostPlan]:
    """(topology, plan) of one node; tests using it run once per node of both stacks."""
    stack, node = request.param
    return topologies[stack], build_host_plan(topologies[stack], node, secrets, "lab")
