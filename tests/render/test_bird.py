"""sharedIpMethod bgp: the nodes' BIRD configuration and the lab route servers' one, read by
BIRD's own parser (``bird -p``) in the lab base; the Heartbeat resource and the steps."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import pytest
from rendertools import files, in_base, write_tree

from cluster.config import DC_NAMES
from cluster.hostplan import build_host_plan
from cluster.lab import routeservers
from cluster.lab.model import lab_topology
from cluster.material import ClusterSecrets
from cluster.plan import HostPlan
from cluster.services import bgp, role
from cluster.topology import DcAddresses, Topology


def directives(text: str) -> list[list[str]]:
    return [ln.split() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


def _bird_parse(root: Path, conf: str) -> None:
    proc = in_base("bird", "-p", "-c", str(root / conf.lstrip("/")))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # BIRD 2.17 warns of deprecated syntax while it parses: a warning fails too.
    assert proc.stdout + proc.stderr == "", proc.stdout + proc.stderr


def _rooted(hp: HostPlan, root: Path) -> None:
    """The node's files under ``root``, with the include pointing under ``root`` too."""
    write_tree(hp, root)
    # The include's directory exists wherever BIRD runs (its init script and the plan make it).
    (root / role.BGP_ANNOUNCE_FILE.lstrip("/")).parent.mkdir(parents=True)
    conf = root / bgp.BIRD_CONF.lstrip("/")
    announce = str(root) + role.BGP_ANNOUNCE_FILE
    conf.write_text(
        conf.read_text().replace(
            role.BGP_ANNOUNCE_FILE.removesuffix(".conf"), announce.removesuffix(".conf")
        )
    )


@pytest.mark.checkers
def test_node_bird_conf_parses_announcing_or_not(plan: tuple[Topology, HostPlan]) -> None:
    """BIRD accepts the node's configuration both ways the resource leaves it: without the
    announce file (the standby, a node that just booted) and with it (the holder)."""
    topo, hp = plan
    assert topo.config.shared_ip_method == "bgp"  # the lab's default
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        root = Path(tmp)
        _rooted(hp, root)
        _bird_parse(root, bgp.BIRD_CONF)
        announce = root / role.BGP_ANNOUNCE_FILE.lstrip("/")
        announce.parent.mkdir(parents=True, exist_ok=True)
        announce.write_text(files(hp)[bgp.SHARED_ROUTES])
        _bird_parse(root, bgp.BIRD_CONF)


def test_node_bird_conf_facts(plan: tuple[Topology, HostPlan]) -> None:
    topo, hp = plan
    node = topo.node(hp.host)
    conf = files(hp)[bgp.BIRD_CONF]
    assert f"router id {node.public_ipv4};" in conf
    assert f"local {node.public_ipv6} as 65001;" in conf
    assert "multihop 10;" in conf and "extended next hop on;" in conf
    assert f"hold time {topo.config.bgp_hold_time_s};" in conf
    assert f"keepalive time {topo.config.bgp_keepalive_s};" in conf
    assert "bgp_community.add((65000, 1));" in conf
    neighbors = [d[1] for d in directives(conf) if d[0] == "neighbor"]
    assert neighbors == list(topo.dcs[node.dc].route_servers)
    shared = files(hp)[bgp.SHARED_ROUTES]
    assert f"route {topo.shared_ip(node.dc)}/32 blackhole;" in shared
    assert f"route {routeservers.shared_prefixes(node.dc)[1]} blackhole;" in shared


def test_haresources_bgp(plan: tuple[Topology, HostPlan]) -> None:
    topo, hp = plan
    node = topo.node(hp.host)
    (line,) = directives(files(hp)["/etc/ha.d/haresources"])
    assert line == [f"{node.dc}-svr1", bgp.HA_RESOURCE, "mailcluster"]
    names = [s.name for s in hp.steps]
    assert bgp.LO_STEP in names and bgp.BIRD_STEP in names and bgp.LEAVE_STEP not in names
    lo = hp.step(bgp.LO_STEP).script
    assert f"{topo.shared_ip(node.dc)}/32" in lo and f"{topo.shared_ipv6(node.dc)}/128" in lo


@pytest.mark.checkers
def test_resource_script_parses(plan: tuple[Topology, HostPlan]) -> None:
    _, hp = plan
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        script = Path(tmp) / "resource"
        script.write_text(files(hp)[bgp.RESOURCE_SCRIPT])
        proc = in_base("sh", "-n", str(script))
        assert proc.returncode == 0, proc.stderr


def test_linode_route_servers_by_region(secrets: ClusterSecrets) -> None:
    """On Linode the route servers are the region's (dc1's us-iad is Washington, id 17); nothing
    is downloaded (no lelastic)."""
    topo = lab_topology("dc1")
    linode = Topology(
        config=topo.config,
        dcs={dc: _without_route_servers(topo, dc) for dc in DC_NAMES},
    )
    hp = build_host_plan(linode, "dc1-svr2", secrets, "linode")
    neighbors = [d[1] for d in directives(files(hp)[bgp.BIRD_CONF]) if d[0] == "neighbor"]
    assert topo.config.region == "us-iad"
    assert neighbors == [f"2600:3c0f:17:34::{i}" for i in range(1, 5)]
    for step in hp.steps:
        assert "curl" not in step.script and "lelastic" not in step.script


def _without_route_servers(topo: Topology, dc: str) -> DcAddresses:
    return dataclasses.replace(topo.dcs[dc], route_servers=())


def test_arp_plan_has_only_the_leave_step(secrets: ClusterSecrets) -> None:
    topo = lab_topology("dc1", {"sharedIpMethod": "arp"})
    hp = build_host_plan(topo, "dc1-svr1", secrets, "lab")
    names = {s.name for s in hp.steps}
    assert bgp.LEAVE_STEP in names
    assert not names & {bgp.LO_STEP, bgp.BIRD_STEP}
    assert bgp.BIRD_CONF not in files(hp)


@pytest.mark.checkers
@pytest.mark.parametrize("dc", DC_NAMES)
@pytest.mark.parametrize("index", [1, 4])
def test_route_server_conf_parses(dc: str, index: int) -> None:
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        conf = Path(tmp) / "bird.conf"
        conf.write_text(routeservers.render_config(dc, index))
        proc = in_base("bird", "-p", "-c", str(conf))
        assert proc.returncode == 0, proc.stdout + proc.stderr
