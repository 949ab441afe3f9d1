"""The lab's address plan. Documentation and benchmark ranges only (RFC 5737, RFC 2544): they
are never routed anywhere, and the lab routes nothing out of its namespaces anyway.

- dc1 "public" LAN 198.51.100.0/24, dc2 203.0.113.0/24 (TEST-NET-2/3), joined by the router;
- "private" networks 198.18.1.0/24 and 198.18.2.0/24 (RFC 2544), one per DC, like Linode's
  per-DC private addresses, on the same bridge and not routed;
- the client ("the internet": users, foreign mail servers) 192.0.2.0/24 (TEST-NET-1).
"""

from __future__ import annotations

from cluster.topology import DcAddresses, NodeAddresses

PUBLIC_NETS = {"dc1": "198.51.100", "dc2": "203.0.113"}
PRIVATE_NETS = {"dc1": "198.18.1", "dc2": "198.18.2"}
CLIENT_NET = "192.0.2"
ROUTER_HOST = 1  # .1 on every lab network
SHARED_HOST = 10
NODE_HOSTS = {"svr1": 11, "svr2": 12}
CLIENT_HOST = 100
PREFIXLEN = 24
INTERFACE = "eth0"


def lab_dc_addresses(dc: str) -> DcAddresses:
    pub, priv = PUBLIC_NETS[dc], PRIVATE_NETS[dc]
    return DcAddresses(
        shared_ipv4=f"{pub}.{SHARED_HOST}",
        nodes={
            slot: NodeAddresses(public_ipv4=f"{pub}.{host}", private_ipv4=f"{priv}.{host}")
            for slot, host in NODE_HOSTS.items()
        },
        public_prefixlen=PREFIXLEN,
        interface=INTERFACE,
    )


def client_address() -> str:
    return f"{CLIENT_NET}.{CLIENT_HOST}"


def router_address(net: str) -> str:
    return f"{net}.{ROUTER_HOST}"
