"""The WireGuard mesh: an encrypted, authenticated network between the four nodes.

Every node has an inner address in ``meshCidr`` (host number = its MariaDB server_id, see
``Topology.mesh_address``) on the interface ``ports.MESH_INTERFACE``, and every other node as a
peer whose AllowedIPs is that peer's inner address alone. WireGuard's cryptokey routing makes a
packet from an inner address proof of who sent it (only the holder of that node's private key
can send it), so services that bind inner addresses talk only to cluster nodes.

- Keys: one X25519 private key per node, a cluster secret (Pulumi ``RandomBytes``, the lab's
  secrets file); the public keys are derived from them (``ClusterSecrets.mesh_public_key``).
  The config file holding the node's key is 0600 and travels on stdin like every secret file.
- Outer packets go to a peer's private address inside a data centre and its public address
  across (``mesh_endpoint``), UDP ``ports.MESH_PORT``.
- ``wg-quick`` brings the interface up: the kernel's WireGuard on Linode, and where the kernel
  has none (the lab), wg-quick's fallback, Debian's userspace ``wireguard-go`` on /dev/net/tun.
- ``/usr/local/sbin/mailcluster-mesh up`` is the one way up: the plan's step runs it (creates
  the interface, or applies a changed peer list with ``wg syncconf`` without dropping the other
  sessions), and the init script ``mailcluster-mesh`` runs it at boot (systemd's generator makes
  a unit of it on Linode; the lab's init runs /etc/rc2.d), before MariaDB, Dovecot, BIND and
  Heartbeat. Those bind inner addresses with ``ip_nonlocal_bind`` (base.py), so a boot order
  mistake costs a few retries, never a failed start.
"""

from __future__ import annotations

from typing import Any

from cluster.hostcontext import HostContext
from cluster.plan import CHANGED_MARK, PACKAGES_STEP, Step, script_step
from cluster.ports import MESH_INTERFACE, MESH_PORT
from cluster.topology import Node

# wireguard-go only runs where the kernel has no WireGuard (wg-quick tries the kernel first);
# installed everywhere so that the plan and the lab's base are one package list.
PACKAGES: tuple[str, ...] = ("wireguard-tools", "wireguard-go", "iproute2")

CONF = f"/etc/wireguard/{MESH_INTERFACE}.conf"
MESH_SCRIPT = "/usr/local/sbin/mailcluster-mesh"
INIT_SCRIPT = "/etc/init.d/mailcluster-mesh"
BOOT_STEP = "mesh.boot"
UP_STEP = "mesh.up"


def mesh_endpoint(node: Node, peer: Node) -> str:
    """Where ``node`` sends ``peer``'s WireGuard packets: the private address inside a data
    centre (it never leaves Linode's network), the public one across."""
    addr = peer.private_ipv4 if peer.dc == node.dc else peer.public_ipv4
    return f"{addr}:{MESH_PORT}"


def peers(ctx: HostContext) -> list[dict[str, Any]]:
    topo, node = ctx.topology, ctx.node
    return [
        {
            "name": peer.name,
            "public_key": ctx.secrets.mesh_public_key(peer.name),
            "address": topo.mesh_address(peer),
            "endpoint": mesh_endpoint(node, peer),
        }
        for peer in topo.nodes
        if peer.name != node.name
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
    init = ctx.file(INIT_SCRIPT, mode="0755", mesh_script=MESH_SCRIPT, **values)
    # Enabled for boot: systemd hosts (Linode) through the generator's view of the rc links.
    boot = script_step(
        BOOT_STEP,
        f"""if ! ls /etc/rc2.d/S*mailcluster-mesh >/dev/null 2>&1; then
  update-rc.d mailcluster-mesh defaults >/dev/null 2>&1
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl enable --quiet mailcluster-mesh
  fi
  echo "{CHANGED_MARK} mailcluster-mesh started at boot"
fi
""",
        after=(init,),
    )
    up = script_step(
        UP_STEP,
        f"{MESH_SCRIPT} up\n",
        after=(PACKAGES_STEP,),
        watch=(conf, script),
    )
    return [conf, script, init, boot, up]
