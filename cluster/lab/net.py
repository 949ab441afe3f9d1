"""The lab's network: a switch, a router ("the internet") and a client, all in namespaces.

       bridge dc1-vpc                          bridge dc2-vpc      (each DC's VPC: eth1)
         |       |                               |       |
    [dc1-svr1] [dc1-svr2] [rs-dc1]     [dc2-svr1] [dc2-svr2] [rs-dc2]
         \\      |      /                  \\      |      /
          bridge dc1 ------[router]------ bridge dc2   (bridges live in the switch namespace)
                              |
                         bridge inet --- [client 192.0.2.100]

``rs-<dc>``: the data centre's BGP route servers (routeservers.py); with ``sharedIpMethod: bgp``
the router sends the shared addresses to them and they forward to the node they prefer.

Every link is a veth pair created *inside* the lab's namespaces (``ip -n``), so nothing ever
appears in this machine's own network namespace, and there is no route or NAT out: the router
only forwards between its three lab networks and has no default route.

A host's eth0 carries its public addresses, its eth1 its address in the data centre's VPC (a
bridge of its own, no router on it: as a Linode VPC, one data centre's and routed nowhere), both
exactly as the program fixes them (cluster/lab/addresses.py). A pulled cable is both: a host
whose network is gone loses its public and its VPC interface at once.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from cluster.config import DC_NAMES
from cluster.lab import addresses as A
from cluster.lab import routeservers
from cluster.lab.paths import (
    CLIENT_NS,
    HOSTS,
    INTERNET_BRIDGE,
    NS_PREFIX,
    ROUTER_NS,
    SWITCH_NS,
    host_ns,
    netns_etc,
    router_port,
    switch_port,
)
from cluster.lab.run import in_ns, ok, run

NETNS_DIR = Path("/run/netns")


def lab_namespaces() -> list[str]:
    """Every network namespace of the lab that exists now (found by name, not from state)."""
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(NS_PREFIX))


def vpc_bridge(dc: str) -> str:
    """The bridge of ``dc``'s VPC in the switch namespace."""
    return f"{dc}-vpc"


def vpc_port(host: str) -> str:
    """The switch-side end of a host's VPC cable (the public one is ``switch_port``)."""
    return f"v-{host}"


def host_addresses(host: str) -> tuple[str, str]:
    """(public, private) address of a lab host."""
    dc, slot = host.split("-")
    node = A.lab_dc_addresses(dc).nodes[slot]
    return node.public_ipv4, node.private_ipv4


def host_address6(host: str) -> str:
    """The public IPv6 address of a lab host."""
    dc, slot = host.split("-")
    addr = A.lab_dc_addresses(dc).nodes[slot].public_ipv6
    assert addr is not None  # every lab host is dual stack
    return addr


def _ensure_ns(ns: str) -> None:
    if not (NETNS_DIR / ns).exists():
        run(["ip", "netns", "add", ns])
    run(["ip", "-n", ns, "link", "set", "lo", "up"])


def _link_exists(ns: str, name: str) -> bool:
    return ok(["ip", "-n", ns, "link", "show", "dev", name])


def _cable(port: str, bridge: str, peer_ns: str, peer_name: str) -> None:
    """A veth from a bridge port in the switch to ``peer_name`` in ``peer_ns``."""
    if not _link_exists(SWITCH_NS, port):
        run(["ip", "-n", SWITCH_NS, "link", "add", port, "type", "veth",
             "peer", "name", peer_name, "netns", peer_ns])  # fmt: skip
    run(["ip", "-n", SWITCH_NS, "link", "set", port, "master", bridge])
    run(["ip", "-n", peer_ns, "link", "set", peer_name, "up"])


def _sysctl(ns: str, *settings: str) -> None:
    run(in_ns(ns, "sysctl", "-q", "-w", *settings))


