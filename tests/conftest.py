"""Shared fixtures: lab topologies of both stacks and one set of generated secrets."""

from __future__ import annotations

import pytest

from cluster.lab.model import lab_topology
from cluster.material import ClusterSecrets, generate
from cluster.topology import Topology


@pytest.fixture(scope="session")
def topologies() -> dict[str, Topology]:
    return {dc: lab_topology(dc) for dc in ("dc1", "dc2")}


@pytest.fixture(scope="session")
def secrets(topologies: dict[str, Topology]) -> ClusterSecrets:
    topo = topologies["dc1"]
    sans = {dc: topo.certificate_names(dc) for dc in ("dc1", "dc2")}
    return generate(topo.domain, ("dc1", "dc2"), sans)
