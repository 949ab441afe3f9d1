"""Roles derived from config: rules that must hold for both stacks and both activeDc values."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import pytest

from cluster.lab.model import lab_topology
from cluster.ports import MESH_PORT
from cluster.services.mesh import mesh_endpoint
from cluster.topology import DcAddresses, NodeAddresses, Topology, vpc_address


@pytest.mark.parametrize("active", ["dc1", "dc2"])
@pytest.mark.parametrize("stack", ["dc1", "dc2"])
def test_roles_follow_active_dc(stack: str, active: str) -> None:
    topo = lab_topology(stack, {"activeDc": active})
    assert {n.dc for n in topo.dns_masters} == {active}
    assert {n.dc for n in topo.dns_slaves} == {"dc1", "dc2"} - {active}
    assert len(topo.nodes) == 4
    assert sorted(n.server_id for n in topo.nodes) == [1, 2, 3, 4]
    for node in topo.nodes:
        assert topo.peer(node).dc == node.dc and topo.peer(node) != node
    assert {n.dc for n in topo.own_nodes} == {stack}
    records = topo.dns_records("KEY", "ID")
    mx = [r for r in records if r.type == "MX"]
    assert mx and mx[0].value == f"10 mail.{topo.domain}."
    mail_a = [r.value for r in records if r.name == "mail" and r.type == "A"]
    assert mail_a == [topo.shared_ip(active)], "users always reach the active DC"
    # The one-time database writes sit where the writable master can be: the active DC.
    assert {n.dc for n in topo.nodes if topo.initialises_database(n)} == {active}


def test_txt_records_split_and_quoted() -> None:
    topo = lab_topology("dc1")
    dkim = next(r for r in topo.dns_records("A" * 400, "x") if "_domainkey" in r.name)
    parts = dkim.value.split('" "')
    assert len(parts) == 2 and all(len(p.strip('"')) <= 255 for p in parts)
    spf = next(r for r in topo.dns_records("k", "x") if r.value.startswith('"v=spf1'))
    for addr in topo.outbound_addresses():
        assert f"ip4:{addr}" in spf.value


def test_active_dc_addresses_required() -> None:
    topo = lab_topology("dc2", {"activeDc": "dc1"})
    with pytest.raises(ValueError, match="activeDc is dc1"):
        Topology(config=topo.config, dcs={"dc2": topo.dcs["dc2"]})


def test_bad_addresses_rejected() -> None:
    with pytest.raises(ValueError):
        DcAddresses(shared_ipv4="not-an-ip", nodes={
            "svr1": NodeAddresses("192.0.2.1", "198.18.0.1"),
            "svr2": NodeAddresses("192.0.2.2", "198.18.0.2"),
        })  # fmt: skip
    with pytest.raises(ValueError, match="needs nodes"):
        DcAddresses(shared_ipv4="192.0.2.9", nodes={"svr1": NodeAddresses("192.0.2.1", "x")})


@pytest.mark.parametrize("stack", ["dc1", "dc2"])
def test_mesh_addresses_are_distinct_and_inside_the_mesh(stack: str) -> None:
    topo = lab_topology(stack)
    mesh = [topo.mesh_address(n) for n in topo.nodes]
    assert len(set(mesh)) == 4
    public_or_private = {a for n in topo.nodes for a in (n.public_ipv4, n.private_ipv4)}
    for addr in mesh:
        assert ipaddress.IPv4Address(addr) in topo.mesh_network
        assert addr not in public_or_private
    # The same address whichever stack renders it (both stacks' plans name each other's).
    assert mesh == [lab_topology("dc1").mesh_address(n) for n in topo.nodes]


def test_mesh_endpoints_private_inside_a_dc_public_across() -> None:
    topo = lab_topology("dc1")
    node = topo.node("dc1-svr1")
    port = f":{MESH_PORT}"
    assert mesh_endpoint(node, topo.node("dc1-svr2")) == topo.node("dc1-svr2").private_ipv4 + port
    assert mesh_endpoint(node, topo.node("dc2-svr1")) == topo.node("dc2-svr1").public_ipv4 + port


def test_a_mesh_range_holding_a_node_address_is_refused() -> None:
    node_net = lab_topology("dc1").node("dc1-svr1").private_ipv4.rsplit(".", 1)[0] + ".0/24"
    with pytest.raises(ValueError, match="meshCidr"):
        lab_topology("dc1", {"meshCidr": node_net})


@pytest.mark.parametrize("stack", ["dc1", "dc2"])
def test_private_addresses_are_fixed_in_each_vpc_subnet(stack: str) -> None:
    topo = lab_topology(stack)
    for dc, addresses in topo.dcs.items():
        subnet = ipaddress.IPv4Network(lab_topology(dc).config.vpc_subnet)
        for slot, node in addresses.nodes.items():
            assert node.private_ipv4 == vpc_address(str(subnet), slot)
            # Clear of the two first and two last addresses, which Linode keeps.
            host = int(ipaddress.IPv4Address(node.private_ipv4)) - int(subnet.network_address)
            assert 2 <= host <= subnet.num_addresses - 3
    assert vpc_address("10.0.1.0/24", "svr1") == "10.0.1.11"
    assert vpc_address("10.0.1.0/28", "svr2") == "10.0.1.12"  # the smallest subnet allowed


def test_two_data_centres_with_one_private_address_are_refused() -> None:
    topo = lab_topology("dc1")
    clash = DcAddresses(topo.dcs["dc2"].shared_ipv4, {
        slot: replace(node, private_ipv4=topo.dcs["dc1"].nodes[slot].private_ipv4)
        for slot, node in topo.dcs["dc2"].nodes.items()
    })  # fmt: skip
    with pytest.raises(ValueError, match=r"same private address .*vpcSubnet"):
        Topology(topo.config, {"dc1": topo.dcs["dc1"], "dc2": clash})


def test_every_node_is_a_mesh_member_whether_its_dc_is_known_or_not() -> None:
    full = lab_topology("dc1")
    alone = Topology(full.config, {"dc1": full.dcs["dc1"]})
    assert len(alone.nodes) == 2
    members = alone.mesh_members()
    assert [name for name, _ in members] == [n.name for n in full.nodes]
    assert [address for _, address in members] == [full.mesh_address(n) for n in full.nodes]
    assert alone.all_mesh_addresses == full.all_mesh_addresses
