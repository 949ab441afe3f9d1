"""The mesh's and the web sync's files, checked by their own tools in the base: wg-quick parses
the WireGuard config and wg accepts what it strips; the scripts parse."""

from __future__ import annotations

from pathlib import Path

import pytest
from rendertools import files, in_base

from cluster.material import mesh_public_key
from cluster.plan import HostPlan
from cluster.services import mesh, sync
from cluster.topology import Topology

pytestmark = pytest.mark.checkers


def test_wg_quick_parses_the_config(plan: tuple[Topology, HostPlan], tmp_path: Path) -> None:
    topo, hp = plan
    conf = tmp_path / "wgmesh.conf"
    conf.write_text(files(hp)[mesh.CONF])
    conf.chmod(0o600)
    stripped = in_base("wg-quick", "strip", str(conf))
    assert stripped.returncode == 0, stripped.stderr
    # What wg itself gets: the key, the port and three peers; Address is wg-quick's own.
    assert stripped.stdout.count("[Peer]") == 3
    assert "Address" not in stripped.stdout
    node = topo.node(hp.host)
    for other in (n for n in topo.nodes if n != node):
        assert f"AllowedIPs = {topo.mesh_address(other)}/32" in stripped.stdout


def test_public_keys_match_wg(plan: tuple[Topology, HostPlan]) -> None:
    """Our X25519 in Python and `wg pubkey` agree, so every peer's PublicKey is right."""
    _, hp = plan
    conf = files(hp)[mesh.CONF]
    private = conf.split("PrivateKey = ")[1].split()[0]
    got = in_base("wg", "pubkey", input=private + "\n")
    assert got.returncode == 0, got.stderr
    assert got.stdout.strip() == mesh_public_key(private)


def test_scripts_parse(plan: tuple[Topology, HostPlan]) -> None:
    _, hp = plan
    rendered = files(hp)
    for path in (mesh.MESH_SCRIPT, sync.WEBSYNC):
        parsed = in_base("bash", "-n", input=rendered[path])
        assert parsed.returncode == 0, (path, parsed.stderr)
