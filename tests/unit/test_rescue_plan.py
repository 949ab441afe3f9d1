"""The plan's side of the rescue (``cluster/services/rescue.py``): every node gets
``mailcluster-rescue`` with a configuration the program itself accepts, naming its DC peer's
volume (the only one Linode lets it attach) where the storage step would find it on the peer,
and a rescue mount point that is not its own volume's."""

from __future__ import annotations

import json
import posixpath

import pytest

from cluster.hostplan import build_host_plan
from cluster.material import ClusterSecrets
from cluster.services import postfix, rescue, storage
from cluster.topology import Topology
from mailnode.rescue import settings

NODES = ("dc1-svr1", "dc1-svr2", "dc2-svr1", "dc2-svr2")


@pytest.mark.parametrize("node", NODES)
def test_each_node_may_take_its_dc_peers_volume_only(
    node: str, topologies: dict[str, Topology], secrets: ClusterSecrets
) -> None:
    topo = topologies[node[:3]]
    plan = build_host_plan(topo, node, secrets, "lab")
    files = {f.path: f for f in plan.files}
    cfg = settings.parse(json.loads(files[rescue.CONFIG].content))
    peer = topo.peer(topo.node(node))
    assert (cfg.node, cfg.peer) == (node, peer.name)
    assert cfg.device == storage.device_path(peer)
    assert posixpath.commonpath([cfg.mount_point, storage.MOUNT_POINT]) != storage.MOUNT_POINT
    # The volume's layout is the storage step's: maildirs and the queue where it puts them.
    assert posixpath.join(cfg.live_mount, cfg.vmail) == storage.VMAIL_DIR
    assert cfg.queue == postfix.QUEUE_DIR.name
    assert "mailnode.rescue.cli import main" in files[rescue.SCRIPT].content
    assert files[rescue.SCRIPT].mode == "0755"
