"""The first deployment in one `pulumi up` per stack (issue 24), under mocks: `up -s dc1` gives a
serving dc1, `up -s dc2` a dc2 that replicates dc1, `up -s dc1` once more and dc1 knows dc2.
Every run provisions every node of its stack (the firewall names no node, so nothing waits for
an address), a fourth run declares what the third did, and a node Linode made anew (new public
addresses) is whole after one `up` of its stack."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from pulumi_harness import (
    Deployment,
    Result,
    committed_deployment,
    fourth_runs,
    full_secrets,
    run_stack,
    unwrap,
)

from cluster.config import load_config
from cluster.plan import HostPlan
from cluster.pulumi.provision import applied_command, real_plans, resource_name
from cluster.services import bind, mesh, role
from cluster.stackfiles import read_stack_config

RDNS = "linode:index/rdns:Rdns"


@pytest.fixture(scope="module")
def deployment() -> Deployment:
    return committed_deployment()


def provisioned(result: Result, peer: Result | None, material: Result) -> dict[str, HostPlan]:
    """The plans ``result``'s run rendered, after checking that every step of every node of the
    stack has its Command, with the plan's command and digest, on that node's address."""
    dc = result.outputs["dc"]
    plans = real_plans(
        load_config(read_stack_config(dc), dc),
        result.outputs["addresses"],
        peer.outputs["addresses"] if peer else None,
        full_secrets(result, material),
    )
    assert sorted(plans) == [f"{dc}-svr1", f"{dc}-svr2"]
    commands = {c.name: c for c in result.of_type("remote:Command")}
    for node, plan in plans.items():
        digests = plan.digests()
        host = result.outputs["nodes"][node]["publicIpv4"]
        for step in plan.steps:
            cmd = commands[resource_name(node, step.name)]
            assert cmd.inputs["create"] == applied_command(node, step.name, step.secret,
                                                           step.command)  # fmt: skip
            assert unwrap(cmd.inputs["triggers"]) == [digests[step.name]]
            assert unwrap(cmd.inputs["connection"])["host"] == host
    return plans


def content(plan: HostPlan, path: str) -> str:
    return next(f.content for f in plan.files if f.path == path)


def endpoints(plan: HostPlan) -> dict[str, str | None]:
    """Peer name -> its Endpoint in the node's WireGuard config (None: none written)."""
    out: dict[str, str | None] = {}
    for section in content(plan, mesh.CONF).split("[Peer]")[1:]:
        lines = [line.strip() for line in section.strip().splitlines()]
        name = lines[0].removeprefix("# ")
        out[name] = next((ln.split(" = ", 1)[1] for ln in lines if ln.startswith("Endpoint")), None)
    return out


