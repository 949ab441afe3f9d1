"""Rules of the Linode infrastructure, checked on the whole resource graph under Pulumi mocks."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from pulumi_harness import (
    ROOT_PASSWORD,
    Deployment,
    Registered,
    Result,
    committed_deployment,
    fourth_runs,
    is_wrapped_secret,
    plain_strings,
    run_stack,
    secrets_of,
    unwrap,
    variant_run,
)

from cluster import ports
from cluster.config import DEFAULT_REGIONS, load_config
from cluster.material import PASSWORD_FIELDS, PASSWORD_LENGTHS, generate
from cluster.stackfiles import read_stack_config
from cluster.topology import vpc_address

INTERNAL_PORTS = {22, 3306, 694, 12345}
# What the DC peer reaches over the VPC; dsync (12345) runs inside the mesh only (dovecot.py).
VPC_PORTS = {3306, 694}
WORLD = {"0.0.0.0/0", "::/0"}


@pytest.fixture(scope="module")
def deployment() -> Deployment:
    return committed_deployment()


@pytest.fixture(scope="module", params=["dc1", "dc2"])
def stack(request: pytest.FixtureRequest, deployment: Deployment) -> tuple[str, Result]:
    name = str(request.param)
    return name, deployment.dc1 if name == "dc1" else deployment.dc2


def _id(value: Any) -> str:
    return str(int(float(unwrap(value))))


def _instance_ids(result: Result) -> dict[str, str]:
    return {r.inputs["label"]: r.id for r in result.of_type("instance:Instance")}


def _ports(rule: dict[str, Any]) -> set[int]:
    out: set[int] = set()
    for part in str(rule.get("ports") or "").split(","):
        part = part.strip()
        if "-" in part:
            lo, hi = part.split("-")
            out.update(range(int(lo), int(hi) + 1))
        elif part:
            out.add(int(part))
    return out


def _sources(rule: dict[str, Any]) -> set[str]:
    return set(rule.get("ipv4s") or []) | set(rule.get("ipv6s") or [])


def _inbounds(result: Result) -> list[dict[str, Any]]:
    return list(unwrap(result.one("firewall:Firewall").inputs["inbounds"]))


# -- instances, placement, shared IP, volumes ---------------------------------------------------
def test_two_instances_in_region_in_one_anti_affinity_group(stack: tuple[str, Result]) -> None:
    dc, result = stack
    region = read_stack_config(dc).get("region", DEFAULT_REGIONS[dc])
    pg = result.one("placementGroup:PlacementGroup")
    assert pg.inputs["placementGroupType"] == "anti_affinity:local"
    assert pg.inputs["placementGroupPolicy"] == "strict"
    assert pg.inputs["region"] == region
    instances = result.of_type("instance:Instance")
    assert sorted(i.inputs["label"] for i in instances) == [f"{dc}-svr1", f"{dc}-svr2"]
    for inst in instances:
        assert inst.inputs["region"] == region
        assert inst.inputs["image"] == "linode/debian13"
        # No Linode private IPv4 (shared with every Linode of the region): the VPC carries
        # the private traffic.
        assert "privateIp" not in inst.inputs
        assert _id(inst.inputs["placementGroup"]["id"]) == pg.id
        assert inst.inputs["authorizedKeys"] == read_stack_config(dc)["sshKeys"]
        assert "rootPass" not in inst.inputs, "no root password unless given as a secret"


def test_each_node_has_a_vpc_interface_at_its_fixed_address(stack: tuple[str, Result]) -> None:
    dc, result = stack
    config = load_config(read_stack_config(dc), dc)
    vpc = result.one("vpc:Vpc")
    subnet = result.one("vpcSubnet:VpcSubnet")
    assert vpc.inputs["region"] == config.region
    assert vpc.inputs["label"] == f"mailcluster-{dc}"
    assert _id(subnet.inputs["vpcId"]) == vpc.id
    assert subnet.inputs["ipv4"] == config.vpc_subnet
    for inst in result.of_type("instance:Instance"):
        slot = inst.inputs["label"].rsplit("-", 1)[1]
        # Legacy configuration profile interfaces, pinned (the account setting decides the
        # default; "linode" would replace the node: change_rules.RULES).
        assert inst.inputs["interfaceGeneration"] == "legacy_config"
        public, private = inst.inputs["interfaces"]
        # The public interface first and primary: eth0, the default route over which the BGP
        # sessions run (IP sharing keeps working with the VPC interface present).
        assert public["purpose"] == "public" and public["primary"] is True
        assert private["purpose"] == "vpc" and not private.get("primary")
        assert _id(private["subnetId"]) == subnet.id
        assert subnet.urn in inst.dependencies
        # The address the program fixed before the node existed, and no 1:1 NAT (a NATed
        # public IPv4 cannot be shared).
        assert private["ipv4"] == {"vpc": vpc_address(config.vpc_subnet, slot)}
        exported = result.outputs["nodes"][inst.inputs["label"]]["privateIpv4"]
        assert exported == private["ipv4"]["vpc"]
        assert ipaddress.IPv4Address(exported) in ipaddress.IPv4Network(config.vpc_subnet)
    assert result.outputs["vpcSubnet"] == config.vpc_subnet


def test_shared_ip_is_on_svr1_and_shared_with_svr2(stack: tuple[str, Result]) -> None:
    dc, result = stack
    ids = _instance_ids(result)
    ip = result.one("instanceIp:InstanceIp")
    assert ip.inputs["public"] is True
    assert _id(ip.inputs["linodeId"]) == ids[f"{dc}-svr1"]
    share = result.one("instanceSharedIps:InstanceSharedIps")
    assert _id(share.inputs["linodeId"]) == ids[f"{dc}-svr2"]
    v6range = result.one("ipv6Range:Ipv6Range")
    # One sharing per instance (the provider's rule): the IPv4 and the IPv6 range, as Linode
    # takes a range (its address, no prefix length).
    assert share.inputs["addresses"] == [ip.state["address"], v6range.state["range"]]
    assert result.outputs["sharedIpv4"] == ip.state["address"]


def test_shared_ipv6_range_is_routed_to_svr1_and_shared_with_svr2(
    stack: tuple[str, Result],
) -> None:
    dc, result = stack
    ids = _instance_ids(result)
    v6range = result.one("ipv6Range:Ipv6Range")
    assert v6range.inputs["prefixLength"] == 64
    assert _id(v6range.inputs["linodeId"]) == ids[f"{dc}-svr1"]
    assert "routeTarget" not in v6range.inputs
    # The AAAA target and the PTRs' address: protected like the shared IPv4.
    assert v6range.options.protect
    share = result.one("instanceSharedIps:InstanceSharedIps")
    assert v6range.urn in share.dependencies
    # The service address is ::10 of the range, in the outputs and in the address contract
    # the peer stack reads (so dc2's zone has dc1's AAAA).
    net = ipaddress.IPv6Network(f"{v6range.state['range']}/64")
    shared6 = result.outputs["sharedIpv6"]
    assert ipaddress.IPv6Address(shared6) == net[0x10]
    assert result.outputs["sharedIpv6Range"] == str(net)
    assert result.outputs["addresses"]["sharedIpv6"] == shared6


def test_shared_ipv6_flows_to_the_peer_and_into_the_zone(deployment: Deployment) -> None:
    import pulumi_harness as harness

    from cluster.config import load_config
    from cluster.pulumi.peer import dict_to_addresses
    from cluster.pulumi.provision import real_plans
    from cluster.services import bind

    for peer in (deployment.dc1, deployment.dc2):
        seen = dict_to_addresses(peer.peer_view()["addresses"])
        assert seen.shared_ipv6 == peer.outputs["sharedIpv6"]
    # The active DC's zone, from the addresses dc1 sees: both DCs' shared IPv6s in AAAA
    # records and in SPF.
    d = deployment
    config = load_config(read_stack_config("dc1"), "dc1")
    plans = real_plans(config, d.dc1.outputs["addresses"], d.dc2.outputs["addresses"],
                       {**harness.full_secrets(d.dc1, d.dc1), "root_password": ""})  # fmt: skip
    zone = next(f.content for f in plans["dc1-svr1"].files if f.path == bind.BODY)
    for result, label in ((d.dc1, "mail"), (d.dc2, "dc2")):
        assert f"\n{label} IN AAAA {result.outputs['sharedIpv6']}\n" in zone
        assert f" ip6:{result.outputs['sharedIpv6']} " in zone


def test_an_old_peer_without_shared_ipv6_still_reads() -> None:
    """A peer deployed before the shared IPv6 existed exports no ``sharedIpv6``."""
    from cluster.pulumi.peer import dict_to_addresses

    node = {"publicIpv4": "192.0.2.1", "privateIpv4": "198.18.0.1", "publicIpv6": None}
    old = {"sharedIpv4": "192.0.2.9", "nodes": {"svr1": node, "svr2": node}}
    assert dict_to_addresses(old).shared_ipv6 is None


def test_every_node_has_its_own_attached_volume(stack: tuple[str, Result]) -> None:
    dc, result = stack
    ids = _instance_ids(result)
    volumes = {v.inputs["label"]: v for v in result.of_type("volume:Volume")}
    assert set(volumes) == {f"{dc}-svr1-mail", f"{dc}-svr2-mail"}
    for label, vol in volumes.items():
        assert _id(vol.inputs["linodeId"]) == ids[label.removesuffix("-mail")]
        assert vol.inputs["size"] == 80  # the seed's data disk, the default
        assert vol.inputs["region"] == read_stack_config(dc).get("region", DEFAULT_REGIONS[dc])


def test_storage_step_mounts_the_volume_linode_attaches(deployment: Deployment) -> None:
    """The device Linode names after the volume label is the one the storage step waits for."""
    result = deployment.dc1
    steps = {c.name: unwrap(c.inputs["create"]) for c in _commands(result)}
    for vol in result.of_type("volume:Volume"):
        node = vol.inputs["label"].removesuffix("-mail")
        device = f"/dev/disk/by-id/scsi-0Linode_Volume_{vol.inputs['label']}"
        assert device in steps[f"{node}-storage.volume"].split()


def test_volume_size_and_instance_type_follow_config() -> None:
    result = variant_run()
    assert {v.inputs["size"] for v in result.of_type("volume:Volume")} == {120}
    assert {i.inputs["type"] for i in result.of_type("instance:Instance")} == {"g6-standard-4"}


# -- firewall -----------------------------------------------------------------------------------
def test_firewall_drops_by_default_and_covers_both_nodes(stack: tuple[str, Result]) -> None:
    _, result = stack
    fw = result.one("firewall:Firewall")
    assert fw.inputs["inboundPolicy"] == "DROP"
    assert fw.inputs["outboundPolicy"] == "ACCEPT"
    # Each node joins the firewall when Linode creates it, so it is never up unfiltered: the
    # firewall exists first and the Instance names it (it used to attach after boot).
    for inst in result.of_type("instance:Instance"):
        assert _id(inst.inputs["firewallId"]) == fw.id
        assert fw.urn in inst.dependencies
    assert "linodes" not in fw.inputs and "linodes" in fw.options.ignore_changes


def test_no_internal_port_is_open_to_the_world(stack: tuple[str, Result]) -> None:
    _, result = stack
    rules = _inbounds(result)
    assert rules, "the firewall has inbound rules"
    for rule in rules:
        if _sources(rule) & WORLD:
            assert rule["protocol"] != "ALL"
            assert not _ports(rule) & INTERNAL_PORTS, rule
        for source in _sources(rule):
            net = ipaddress.ip_network(source)
            # Nothing but the world rules may be wider than a /24 (admins) ...
            if str(net) not in WORLD:
                assert net.prefixlen >= 24 or ":" in source, rule


def test_public_services_are_open_to_the_world(stack: tuple[str, Result]) -> None:
    _, result = stack
    world_tcp = set().union(*(_ports(r) for r in _inbounds(result)
                              if r["protocol"] == "TCP" and _sources(r) >= WORLD))  # fmt: skip
    world_udp = set().union(*(_ports(r) for r in _inbounds(result)
                              if r["protocol"] == "UDP" and _sources(r) >= WORLD))  # fmt: skip
    assert world_tcp == {25, 53, 80, 443, 465, 587, 993, 4190}  # no 143 unless imapPlaintext
    # DNS, and the WireGuard mesh: it answers only a packet made with a cluster key, so its
    # rule names no address (the other data centre's nodes, whatever their addresses).
    assert world_udp == {53, 51820}


def test_ssh_only_from_admin_cidrs(stack: tuple[str, Result]) -> None:
    dc, result = stack
    ssh = [r for r in _inbounds(result) if 22 in _ports(r)]
    assert len(ssh) == 1
    assert _sources(ssh[0]) == set(read_stack_config(dc)["adminCidrs"])


def test_internal_ports_only_from_the_vpc_subnet(deployment: Deployment) -> None:
    # The DC peer comes over the VPC (filtered by the Cloud Firewall with legacy interfaces),
    # the other data centre over the mesh (UDP 51820): no public, shared or IPv6 address may
    # reach an internal port, and the rule names no node. dsync is in no rule: mesh only.
    for result, dc in ((deployment.dc1, "dc1"), (deployment.dc2, "dc2")):
        subnet = load_config(read_stack_config(dc), dc).vpc_subnet
        internal = [r for r in _inbounds(result) if _ports(r) & (INTERNAL_PORTS - {22})]
        assert internal
        covered: set[int] = set()
        for rule in internal:
            assert _sources(rule) == {subnet}
            assert not rule.get("ipv6s")
            covered |= _ports(rule)
        assert covered == VPC_PORTS
        assert not any(ports.DOVEADM_PORT in _ports(r) for r in _inbounds(result))
        for node in result.outputs["nodes"].values():
            assert ipaddress.IPv4Address(node["privateIpv4"]) in ipaddress.IPv4Network(subnet)


def test_the_firewall_is_whole_from_the_first_up_and_names_no_node(
    deployment: Deployment,
) -> None:
    # The firewall exists before the nodes (each gets it at creation) and its rules come from
    # config alone: the first `up` of a stack has every rule a later one has, and no rule
    # names any node's own address (public, private, shared), of either data centre.
    assert _inbounds(deployment.dc1_first) == _inbounds(deployment.dc1)
    nodes = set()
    for result in (deployment.dc1, deployment.dc2):
        out = result.outputs
        nodes |= {out["sharedIpv4"], out["sharedIpv6"]}
        for node in out["nodes"].values():
            nodes |= {node["publicIpv4"], node["privateIpv4"], node["publicIpv6"]}
    for result in (deployment.dc1_first, deployment.dc2, deployment.dc1):
        fw = result.one("firewall:Firewall")
        sources = {s.split("/")[0] for r in _inbounds(result) for s in _sources(r)}
        assert not sources & nodes, sources & nodes
        instances = {r.urn for r in result.of_type("instance:Instance")}
        assert not instances & set(fw.dependencies)


def test_imap_plaintext_opens_143() -> None:
    result = variant_run()
    assert any(143 in _ports(r) and _sources(r) >= WORLD for r in _inbounds(result))


# -- secrets ------------------------------------------------------------------------------------
def _generated_passwords(result: Result) -> list[str]:
    secrets = secrets_of(result)
    return [getattr(secrets, f) for f in PASSWORD_FIELDS]


def test_cluster_secrets_output_is_a_pulumi_secret(deployment: Deployment) -> None:
    assert {"clusterSecrets", "clusterCaKey"} <= deployment.dc1.secret_outputs
    passwords = _generated_passwords(deployment.dc1)
    assert len(set(passwords)) == len(PASSWORD_FIELDS)
    # dc2 generates nothing: it runs with dc1's material.
    assert not deployment.dc2.of_type("RandomPassword")
    assert "clusterSecrets" not in deployment.dc2.outputs
    assert "clusterCaKey" not in deployment.dc2.outputs
    # ... but signs its own certificate with dc1's CA, for its own names and addresses.
    csr = deployment.dc2.one_named("tls:index/certRequest:CertRequest", "dc2-tls")
    out = deployment.dc2.outputs
    assert "mail.example.com" in csr.inputs["dnsNames"]
    assert "dc2-svr1.example.com" in csr.inputs["dnsNames"]
    assert out["sharedIpv4"] in csr.inputs["ipAddresses"]
    assert out["nodes"]["dc2-svr2"]["privateIpv4"] in csr.inputs["ipAddresses"]
    signed = deployment.dc2.one_named("tls:index/locallySignedCert:LocallySignedCert", "dc2-tls")
    assert is_wrapped_secret(signed.inputs["caPrivateKeyPem"])
    assert unwrap(signed.inputs["caPrivateKeyPem"]) == deployment.dc1.outputs["clusterCaKey"]


def test_both_appliers_make_passwords_from_one_table(deployment: Deployment) -> None:
    """pulumi-random (Linode) and ``generate`` (the lab) give each field the same length."""
    assert PASSWORD_LENGTHS["roundcube_des_key"] == 24  # Roundcube's 3DES key: exactly 24
    randoms = {r.name: r.inputs for r in deployment.dc1.of_type("randomPassword:RandomPassword")}
    for field, length in PASSWORD_LENGTHS.items():
        inputs = randoms[f"dc1-material-{field.replace('_', '-')}"]
        assert inputs["length"] == length and inputs["special"] is False
    lab = generate("example.com", ["dc1"], {"dc1": ["mail.example.com"]})
    for field, length in PASSWORD_LENGTHS.items():
        value = getattr(lab, field)
        assert len(value) == length and value.isalnum(), field


@pytest.mark.parametrize("which", ["dc1", "dc2"])
def test_generated_secrets_never_in_a_plain_input(deployment: Deployment, which: str) -> None:
    result = deployment.dc1 if which == "dc1" else deployment.dc2
    material = secrets_of(deployment.dc1)
    needles = [*_generated_passwords(deployment.dc1), material.dkim_private_key_pem.splitlines()[1]]
    needles.append(deployment.dc1.outputs["clusterCaKey"].splitlines()[1])
    needles += [r.state["privateKeyPemPkcs8"].splitlines()[1] for r in result.resources
                if r.typ == "tls:index/privateKey:PrivateKey"]  # fmt: skip
    seen_in_secret = False
    for res in result.resources:
        if res.typ == "pulumi:pulumi:StackReference":
            continue
        for text in plain_strings(res.inputs):
            for needle in needles:
                assert needle not in text, f"{res.typ} {res.name} holds a secret in clear"
        seen_in_secret |= any(n in str(unwrap(res.inputs)) for n in needles)
    # The check above is not vacuous: the secrets do reach the hosts, inside secrets.
    assert seen_in_secret


def test_root_password_is_set_only_when_given_and_stays_secret() -> None:
    for inst in variant_run().of_type("instance:Instance"):
        assert is_wrapped_secret(inst.inputs["rootPass"])
        assert unwrap(inst.inputs["rootPass"]) == ROOT_PASSWORD
        assert ROOT_PASSWORD not in list(plain_strings(inst.inputs))


# -- peer ----------------------------------------------------------------------------------------
def test_dc2_references_the_configured_peer_stack(deployment: Deployment) -> None:
    ref = deployment.dc2.one("pulumi:pulumi:StackReference")
    assert ref.name == read_stack_config("dc2")["peerStack"] == "dc1"
    ref1 = deployment.dc1.one("pulumi:pulumi:StackReference")
    assert ref1.name == read_stack_config("dc1")["peerStack"]


def test_dc2_without_dc1_outputs_fails_clearly() -> None:
    with pytest.raises(Exception, match=r"pulumi up -s dc1"):
        run_stack("dc2", read_stack_config("dc2"), {})


def test_stack_without_peer_declares_no_reference(deployment: Deployment) -> None:
    raw = {**read_stack_config("dc1"), "peerStack": ""}
    result = run_stack("dc1", raw, previous=deployment.dc1_first)
    assert not result.of_type("pulumi:pulumi:StackReference")
    assert result.outputs["topologyDcs"] == ["dc1"]


# -- outputs --------------------------------------------------------------------------------------
def test_outputs(stack: tuple[str, Result]) -> None:
    dc, result = stack
    out = result.outputs
    assert out["activeDc"] == "dc1"
    assert out["webmailUrl"] == "https://mail.example.com/"
    assert out["adminUrl"] == "https://mail.example.com/postfixadmin/"
    assert out["hostnames"] == [f"{dc}-svr1.example.com", f"{dc}-svr2.example.com"]
    instances = {i.inputs["label"]: i for i in result.of_type("instance:Instance")}
    for node, inst in instances.items():
        exported = out["nodes"][node]
        assert exported["publicIpv4"] == inst.state["ipAddress"]
        assert exported["privateIpv4"] == inst.inputs["interfaces"][1]["ipv4"]["vpc"]
        assert exported["publicIpv6"] == inst.state["ipv6"].split("/")[0]
        assert exported["hostname"] == f"{node}.example.com"
    assert out["addresses"]["sharedIpv4"] == out["sharedIpv4"]


# -- DNS ----------------------------------------------------------------------------------------
def _rdns(result: Result) -> dict[str, str]:
    return {str(r.inputs["address"]): str(r.inputs["rdns"]) for r in result.of_type("Rdns")}


def _commands(result: Result) -> list[Registered]:
    return result.of_type("remote:Command")


def test_rdns_matches_forward_names_after_provisioning(deployment: Deployment) -> None:
    result = deployment.dc1
    out = result.outputs
    # The shared IPv6 too: mail leaving over IPv6 has a PTR matching its AAAA.
    expected = {out["sharedIpv4"]: "mail.example.com", out["sharedIpv6"]: "mail.example.com"}
    for node, addr in out["nodes"].items():
        expected[addr["publicIpv4"]] = f"{node}.example.com"
        expected[addr["publicIpv6"]] = f"{node}.example.com"
    assert _rdns(result) == expected
    command_urns = {c.urn for c in _commands(result) if not c.name.endswith("-handover")}
    for rec in result.of_type("Rdns"):
        assert rec.inputs["waitForAvailable"] is True
        # Ordered after every provisioning step: our own BIND serves the forward names.
        assert command_urns <= set(rec.dependencies)


def test_standby_rdns_waits_until_the_active_dc_serves_its_names(deployment: Deployment) -> None:
    # dc2's first up: dc1's outputs show it rendered only dc1, so no PTR can resolve yet.
    assert deployment.dc1_first.outputs["topologyDcs"] == ["dc1"]
    assert _rdns(deployment.dc2) == {}
    # After dc1's next up dc1 serves dc2's names: dc2's next up sets its PTRs.
    assert deployment.dc1.outputs["topologyDcs"] == ["dc1", "dc2"]
    again = fourth_runs()[1]
    names = _rdns(again)
    assert names[again.outputs["sharedIpv4"]] == "dc2.example.com"
    assert names[again.outputs["sharedIpv6"]] == "dc2.example.com"
    assert len(names) == 6


def test_linode_secondary_zone_follows_the_bind_servers(deployment: Deployment) -> None:
    result = variant_run()
    zone = result.one("domain:Domain")
    assert zone.inputs["type"] == "slave" and zone.inputs["domain"] == "example.com"
    own, peer = result.outputs["addresses"], deployment.dc2.outputs["addresses"]
    masters = [own["sharedIpv4"], *(n["publicIpv4"] for n in own["nodes"].values())]
    standby = [peer["sharedIpv4"], *(n["publicIpv4"] for n in peer["nodes"].values())]
    assert zone.inputs["masterIps"] == masters + standby  # the active DC's masters first
    # dc2 never declares the account-wide zone: dc1's stack owns it.
    raw2 = {**read_stack_config("dc2"), "linodeSecondaryDns": True, "provision": False}
    assert not run_stack("dc2", raw2, deployment.dc1.peer_view()).of_type("domain:Domain")
    assert not deployment.dc1.of_type("domain:Domain")


def test_failover_is_a_config_change_of_dc2_alone(deployment: Deployment) -> None:
    raw = {**read_stack_config("dc2"), "activeDc": "dc2"}
    result = run_stack("dc2", raw, deployment.dc1.peer_view(), previous=deployment.dc2)
    assert result.outputs["activeDc"] == "dc2"
    # dc2 now serves mail and its own names: its PTRs follow at once, its VIP is mail.<domain>.
    assert _rdns(result)[result.outputs["sharedIpv4"]] == "mail.example.com"
    assert _rdns(result)[result.outputs["sharedIpv6"]] == "mail.example.com"
    assert _commands(result)
    # dc1 rejoins as the standby from dc2's outputs.
    back = run_stack(
        "dc1",
        {**read_stack_config("dc1"), "activeDc": "dc2"},
        result.peer_view(),
        previous=deployment.dc1,
    )
    assert back.outputs["activeDc"] == "dc2" and _commands(back)
    assert "clusterSecrets" in back.outputs  # dc1 keeps owning the material


def test_ptrs_wait_for_the_glue_without_blocking_the_up(
    deployment: Deployment, caplog: pytest.LogCaptureFixture
) -> None:
    # A first `up`: nothing resolves until the registrar's glue points at the shared IPs this
    # run creates. No PTR is declared (Linode would retry for 15 minutes, then fail); a
    # warning names the glue records.
    raw = {**read_stack_config("dc1"), "provision": False}  # the same rule, faster
    first = run_stack("dc1", raw, resolves=lambda name, address: False)
    assert _rdns(first) == {}
    vip = first.outputs["sharedIpv4"]
    assert f"ns1.example.com -> {vip}" in caplog.text
    assert first.outputs["reverseDns"] == []
    # Once declared, a PTR stays declared even when a later lookup fails (a resolver hiccup
    # must not delete it).
    assert set(deployment.dc1.outputs["reverseDns"]) == set(_rdns(deployment.dc1))
    later = run_stack(
        "dc1", raw, deployment.dc2.peer_view(), previous=deployment.dc1,
        resolves=lambda name, address: False,
    )  # fmt: skip
    assert _rdns(later) == _rdns(deployment.dc1)