def ensure_fabric(cut: list[str]) -> None:
    """Switch, router and client, idempotently. Ports listed in ``cut`` stay down."""
    for ns in (SWITCH_NS, ROUTER_NS, CLIENT_NS):
        _ensure_ns(ns)
    # The switch is layer 2 only: no addresses, no IPv6 autoconfiguration chatter.
    _sysctl(SWITCH_NS, "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
    for bridge in (*DC_NAMES, *(vpc_bridge(dc) for dc in DC_NAMES), INTERNET_BRIDGE):
        if not _link_exists(SWITCH_NS, bridge):
            run(["ip", "-n", SWITCH_NS, "link", "add", bridge, "type", "bridge",
                 "forward_delay", "0", "stp_state", "0"])  # fmt: skip
        run(["ip", "-n", SWITCH_NS, "link", "set", bridge, "up"])
    nets = {bridge: (A.PUBLIC_NETS[bridge], A.PUBLIC_NETS6[bridge]) for bridge in DC_NAMES}
    nets[INTERNET_BRIDGE] = (A.CLIENT_NET, A.CLIENT_NET6)
    _sysctl(ROUTER_NS, "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
    for bridge, (net, net6) in nets.items():
        _cable(router_port(bridge), bridge, ROUTER_NS, bridge)
        _set_address(
            ROUTER_NS,
            bridge,
            [f"{A.router_address(net)}/{A.PREFIXLEN}", f"{A.router_address6(net6)}/{A.PREFIXLEN6}"],
        )
        _port(router_port(bridge), up=bridge not in cut)
    for dc in DC_NAMES:
        # Each DC's route servers (routeservers.py), and the router's path to its shared
        # addresses as it was (a fresh lab: on-link, arp; `apply` sets the stack's method).
        routeservers.ensure(dc)
        routeservers.route_shared(dc, routeservers.routed_method(dc))
    _cable("p-client", INTERNET_BRIDGE, CLIENT_NS, A.INTERFACE)
    _port("p-client", up=True)
    _set_address(
        CLIENT_NS,
        A.INTERFACE,
        [f"{A.client_address()}/{A.PREFIXLEN}", f"{A.client_address6()}/{A.PREFIXLEN6}"],
    )
    _default_route(CLIENT_NS, A.router_address(A.CLIENT_NET))
    _default_route(CLIENT_NS, A.router_address6(A.CLIENT_NET6))
    # Commands run in the client with `ip netns exec` see this file as /etc/resolv.conf: the
    # two data centres' shared IPs, where BIND answers for the zone.
    etc = netns_etc(CLIENT_NS)
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "resolv.conf").write_text(
        "# mailcluster lab: the client asks the cluster's name servers\n"
        + "".join(f"nameserver {A.lab_dc_addresses(dc).shared_ipv4}\n" for dc in DC_NAMES)
        + "options timeout:1 attempts:2\n"
    )


def ensure_host_net(host: str, cut: list[str]) -> None:
    """The host's namespace and cable, with its addresses exactly (anything else is flushed: a
    shared IP left from before a crash must not answer ARP)."""
    ns = host_ns(host)
    _ensure_ns(ns)
    dc = host.split("-")[0]
    _cable(switch_port(host), dc, ns, A.INTERFACE)
    _cable(vpc_port(host), vpc_bridge(dc), ns, A.PRIVATE_INTERFACE)
    public, private = host_addresses(host)
    public6 = host_address6(host)
    _set_address(ns, A.INTERFACE, [f"{public}/{A.PREFIXLEN}", f"{public6}/{A.PREFIXLEN6}"])
    vpc_prefixlen = ipaddress.IPv4Network(A.VPC_SUBNETS[dc]).prefixlen
    # IPv4 only, as the program's VPC is: no link-local IPv6 chatter on it either.
    _sysctl(ns, f"net.ipv6.conf.{A.PRIVATE_INTERFACE}.disable_ipv6=1")
    _set_address(ns, A.PRIVATE_INTERFACE, [f"{private}/{vpc_prefixlen}"])
    _default_route(ns, A.router_address(A.PUBLIC_NETS[dc]))
    _default_route(ns, A.router_address6(A.PUBLIC_NETS6[dc]))
    for port in (switch_port(host), vpc_port(host)):
        _port(port, up=host not in cut)


def _set_address(ns: str, dev: str, cidrs: list[str]) -> None:
    """Exactly ``cidrs`` (both families) as the global addresses of ``dev``. IPv6 addresses
    skip duplicate address detection (``nodad``): the lab plans them, and DAD would hold each
    one unusable ("tentative") for a second or more after every boot."""
    have = run(["ip", "-n", ns, "-o", "addr", "show", "dev", dev, "scope", "global"]).stdout
    words = have.split()
    current = {words[i + 1] for i, w in enumerate(words) if w in ("inet", "inet6")}
    if current != {_canonical(c) for c in cidrs}:
        run(["ip", "-n", ns, "addr", "flush", "dev", dev, "scope", "global"])
        for cidr in cidrs:
            extra = ["nodad"] if ":" in cidr else []
            run(["ip", "-n", ns, "addr", "add", cidr, "dev", dev, *extra])
    run(["ip", "-n", ns, "link", "set", dev, "up"])


def _canonical(cidr: str) -> str:
    return str(ipaddress.ip_interface(cidr))


def delete_host_ns(host: str) -> None:
    """The host's namespace and cable gone (a destroyed Linode's network goes with it, addresses
    on ``lo`` included); ``ensure_host_net`` makes new ones. The cable first: deleting one end
    of a veth deletes both at once, while a namespace's devices go later, asynchronously."""
    for port in (switch_port(host), vpc_port(host)):
        run(["ip", "-n", SWITCH_NS, "link", "del", port], check=False)
    run(["ip", "netns", "del", host_ns(host)], check=False)


def flush_host(host: str) -> None:
    for dev in (A.INTERFACE, A.PRIVATE_INTERFACE):
        run(["ip", "-n", host_ns(host), "addr", "flush", "dev", dev], check=False)


def _default_route(ns: str, via: str) -> None:
    family = "-6" if ":" in via else "-4"
    run(["ip", "-n", ns, family, "route", "replace", "default", "via", via])


def _port(port: str, *, up: bool) -> None:
    run(["ip", "-n", SWITCH_NS, "link", "set", port, "up" if up else "down"])


def cut_target(target: str, *, up: bool) -> None:
    """Pull or plug a cable: a host's switch port, or a data centre's uplink to the router (its
    two hosts still see each other, nobody else sees them)."""
    if target in DC_NAMES:
        _port(router_port(target), up=up)
    elif target in HOSTS:
        for port in (switch_port(target), vpc_port(target)):
            _port(port, up=up)
    else:
        raise ValueError(f"cut/heal takes a host {HOSTS} or a data centre {DC_NAMES}")


def port_down(host: str) -> None:
    for port in (switch_port(host), vpc_port(host)):
        if _link_exists(SWITCH_NS, port):
            _port(port, up=False)


def delete_all() -> list[str]:
    """Delete every lab namespace and the client's /etc/netns entry; return what was deleted."""
    gone = []
    for ns in lab_namespaces():
        run(["ip", "netns", "del", ns], check=False)
        gone.append(ns)
    etc_root = Path("/etc/netns")
    if etc_root.is_dir():
        for d in etc_root.iterdir():
            if d.name.startswith(NS_PREFIX):
                for f in d.iterdir():
                    f.unlink()
                d.rmdir()
        if not any(etc_root.iterdir()):
            etc_root.rmdir()
    return gone
