"""The plan's side of mailbox replication (``cluster/services/replication.py``): every node gets
the controller with a configuration the controller itself accepts, targets by role that follow
the topology (the DC peer over the private network first, the other data centre over the mesh,
nothing in the standby data centre), its secret in a file of its own, its daemon and the role
script's hook; and nothing of Dovecot 2.3's replication is left."""

from __future__ import annotations

import json

import pytest

from cluster.hostplan import build_host_plan
from cluster.material import ClusterSecrets
from cluster.services import dovecot, replication, role, units
from cluster.topology import Topology
from mailnode.replication import settings

NODES = ("dc1-svr1", "dc1-svr2", "dc2-svr1", "dc2-svr2")


@pytest.mark.parametrize("node", NODES)
def test_the_controllers_config_follows_the_topology(
    node: str, topologies: dict[str, Topology], secrets: ClusterSecrets
) -> None:
    topo = topologies[node[:3]]
    plan = build_host_plan(topo, node, secrets, "lab")
    files = {f.path: f for f in plan.files}
    raw = json.loads(files[replication.CONFIG].content)
    cfg = settings.parse(raw)  # the controller accepts what the plan writes
    me = topo.node(node)
    peer = topo.peer(me)
    if me.dc == topo.active_dc:
        other = [n for n in topo.nodes if n.dc != me.dc]
        # Every target at its mesh address (plain TCP inside WireGuard), the peer first.
        assert [t.destination for t in cfg.writer_targets] == [
            f"tcp:{topo.mesh_address(n)}:{dovecot.DOVEADM_PORT}" for n in (peer, *other)
        ]
        assert [t.name for t in cfg.standby_targets] == [peer.name]
    else:
        assert cfg.writer_targets == cfg.standby_targets == () and not cfg.active_dc
    public = {n.public_ipv4 for n in topo.nodes}
    assert not any(t.server.split(":")[0] in public for t in cfg.all_targets)
    # Loopback only, and the secret is not in it but in a 0600 file of its own.
    assert cfg.listen == "127.0.0.1" and cfg.doveadm_api.startswith("http://127.0.0.1:")
    assert secrets.doveadm not in files[replication.CONFIG].content
    secret = files[cfg.doveadm_secret]
    assert secret.secret and secret.mode == "0600" and secret.content == secrets.doveadm + "\n"
    assert cfg.role_check == (role.ROLE_SCRIPT, "is-holder")
    assert cfg.sweep_interval_s == replication.SWEEP_INTERVAL_S


def test_every_node_runs_the_controller_and_the_role_script_tells_it(
    topologies: dict[str, Topology], secrets: ClusterSecrets
) -> None:
    plan = build_host_plan(topologies["dc1"], "dc1-svr2", secrets, "lab")
    files = {f.path: f for f in plan.files}
    unit = files[units.unit_path(f"{replication.UNIT}.service")].content
    assert f"ExecStart={replication.SCRIPT} run\n" in unit and "Restart=always" in unit
    enabled = plan.step(f"{replication.UNIT}.enabled")
    # A new configuration, secret or program restarts it.
    assert {f"file:{replication.CONFIG}", f"file:{replication.DOVEADM_SECRET}",
            f"file:{replication.SCRIPT}"} <= set(enabled.watch)  # fmt: skip
    assert "from mailnode.replication.cli import main" in files[replication.SCRIPT].content
    hook = files[replication.ROLE_HOOK]
    assert hook.mode == "0755" and hook.path.startswith(role.HOOKS_DIR + "/")
    assert f"exec timeout {replication.ROLE_HOOK_TIMEOUT_S} {replication.SCRIPT} catch-up" in (
        hook.content
    )
    # The role script runs the hooks of that directory after a promote and a demote.
    script = files[role.ROLE_SCRIPT].content
    assert f"HOOKS=${{HOOKS:-{role.HOOKS_DIR}}}" in script
    assert script.count("run_hooks promote") == 1 and "run_hooks demote" in script


def test_nothing_of_the_2_3_replication_is_left(
    topologies: dict[str, Topology], secrets: ClusterSecrets
) -> None:
    for node in NODES:
        plan = build_host_plan(topologies[node[:3]], node, secrets, "lab")
        for f in plan.files:
            # (The other cron files are the port's to replace with timers.)
            assert "mailcluster-dsync" not in f.path, f.path
            text = f.content
            if f.path.endswith(".py"):
                continue  # the node package's own docstrings may name the past
            assert "replicator" not in text and "mail_replica" not in text, f.path
