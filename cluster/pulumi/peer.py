"""The other data centre's stack, read through a StackReference, and the address contract.

Each stack exports its data centre's addresses as ``addresses`` (``DC_ADDRESSES`` shape below);
the peer turns them back into ``DcAddresses`` for its ``Topology``. On the very first
``pulumi up -s dc1`` the dc2 stack has no outputs yet: every getter then yields ``None`` and dc1
renders without dc2 (the README's deploy order runs dc1 once more after dc2: then it knows dc2).
"""

from __future__ import annotations

from typing import Any

import pulumi

from cluster.config import StackConfig
from cluster.topology import DcAddresses, NodeAddresses

# Stack output names, every one declared here once. These the peer stack reads: the contract
# between the two stacks (renaming one breaks a deployed peer).
OUT_ADDRESSES = "addresses"
OUT_SECRETS = "clusterSecrets"
OUT_CA_KEY = "clusterCaKey"
OUT_ACTIVE_DC = "activeDc"
OUT_TOPOLOGY_DCS = "topologyDcs"
# These are for the user (`pulumi stack output`) and the README.
OUT_DC = "dc"
OUT_REGION = "region"
# Read back by this stack's next `up` too (deployed.py): a changed vpcSubnet is refused.
OUT_VPC_SUBNET = "vpcSubnet"
OUT_SHARED_IPV4 = "sharedIpv4"
OUT_SHARED_IPV6 = "sharedIpv6"
OUT_SHARED_IPV6_RANGE = "sharedIpv6Range"
OUT_NODES = "nodes"
OUT_HOSTNAMES = "hostnames"
OUT_MAIL_HOST = "mailHost"
OUT_WEBMAIL_URL = "webmailUrl"
OUT_ADMIN_URL = "adminUrl"
OUT_TLS_CERTIFICATE = "tlsCertificate"
# The addresses whose PTR this stack declared (see DataCentre.declare_dns).
OUT_REVERSE_DNS = "reverseDns"


def addresses_to_dict(
    shared_ipv4: str,
    nodes: dict[str, tuple[str, str, str | None]],
    shared_ipv6: str | None = None,
) -> dict[str, Any]:
    """The exported shape: ``{"sharedIpv4": ..., "sharedIpv6": ... or None, "nodes": {slot:
    {publicIpv4, privateIpv4, publicIpv6}}}``; ``privateIpv4`` is the node's address in its
    data centre's VPC subnet. A peer deployed before the shared IPv6 existed exports no
    ``sharedIpv6``: ``dict_to_addresses`` reads that as None."""
    return {
        "sharedIpv4": shared_ipv4,
        "sharedIpv6": shared_ipv6,
        "nodes": {
            slot: {"publicIpv4": pub, "privateIpv4": priv, "publicIpv6": v6}
            for slot, (pub, priv, v6) in nodes.items()
        },
    }


# The keys of one node in that shape (also of each node's entry in the ``nodes`` output).
NODE_ADDRESS_KEYS = ("publicIpv4", "privateIpv4", "publicIpv6")


def dict_to_addresses(data: dict[str, Any]) -> DcAddresses:
    return DcAddresses(
        shared_ipv4=str(data["sharedIpv4"]),
        shared_ipv6=str(data["sharedIpv6"]) if data.get("sharedIpv6") else None,
        nodes={
            slot: NodeAddresses(
                public_ipv4=str(node["publicIpv4"]),
                private_ipv4=str(node["privateIpv4"]),
                public_ipv6=str(node["publicIpv6"]) if node.get("publicIpv6") else None,
            )
            for slot, node in data["nodes"].items()
        },
    )


def node_address(
    addresses: pulumi.Output[dict[str, Any]], slot: str, key: str
) -> pulumi.Output[Any]:
    """One address (``key``, one of ``NODE_ADDRESS_KEYS``) of the node in ``slot``."""

    def pick(a: dict[str, Any]) -> Any:
        return a["nodes"][slot][key]

    return addresses.apply(pick)


class PeerStack:
    """The peer stack's outputs, or ``None`` for each when no ``peerStack`` is configured or the
    peer has not been deployed yet."""

    def __init__(self, config: StackConfig, opts: pulumi.ResourceOptions | None = None) -> None:
        self.name = config.peer_stack
        self.ref = (
            pulumi.StackReference(config.peer_stack, opts=opts) if config.peer_stack else None
        )

    def output(self, name: str) -> pulumi.Output[Any]:
        if self.ref is None:
            return pulumi.Output.from_input(None)
        return self.ref.get_output(name)

    @property
    def addresses(self) -> pulumi.Output[dict[str, Any] | None]:
        return self.output(OUT_ADDRESSES)

    @property
    def secrets(self) -> pulumi.Output[dict[str, Any] | None]:
        return self.output(OUT_SECRETS)

    @property
    def topology_dcs(self) -> pulumi.Output[list[str] | None]:
        return self.output(OUT_TOPOLOGY_DCS)

    @property
    def active_dc(self) -> pulumi.Output[str | None]:
        return self.output(OUT_ACTIVE_DC)

    def remind_until_deployed(self, config: StackConfig) -> None:
        """Warn while the peer stack has no outputs (the first ``up`` of dc1): this data
        centre is configured without the other, and one more ``up`` after the peer's first
        adds it (firewalls and the mesh already admit it: nothing else waits)."""
        if self.ref is None:
            return
        stack, name = pulumi.get_stack(), self.name

        def remind(addresses: dict[str, Any] | None) -> None:
            if not addresses:
                pulumi.log.warn(
                    f"stack {name} (peerStack) has no outputs yet: {config.dc} is configured "
                    f"without {config.peer_dc}. After `pulumi up -s {name}`, run `pulumi up "
                    f"-s {stack}` once more so that {config.dc} knows {config.peer_dc}"
                )

        self.addresses.apply(remind)