def test_three_runs_provision_every_node_and_each_dc_ends_knowing_the_other(
    deployment: Deployment,
) -> None:
    d = deployment
    # 1. dc1, before dc2 exists: provisioned, serving, configured for itself alone; dc2's
    # nodes are mesh peers already (without an endpoint) so that dc2 can replicate at once.
    run1 = provisioned(d.dc1_first, None, d.dc1_first)
    assert d.dc1_first.outputs["topologyDcs"] == ["dc1"]
    ends = endpoints(run1["dc1-svr1"])
    assert set(ends) == {"dc1-svr2", "dc2-svr1", "dc2-svr2"}
    assert ends["dc2-svr1"] is None and ends["dc2-svr2"] is None and ends["dc1-svr2"]
    assert "dc2-svr1" not in content(run1["dc1-svr1"], bind.BODY)
    # 2. dc2, from dc1's outputs: provisioned as the standby data centre, its replicas reading
    # from the active data centre's nodes over the mesh, its name servers dc1's secondaries.
    run2 = provisioned(d.dc2, d.dc1_first, d.dc1_first)
    assert d.dc2.outputs["topologyDcs"] == ["dc1", "dc2"]
    conf = content(run2["dc2-svr1"], role.CLUSTER_CONF)
    mesh_net = ipaddress.IPv4Network(load_config(read_stack_config("dc1"), "dc1").mesh_cidr)
    assert f"ACTIVE_DB_NODES='{mesh_net[1]} {mesh_net[2]}'" in conf
    assert "DNS_ROLE=slave" in conf
    public = d.dc1_first.outputs["nodes"]["dc1-svr1"]["publicIpv4"]
    assert endpoints(run2["dc2-svr1"])["dc1-svr1"] == f"{public}:51820"
    # 3. dc1 once more: it knows dc2 (endpoints, dc2's names in the zone it masters).
    run3 = provisioned(d.dc1, d.dc2, d.dc1)
    assert d.dc1.outputs["topologyDcs"] == ["dc1", "dc2"]
    dc2_public = d.dc2.outputs["nodes"]["dc2-svr1"]["publicIpv4"]
    assert endpoints(run3["dc1-svr1"])["dc2-svr1"] == f"{dc2_public}:51820"
    assert f"\ndc2-svr1 IN A {dc2_public}\n" in content(run3["dc1-svr1"], bind.BODY)
    # The addresses dc1 exported did not move between its runs: dc2's view of dc1 holds.
    assert d.dc1.outputs["addresses"] == d.dc1_first.outputs["addresses"]


def declared(result: Result) -> dict[str, Any]:
    """Every resource (URN) with its inputs, secrets unwrapped."""
    return {r.urn: unwrap(r.inputs) for r in result.resources}


def test_a_fourth_run_of_dc1_declares_the_same_resources_with_the_same_inputs(
    deployment: Deployment,
) -> None:
    dc1_again, _ = fourth_runs()
    assert declared(dc1_again) == declared(deployment.dc1)


def test_a_fourth_run_of_dc2_only_adds_its_ptrs(deployment: Deployment) -> None:
    """The one thing of dc2 that waits on dc1's third run: Linode sets a PTR only for a name
    that resolves, and dc2's names resolve once dc1 (the zone's master) knows dc2. dc2's next
    `up` after that declares them (the six: two nodes and the shared address, both families);
    nothing else changes, and the run after it is the same again."""
    _, dc2_again = fourth_runs()
    before, after = declared(deployment.dc2), declared(dc2_again)
    added = set(after) - set(before)
    assert {dc2_again.by_urn(urn).typ for urn in added} == {RDNS} and len(added) == 6
    assert {urn: after[urn] for urn in before} == before
    fifth = run_stack("dc2", read_stack_config("dc2"), deployment.dc1.peer_view(),
                      previous=dc2_again)  # fmt: skip
    assert declared(fifth) == after


def test_a_node_made_anew_is_whole_after_one_up(deployment: Deployment) -> None:
    """`pulumi up --replace` of svr2: Linode gives the new node new public addresses. One `up`
    provisions it whole (every command of svr2 runs against the new address) and the stack has
    converged: the firewall did not change, and the next `up` declares the same."""
    renumbered = frozenset({"dc1-svr2"})
    raw, peer = read_stack_config("dc1"), deployment.dc2.peer_view()
    after = run_stack("dc1", raw, peer, previous=deployment.dc1, renumbered=renumbered)
    old = deployment.dc1.outputs["nodes"]["dc1-svr2"]
    new = after.outputs["nodes"]["dc1-svr2"]
    assert new["publicIpv4"] != old["publicIpv4"]
    assert new["privateIpv4"] == old["privateIpv4"]  # fixed in the VPC subnet
    plans = provisioned(after, deployment.dc2, deployment.dc1)
    for cmd in after.of_type("remote:Command"):
        if cmd.name.startswith("dc1-svr2-"):
            assert unwrap(cmd.inputs["connection"])["host"] == new["publicIpv4"]
    assert plans["dc1-svr2"].steps
    fw = [r.inputs for r in after.of_type("firewall:Firewall")]
    assert fw == [r.inputs for r in deployment.dc1.of_type("firewall:Firewall")]
    again = run_stack("dc1", raw, peer, previous=after, renumbered=renumbered)
    assert declared(again) == declared(after)


