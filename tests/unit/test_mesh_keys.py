"""The WireGuard mesh's plan: keys, peers, endpoints, and what rides on it."""

from __future__ import annotations

import base64

from cluster.hostplan import build_host_plan
from cluster.material import ClusterSecrets, mesh_public_key
from cluster.ports import MESH_INTERFACE, MESH_PORT
from cluster.services import mesh, sync
from cluster.topology import Topology


def _files(topo: Topology, node: str, secrets: ClusterSecrets) -> dict[str, str]:
    plan = build_host_plan(topo, node, secrets, "lab")
    return {f.path: f.content for f in plan.files}


def _sections(conf: str) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for line in conf.splitlines():
        line = line.strip()
        if line.startswith("["):
            out.append({"section": line})
        elif "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            out[-1][key.strip()] = value.strip()
    return out


def test_public_key_is_x25519_of_the_private_key() -> None:
    # RFC 7748 6.1: Alice's key pair.
    alice = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    public = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    assert mesh_public_key(base64.b64encode(alice).decode()) == base64.b64encode(public).decode()


def test_every_pair_knows_each_other(
    topologies: dict[str, Topology], secrets: ClusterSecrets
) -> None:
    """Each node's config lists the three others, each with the public key of that node's
    private key, its mesh address alone as AllowedIPs, and the endpoint of its data centre's
    side (private inside, public across); its own key is its own."""
    for topo in topologies.values():
        for node in topo.own_nodes:
            conf = _files(topo, node.name, secrets)[mesh.CONF]
            iface, *peers = _sections(conf)
            assert iface["PrivateKey"] == secrets.mesh_private_key(node.name)
            assert iface["Address"] == f"{topo.mesh_address(node)}/{topo.mesh_network.prefixlen}"
            assert iface["ListenPort"] == str(MESH_PORT)
            others = [n for n in topo.nodes if n != node]
            assert len(peers) == len(others) == 3
            for peer, other in zip(peers, others, strict=True):
                assert peer["PublicKey"] == secrets.mesh_public_key(other.name)
                assert peer["AllowedIPs"] == f"{topo.mesh_address(other)}/32"
                host = other.private_ipv4 if other.dc == node.dc else other.public_ipv4
                assert peer["Endpoint"] == f"{host}:{MESH_PORT}"
            # The keys of others never appear in a node's file.
            for other in others:
                assert secrets.mesh_private_key(other.name) not in conf


def test_the_key_file_is_secret_and_0600(
    topologies: dict[str, Topology], secrets: ClusterSecrets
) -> None:
    plan = build_host_plan(topologies["dc1"], "dc1-svr1", secrets, "lab")
    step = plan.step(f"file:{mesh.CONF}")
    assert step.secret and step.file is not None and step.file.mode == "0600"
    assert MESH_INTERFACE in mesh.CONF


def test_mesh_is_up_before_the_services_that_use_it(
    topologies: dict[str, Topology], secrets: ClusterSecrets
) -> None:
    plan = build_host_plan(topologies["dc1"], "dc1-svr1", secrets, "lab")
    order = [s.name for s in plan.ordered()]
    assert order.index(mesh.UP_STEP) < order.index("mariadb.role")
    assert order.index(mesh.UP_STEP) < order.index("dovecot.reload")
    assert order.index(mesh.UP_STEP) < order.index("bind.reload")
    up = plan.step(mesh.UP_STEP)
    assert f"file:{mesh.CONF}" in up.watch
    # At boot too: systemd starts the mesh's unit before each of them.
    unit = {f.path: f.content for f in plan.files}[mesh.UNIT_FILE]
    before = next(ln for ln in unit.splitlines() if ln.startswith("Before=")).split("=", 1)[1]
    assert set(before.split()) == {"mariadb.service", "dovecot.service", "named.service",
                                   "heartbeat.service"}  # fmt: skip
    assert f"ExecStart={mesh.MESH_SCRIPT} up" in unit
    assert "WantedBy=multi-user.target" in unit


def test_web_sync_key_only_for_rrsync_from_mesh_addresses(
    topologies: dict[str, Topology], secrets: ClusterSecrets
) -> None:
    topo = topologies["dc1"]
    node = topo.node("dc1-svr2")
    files = _files(topo, node.name, secrets)
    line = files[sync.AUTHORIZED_KEYS].splitlines()[-1]
    options, key = line.split(" ssh-ed25519 ", 1)
    key = "ssh-ed25519 " + key
    assert options.startswith("restrict,")
    assert f'command="/usr/bin/rrsync -wo {sync.DOCROOT}"' in options
    senders = options.split('from="')[1].split('"')[0].split(",")
    assert senders == [topo.mesh_address(n) for n in topo.nodes if n != node]
    assert key.startswith(secrets.websync_public_key.strip())
    # No rsync daemon any more: its config and password files are gone from the plan.
    assert "/etc/rsyncd.conf" not in files and "/etc/rsyncd.secrets" not in files
    retire = build_host_plan(topo, node.name, secrets, "lab").step("sync.retire-rsyncd").script
    assert "systemctl stop rsync" in retire and "/etc/rsyncd.conf" in retire


def test_a_data_centre_deployed_first_already_admits_the_others_nodes(
    topologies: dict[str, Topology], secrets: ClusterSecrets
) -> None:
    """dc1's first `up` knows nothing of dc2 but its nodes' keys and mesh addresses (the
    cluster's material, fixed places): dc2's nodes are peers without an Endpoint (WireGuard
    learns it from their first packet), and MariaDB already grants them replication, so dc2
    replicates from dc1 as soon as dc2 is up. Once dc1 knows dc2, the endpoints are written."""
    full = topologies["dc1"]
    alone = Topology(full.config, {"dc1": full.dcs["dc1"]})
    for topo, endpoints in ((alone, False), (full, True)):
        conf = _files(topo, "dc1-svr1", secrets)[mesh.CONF]
        _, *peers = _sections(conf)
        by_key = {p["PublicKey"]: p for p in peers}
        for other in ("dc1-svr2", "dc2-svr1", "dc2-svr2"):
            peer = by_key[secrets.mesh_public_key(other)]
            assert peer["AllowedIPs"] == f"{full.mesh_address(full.node(other))}/32"
            assert ("Endpoint" in peer) == (endpoints or other.startswith("dc1")), (topo, other)
        grants = build_host_plan(topo, "dc1-svr1", secrets, "lab").step("mariadb.users").stdin
        for other in ("dc2-svr1", "dc2-svr2"):
            assert f"'repl'@'{full.mesh_address(full.node(other))}'" in grants
