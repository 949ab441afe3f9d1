"""The lab's address plan. Documentation and benchmark ranges only (RFC 5737, RFC 2544, RFC
3849): they are never routed anywhere, and the lab routes nothing out of its namespaces anyway.

IPv4:
- dc1 "public" LAN 198.51.100.0/24, dc2 203.0.113.0/24 (TEST-NET-2/3), joined by the router;
- each data centre's VPC: 198.18.1.0/24 and 198.18.2.0/24 (RFC 2544; the stacks' ``vpcSubnet``
  in the lab), a bridge of its own reached by a second interface per host (``PRIVATE_INTERFACE``),
  not routed, as a Linode VPC is one data centre's; the nodes' addresses in it are the ones the
  program fixes (``topology.vpc_address``: .11 and .12);
- the client ("the internet": users, foreign mail servers) 192.0.2.0/24 (TEST-NET-1).

IPv6 (2001:db8::/32), on every routed network, as every Linode has IPv6:
- dc1 public 2001:db8:1::/64, dc2 2001:db8:2::/64, the client 2001:db8:c::/64; a host's v6
  address mirrors its v4 one (.11 -> ::11, the router ::1, the client ::100);
- each DC's shared IPv6 comes from its own routed /64 (Linode's "IPv6 routed range", shared by
  the two nodes): 2001:db8:1:a::/64 and 2001:db8:2:a::/64, the address ::10;
- each DC's four route servers: 2001:db8:1:34::1..4 and 2001:db8:2:34::1..4 (Linode's are
  2600:3c0f:<dcid>:34::1..4). The VPCs stay IPv4 only, as ours are on Linode.
"""

from __future__ import annotations

import ipaddress

from cluster.topology import (
    PUBLIC_INTERFACE,
    VPC_INTERFACE,
    DcAddresses,
    NodeAddresses,
    vpc_address,
)

PUBLIC_NETS = {"dc1": "198.51.100", "dc2": "203.0.113"}
PRIVATE_NETS = {"dc1": "198.18.1", "dc2": "198.18.2"}
# Each stack's vpcSubnet in the lab (model.py sets it): the private networks above.
VPC_SUBNETS = {dc: f"{net}.0/24" for dc, net in PRIVATE_NETS.items()}
CLIENT_NET = "192.0.2"
ROUTER_HOST = 1  # .1 on every lab network
SHARED_HOST = 10
NODE_HOSTS = {"svr1": 11, "svr2": 12}
CLIENT_HOST = 100
PREFIXLEN = 24
INTERFACE = PUBLIC_INTERFACE
PRIVATE_INTERFACE = VPC_INTERFACE

# The first four groups of each IPv6 /64 (host parts are written like the v4 ones: ::11).
PUBLIC_NETS6 = {"dc1": "2001:db8:1:0", "dc2": "2001:db8:2:0"}
SHARED_RANGES6 = {"dc1": "2001:db8:1:a", "dc2": "2001:db8:2:a"}
ROUTE_SERVER_NETS6 = {"dc1": "2001:db8:1:34", "dc2": "2001:db8:2:34"}
ROUTE_SERVERS_PER_DC = 4
CLIENT_NET6 = "2001:db8:c:0"
PREFIXLEN6 = 64


def v6(net: str, host: int | str) -> str:
    """``net`` (four groups) plus host part ``host`` written as the v4 host number is (11 ->
    ``::11``), in canonical form (what ``ip`` and every daemon print)."""
    return str(ipaddress.IPv6Address(f"{net}::{host}"))


def v6_net(net: str) -> str:
    return str(ipaddress.IPv6Network(f"{net}::/{PREFIXLEN6}"))


def lab_dc_addresses(dc: str) -> DcAddresses:
    pub, pub6 = PUBLIC_NETS[dc], PUBLIC_NETS6[dc]
    return DcAddresses(
        shared_ipv4=f"{pub}.{SHARED_HOST}",
        nodes={
            slot: NodeAddresses(
                public_ipv4=f"{pub}.{host}",
                private_ipv4=vpc_address(VPC_SUBNETS[dc], slot),
                public_ipv6=v6(pub6, host),
            )
            for slot, host in NODE_HOSTS.items()
        },
        public_prefixlen=PREFIXLEN,
        interface=INTERFACE,
        shared_ipv6=v6(SHARED_RANGES6[dc], SHARED_HOST),
        shared_ipv6_prefixlen=PREFIXLEN6,
        route_servers=route_servers(dc),
    )


def route_servers(dc: str) -> tuple[str, ...]:
    """The four route-server addresses of ``dc``."""
    return tuple(v6(ROUTE_SERVER_NETS6[dc], i) for i in range(1, ROUTE_SERVERS_PER_DC + 1))


def client_address() -> str:
    return f"{CLIENT_NET}.{CLIENT_HOST}"


def client_address6() -> str:
    return v6(CLIENT_NET6, CLIENT_HOST)


def router_address(net: str) -> str:
    return f"{net}.{ROUTER_HOST}"


def router_address6(net6: str) -> str:
    return v6(net6, ROUTER_HOST)