def test_a_standby_node_made_anew_is_whole_after_one_up_of_its_stack(
    deployment: Deployment,
) -> None:
    """The same for a node of the standby data centre (dc2-svr1 made anew): one `up` of dc2
    provisions it whole against its new address, with the mesh endpoints and the replicas' source
    it had before (they name dc1's addresses, which did not move), and the next `up` of dc2 is
    the same again. What waits for dc1's next `up`, as any change of a dc2 address does: its
    A/AAAA records in the zone dc1 masters, and so its PTR (Linode sets one only for a name that
    resolves); dc1's mesh peers learn its new endpoint from its first handshake (WireGuard
    roaming), so replication does not wait."""
    _, dc2_settled = fourth_runs()
    renumbered = frozenset({"dc2-svr1"})
    raw, peer = read_stack_config("dc2"), deployment.dc1.peer_view()
    after = run_stack("dc2", raw, peer, previous=dc2_settled, renumbered=renumbered)
    old = dc2_settled.outputs["nodes"]["dc2-svr1"]
    new = after.outputs["nodes"]["dc2-svr1"]
    assert new["publicIpv4"] != old["publicIpv4"]
    assert new["privateIpv4"] == old["privateIpv4"]
    plans = provisioned(after, deployment.dc1, deployment.dc1)
    before_plans = provisioned(dc2_settled, deployment.dc1, deployment.dc1)
    for cmd in after.of_type("remote:Command"):
        if cmd.name.startswith("dc2-svr1-"):
            assert unwrap(cmd.inputs["connection"])["host"] == new["publicIpv4"]
    assert endpoints(plans["dc2-svr1"]) == endpoints(before_plans["dc2-svr1"])
    # The role's settings differ by the node's own new address only.
    conf_before = content(before_plans["dc2-svr1"], role.CLUSTER_CONF)
    assert content(plans["dc2-svr1"], role.CLUSTER_CONF) == conf_before.replace(
        old["publicIpv4"], new["publicIpv4"]
    )
    fw = [r.inputs for r in after.of_type("firewall:Firewall")]
    assert fw == [r.inputs for r in dc2_settled.of_type("firewall:Firewall")]
    again = run_stack("dc2", raw, peer, previous=after, renumbered=renumbered)
    assert declared(again) == declared(after)


def test_each_stack_declares_the_ptrs_of_its_own_addresses_only(deployment: Deployment) -> None:
    """Why dc2's PTRs wait for its next `up` after dc1's third run, rather than dc1's third run
    declaring them: a PTR belongs to the stack whose addresses it names. A stack that declared
    the other data centre's PTRs would call Linode's API for that region's addresses on every
    `up`, a failover's `up` of the surviving stack included, while that region may be the one
    that is down; and two stacks would write the shared addresses' names in turn."""
    dc1_again, dc2_again = fourth_runs()
    for result in (deployment.dc1_first, deployment.dc1, dc1_again, deployment.dc2, dc2_again):
        a = result.outputs["addresses"]
        own = {a["sharedIpv4"], a["sharedIpv6"]} | {
            n[k] for n in a["nodes"].values() for k in ("publicIpv4", "publicIpv6")
        }
        dc = result.outputs["dc"]
        names = {n["hostname"] for n in result.outputs["nodes"].values()}
        vip = "mail.example.com" if dc == "dc1" else f"{dc}.example.com"
        ptrs = {(r.inputs["address"], r.inputs["rdns"]) for r in result.of_type(RDNS)}
        assert {address for address, _ in ptrs} <= own, (dc, ptrs)
        assert {name for _, name in ptrs} <= names | {vip}, (dc, ptrs)
    # dc2's first `up` declares none (its names are not in the zone yet), its next all six.
    assert not deployment.dc2.of_type(RDNS) and len(dc2_again.of_type(RDNS)) == 6
