"""The WireGuard mesh: an encrypted, authenticated network between the four nodes.

Every node has an inner address in ``meshCidr`` (host number = its MariaDB server_id, see
``Topology.mesh_address``) on the interface ``ports.MESH_INTERFACE``, and every other node as a
peer whose AllowedIPs is that peer's inner address alone. WireGuard's cryptokey routing makes a
packet from an inner address proof of who sent it (only the holder of that node's private key
can send it), so services that bind inner addresses talk only to cluster nodes.

- Keys: one X25519 private key per node, a cluster secret (Pulumi ``RandomBytes``, the lab's
  secrets file); the public keys are derived from them (``ClusterSecrets.mesh_public_key``).
  The config file holding the node's key is 0600 and travels on stdin like every secret file.
- Outer packets go to a peer's private (VPC) address inside a data centre and its public
  address across (``mesh_endpoint``), UDP ``ports.MESH_PORT``, which both firewalls open to
  anyone: WireGuard answers nothing without a valid key.
- Every node of the cluster is a peer, including those of a data centre whose addresses are
  not known yet (dc1's first ``up`` comes before dc2 exists): their keys and mesh addresses are
  known (the cluster's material, ``Topology.mesh_members``), only their endpoint is not. Such
  a peer has no ``Endpoint``: WireGuard takes it from the peer's first authenticated packet, so
  dc2's nodes reach dc1's (and replicate from it) as soon as dc2 is up, before dc1's next
  ``up`` writes their endpoints down. A node with new public addresses (rebuilt) is found the
  same way by the other data centre.
- ``wg-quick`` brings the interface up: the kernel's WireGuard on Linode, and where the kernel
  has none (the lab), wg-quick's fallback, Debian's userspace ``wireguard-go`` on /dev/net/tun.
- ``/usr/local/sbin/mailcluster-mesh up`` is the one way up: the plan's step runs it (creates
  the interface, or applies a changed peer list with ``wg syncconf`` without dropping the other
  sessions), and ``mailcluster-mesh.service`` (a oneshot of ours) runs it at boot, ordered before
  MariaDB, Dovecot, BIND and Heartbeat (``BEFORE``). Those bind inner addresses with
  ``ip_nonlocal_bind`` (base.py), so a late mesh costs a few retries, never a failed start.
  (Not wg-quick@.service: it knows no ``wg syncconf``, and its ordering after
  network-online.target would hold up every daemon that waits for the mesh.)
"""

from __future__ import annotations

from typing import Any

from cluster.hostcontext import HostContext
from cluster.plan import PACKAGES_STEP, Step, script_step
from cluster.ports import MESH_INTERFACE, MESH_PORT
from cluster.services import units
from cluster.topology import Node

# wireguard-go only runs where the kernel has no WireGuard (wg-quick tries the kernel first);
# installed everywhere so that the plan and the lab's base are one package list.
PACKAGES: tuple[str, ...] = ("wireguard-tools", "wireguard-go", "iproute2")

CONF = f"/etc/wireguard/{MESH_INTERFACE}.conf"
MESH_SCRIPT = "/usr/local/sbin/mailcluster-mesh"
UNIT = "mailcluster-mesh.service"
UNIT_FILE = units.unit_path(UNIT)
# The units that use the mesh's addresses: started after it at boot.
BEFORE = ("mariadb.service", "dovecot.service", "named.service", "heartbeat.service")
BOOT_STEP = "mesh.boot"
UP_STEP = "mesh.up"


def mesh_endpoint(node: Node, peer: Node) -> str:
    """Where ``node`` sends ``peer``'s WireGuard packets: the private address inside a data
    centre (it never leaves Linode's network), the public one across."""
    addr = peer.private_ipv4 if peer.dc == node.dc else peer.public_ipv4
    return f"{addr}:{MESH_PORT}"


def peers(ctx: HostContext) -> list[dict[str, Any]]:
    """Every other node of the cluster; ``endpoint`` None for a node whose data centre's
    addresses this stack does not know yet."""
    topo, node = ctx.topology, ctx.node
    known = {n.name: n for n in topo.nodes}
    return [
        {
            "name": name,
            "public_key": ctx.secrets.mesh_public_key(name),
            "address": address,
            "endpoint": mesh_endpoint(node, known[name]) if name in known else None,
        }
        for name, address in topo.mesh_members()
        if name != node.name
    ]


def steps(ctx: HostContext) -> list[Step]:
    topo, node = ctx.topology, ctx.node
    values: dict[str, Any] = {
        "interface": MESH_INTERFACE,
        "address": topo.mesh_address(node),
        "prefixlen": topo.mesh_network.prefixlen,
    }
    conf = ctx.file(
        CONF,
        mode="0600",
        secret=True,
        port=MESH_PORT,
        private_key=ctx.secrets.mesh_private_key(node.name),
        peers=peers(ctx),
        **values,
    )
    script = ctx.file(MESH_SCRIPT, mode="0755", **values)
    unit = ctx.file(UNIT_FILE, mesh_script=MESH_SCRIPT, before=BEFORE, **values)
    # Enabled for boot, and started (its `up`) on the first apply.
    boot = units.enable_step(BOOT_STEP, [UNIT], files=[unit], after=(conf, script))
    up = script_step(
        UP_STEP,
        f"{MESH_SCRIPT} up\n",
        after=(PACKAGES_STEP, boot),
        watch=(conf, script),
    )
    return [conf, script, unit, boot, up]
