"""Heartbeat and the role plumbing: sane ha.cf/authkeys/haresources on every node of both lab
stacks (and in bgp mode), shell scripts that parse, cluster.conf that a shell reads back, and
no secret value anywhere but secret steps."""

from __future__ import annotations

import ipaddress
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from rendertools import files, in_base

from cluster.hostplan import build_host_plan
from cluster.lab.model import lab_topology
from cluster.material import PASSWORD_FIELDS, ClusterSecrets
from cluster.plan import HostPlan
from cluster.services import heartbeat, role
from cluster.topology import VPC_INTERFACE, Topology


def directives(text: str) -> list[list[str]]:
    return [ln.split() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


def test_ha_cf(plan: tuple[Topology, HostPlan]) -> None:
    topo, hp = plan
    node = topo.node(hp.host)
    peer = topo.peer(node)
    cf = {d[0]: d[1:] for d in directives(files(hp)["/etc/ha.d/ha.cf"])}
    assert sorted(cf["node"]) == sorted([node.name, peer.name])
    # The VPC interface only: Heartbeat binds its ucast sockets to it.
    assert cf["ucast"] == [VPC_INTERFACE, peer.private_ipv4]
    assert cf["auto_failback"] == ["off"]
    assert cf["keepalive"] == [f"{topo.config.heartbeat_keepalive_ms}ms"]
    assert cf["deadtime"] == [f"{topo.config.heartbeat_deadtime_ms}ms"]
    keep, dead = (int(cf[k][0].removesuffix("ms")) for k in ("keepalive", "deadtime"))
    warn, init = (int(cf[k][0].removesuffix("ms")) for k in ("warntime", "initdead"))
    assert keep <= warn < dead and init >= 2 * dead
    # The ping node is the router of the node's own LAN (the lab router answers at .1).
    assert cf["ping"] == [node.public_ipv4.rsplit(".", 1)[0] + ".1"]
    respawns = [d[1:] for d in directives(files(hp)["/etc/ha.d/ha.cf"]) if d[0] == "respawn"]
    assert respawns == [
        ["hacluster", "/usr/libexec/heartbeat/ipfail"],
        # the split-brain guard (issue 5): fences a node that lost its peer and its uplink
        ["root", "/usr/local/sbin/mailcluster-guard"],
    ]


def test_authkeys_secret_and_0600(plan: tuple[Topology, HostPlan], secrets: ClusterSecrets) -> None:
    _, hp = plan
    step = hp.step("file:/etc/ha.d/authkeys")
    assert step.file is not None and step.file.mode == "0600" and step.secret
    assert directives(step.file.content) == [
        ["auth", "1"],
        ["1", "sha1", secrets.heartbeat_authkey],
    ]


def test_haresources_arp(plan: tuple[Topology, HostPlan], secrets: ClusterSecrets) -> None:
    lab_default, default_plan = plan
    topo = lab_topology(lab_default.config.dc, {"sharedIpMethod": "arp"})
    hp = build_host_plan(topo, default_plan.host, secrets, "lab")
    node = topo.node(hp.host)
    (line,) = directives(files(hp)["/etc/ha.d/haresources"])
    vip = topo.shared_ip(node.dc)
    vip6 = topo.shared_ipv6(node.dc)
    assert vip6
    # The shared IPv6 moves with the IPv4, before the role (the listeners are bound already),
    # written out so that Heartbeat's "::" argument separator cannot cut it.
    v6res = f"mailcluster-ipv6::{ipaddress.IPv6Address(vip6).exploded}/64/eth0"
    assert line == [f"{node.dc}-svr1", f"IPaddr2::{vip}/24/eth0", v6res, "mailcluster"]
    script, *args = line[2].split("::")
    assert script == heartbeat.IPV6_RESOURCE and len(args) == 1
    address, prefixlen, iface = args[0].split("/")
    assert ipaddress.IPv6Address(address) == ipaddress.IPv6Address(vip6)
    assert (prefixlen, iface) == ("64", "eth0")


def test_haresources_arp_without_shared_ipv6(secrets: ClusterSecrets) -> None:
    """A data centre without a shared IPv6 (yet): the IPv4 half alone, as before."""
    topo = lab_topology("dc1", {"sharedIpMethod": "arp"})
    v4_only = Topology(
        topo.config, {dc: replace(a, shared_ipv6=None) for dc, a in topo.dcs.items()}
    )
    (line,) = directives(files(build_host_plan(v4_only, "dc1-svr1", secrets, "lab"))[
        "/etc/ha.d/haresources"])  # fmt: skip
    assert line == ["dc1-svr1", f"IPaddr2::{topo.shared_ip('dc1')}/24/eth0", "mailcluster"]


def test_cluster_conf_reads_back_in_a_shell(plan: tuple[Topology, HostPlan]) -> None:
    topo, hp = plan
    node = topo.node(hp.host)
    conf = files(hp)[role.CLUSTER_CONF]
    out = subprocess.run(
        ["bash", "-c", 'set -eu; . /dev/stdin; echo "$NODE|$DC|$ACTIVE_DC|$VIP|'
         '$ACTIVE_DB_NODES|$PEER_PRIVATE_IP|$WEB_SYNC_TARGETS|$MESH_IP"'],
        input=conf, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    peer = topo.peer(node)
    others = [topo.mesh_address(n) for n in topo.nodes if n != node]
    assert out.split("|") == [
        node.name, node.dc, topo.active_dc, topo.shared_ip(node.dc),
        " ".join(topo.mesh_addresses(topo.active_dc)), peer.private_ipv4, " ".join(others),
        topo.mesh_address(node),
    ]  # fmt: skip


def test_the_unit_demotes_before_a_start_and_reloads_in_place(
    plan: tuple[Topology, HostPlan],
) -> None:
    """Debian's heartbeat.service has no reload, and the plan reloads a running Heartbeat when
    its files change (a restart would hand the resources to the peer): the drop-in adds
    `heartbeat -r`, a restart in place that keeps them. Before any start, the node demotes."""
    _, hp = plan
    dropin = files(hp)[heartbeat.BOOT_DROPIN]
    assert "\nExecReload=/usr/libexec/heartbeat/heartbeat -r\n" in dropin
    assert f"\nExecStartPre={role.ROLE_SCRIPT} demote\n" in dropin
    assert "\nAfter=mariadb.service\n" in dropin
    order = [s.name for s in hp.ordered()]
    assert order.index(heartbeat.BOOT_STEP) < order.index(heartbeat.START_STEP)
    assert f"file:{heartbeat.BOOT_DROPIN}" in hp.step(heartbeat.BOOT_STEP).watch


def test_last_step_is_reconcile(plan: tuple[Topology, HostPlan]) -> None:
    _, hp = plan
    last = hp.ordered()[-1]
    assert last.name == heartbeat.RECONCILE_STEP
    assert last.script.strip() == f"{role.ROLE_SCRIPT} reconcile"


SCRIPTS_BASH = (
    "/usr/local/sbin/mailcluster-role",
    "/usr/local/sbin/mailcluster-zone",
    "/usr/local/sbin/mailcluster-websync",
    "/usr/local/sbin/mailcluster-mailbox",
)
SCRIPTS_SH = (
    "/etc/ha.d/resource.d/mailcluster",
    heartbeat.IPV6_RESOURCE_SCRIPT,
)


@pytest.mark.checkers
def test_scripts_parse(plan: tuple[Topology, HostPlan], tmp_path: Path) -> None:
    _, hp = plan
    rendered = files(hp)
    for path in (*SCRIPTS_BASH, *SCRIPTS_SH):
        step = hp.step(f"file:{path}")
        assert step.file is not None and step.file.mode == "0755", path
        shell = "bash" if path in SCRIPTS_BASH else "sh"
        script = tmp_path / path.rsplit("/", 1)[1]
        script.write_text(rendered[path])
        proc = in_base(shell, "-n", str(script))
        assert proc.returncode == 0, f"{path}: {proc.stderr}"
    for step in hp.steps:  # every step's own script, as both appliers run it
        proc = in_base("bash", "-n", input=step.script)
        assert proc.returncode == 0, f"{step.name}: {proc.stderr}"
    bindgraph = tmp_path / "mailcluster-bindgraph"
    bindgraph.write_text(rendered["/usr/local/sbin/mailcluster-bindgraph"])
    proc = in_base("perl", "-wc", str(bindgraph))
    assert proc.returncode == 0 and proc.stderr.strip().endswith("syntax OK"), proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr  # no warnings


def _secret_values(secrets: ClusterSecrets) -> list[str]:
    values = [getattr(secrets, f) for f in PASSWORD_FIELDS]
    values.append(secrets.dkim_private_key_pem.splitlines()[1])
    values += [pair.key_pem.splitlines()[1] for pair in secrets.tls.values()]
    return values


def test_no_secret_outside_secret_steps(
    plan: tuple[Topology, HostPlan], secrets: ClusterSecrets
) -> None:
    _, hp = plan
    values = _secret_values(secrets)
    for step in hp.steps:
        for value in values:
            assert value not in step.command, f"{step.name}: secret in its command"
            if not step.secret:
                assert value not in step.stdin, f"{step.name}: secret in a non-secret step"


@pytest.mark.checkers
@pytest.mark.parametrize("promote_rc", [0, 1])
def test_the_role_resource_never_fails_a_start_but_passes_on_a_failed_stop(
    plan: tuple[Topology, HostPlan], tmp_path: Path, promote_rc: int
) -> None:
    """Heartbeat releases the whole group (the shared IP too) for good when a start fails, so
    the role resource reports every start as done (the guard retries a failed promote); a stop
    that fails is reported, as Heartbeat's stop retries need it."""
    _, hp = plan
    fake = tmp_path / "mailcluster-role"
    fake.write_text(f'#!/bin/sh\necho "$1" >> {tmp_path}/calls\nexit {promote_rc}\n')
    fake.chmod(0o755)
    resource = tmp_path / "mailcluster"
    resource.write_text(
        files(hp)["/etc/ha.d/resource.d/mailcluster"].replace(role.ROLE_SCRIPT, str(fake))
    )
    start = in_base("sh", str(resource), "start")
    stop = in_base("sh", str(resource), "stop")
    assert start.returncode == 0, start.stderr
    assert stop.returncode == promote_rc, stop.stderr
    assert (tmp_path / "calls").read_text().split() == ["promote", "demote"]
