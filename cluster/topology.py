"""From config and addresses to roles. Pure Python: no Pulumi, no I/O.

The same ``Topology`` is built by the Pulumi program (addresses from Linode and from the peer
stack's outputs) and by the lab (addresses of its namespaces), and everything rendered for a host
is a function of it. Roles that move at run time (which node of a data centre holds the shared IP
and so is the MariaDB master) are not fixed here: the plan's scripts ask the host. What is fixed:

- the active data centre (``activeDc``) serves mail: its shared IP is what MX/mail/webmail
  resolve to, its holder is the MariaDB master, its two nodes are the BIND primaries;
- every other node is a GTID replica: the active data centre's standby of its peer (private
  network), the other data centre's nodes of the active data centre's writable node, over the
  mesh (the role script finds and follows it; GTID makes the move free);
- Heartbeat pairs svr1 and svr2 of each data centre over the private network: the data
  centre's VPC subnet (``vpcSubnet``), in which the program fixes each node's address
  (``vpc_address``) before the node exists.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from cluster.config import DC_NAMES, StackConfig, other_dc

SLOTS = ("svr1", "svr2")
DKIM_SELECTOR = "mail"
# SOA timers of every zone the cluster serves (RFC 1912 2.2): refresh, retry, expire.
SOA_REFRESH, SOA_RETRY, SOA_EXPIRE = 3600, 600, 1209600
# A node's interfaces, in the order the Instance lists them (Linode's legacy configuration
# profile interfaces: the first is eth0, the next eth1): the public interface first, as Linode's
# failover guide needs it (the default route, over which the BGP sessions run), then the VPC
# interface, which carries the node's private address and no gateway.
PUBLIC_INTERFACE = "eth0"
VPC_INTERFACE = "eth1"
# Each node's host number in its data centre's VPC subnet. Linode keeps a subnet's first two
# and last two addresses for itself (API: a VPC interface's ``ipv4.vpc``); 11 and 12 are the
# host numbers the lab gives its public addresses too.
VPC_HOSTS = {"svr1": 11, "svr2": 12}


def node_name(dc: str, slot: str) -> str:
    """``dc1-svr1``: a node's name, also its Linode label and the lab's host name."""
    return f"{dc}-{slot}"


def vpc_address(subnet: str, slot: str) -> str:
    """The private address of the node in ``slot``: fixed in its data centre's VPC subnet, so
    known before the node exists (the Instance asks Linode for it, the lab gives it)."""
    return str(ipaddress.IPv4Network(subnet)[VPC_HOSTS[slot]])


def server_id(dc: str, slot: str) -> int:
    """A node's MariaDB server_id, unique in the cluster and fixed by its place (1..4); also its
    host number in the mesh."""
    return DC_NAMES.index(dc) * len(SLOTS) + SLOTS.index(slot) + 1


@dataclass(frozen=True)
class NodeAddresses:
    public_ipv4: str
    private_ipv4: str
    public_ipv6: str | None = None


@dataclass(frozen=True)
class DcAddresses:
    """The addresses of one data centre: its shared IP and its two nodes by slot."""

    shared_ipv4: str
    nodes: dict[str, NodeAddresses]
    # The prefix length of the public LAN (for IPaddr2 in arp mode) and its interface.
    public_prefixlen: int = 24
    interface: str = PUBLIC_INTERFACE
    # The shared IPv6 address: on Linode an address of the IPv6 routed range (/64) shared by
    # both nodes of the data centre, moved like the shared IPv4. None: no shared IPv6 yet.
    shared_ipv6: str | None = None
    shared_ipv6_prefixlen: int = 64
    # The BGP route servers the nodes announce the shared addresses to (sharedIpMethod bgp).
    # Empty: Linode's four of the region (services/bgp.py); the lab gives its own.
    route_servers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if set(self.nodes) != set(SLOTS):
            raise ValueError(f"a data centre needs nodes {SLOTS}, got {sorted(self.nodes)}")
        for addr in [self.shared_ipv4] + [
            a for n in self.nodes.values() for a in (n.public_ipv4, n.private_ipv4)
        ]:
            ipaddress.IPv4Address(addr)
        for addr6 in [self.shared_ipv6] + [n.public_ipv6 for n in self.nodes.values()]:
            if addr6 is not None:
                ipaddress.IPv6Address(addr6)


@dataclass(frozen=True)
class Node:
    name: str  # "dc1-svr1": also the Linode label and the lab host name
    dc: str
    slot: str
    fqdn: str
    public_ipv4: str
    private_ipv4: str
    public_ipv6: str | None
    server_id: int  # MariaDB server_id, unique in the cluster
    peer_name: str  # the other node of the same data centre (Heartbeat partner)


@dataclass(frozen=True)
class DnsRecord:
    name: str  # relative to the zone, "@" for the apex
    type: str
    value: str


@dataclass(frozen=True)
class Topology:
    config: StackConfig
    dcs: dict[str, DcAddresses]
    nodes: tuple[Node, ...] = field(init=False)

    def __post_init__(self) -> None:
        if self.config.dc not in self.dcs:
            raise ValueError(f"addresses of this stack's data centre {self.config.dc} missing")
        if self.config.active_dc not in self.dcs:
            raise ValueError(
                f"activeDc is {self.config.active_dc} but its addresses are unknown: deploy "
                f"that stack first or set peerStack so this stack can read them"
            )
        nodes = []
        for dc in DC_NAMES:
            if dc not in self.dcs:
                continue
            for index, slot in enumerate(SLOTS):
                addr = self.dcs[dc].nodes[slot]
                name = node_name(dc, slot)
                nodes.append(
                    Node(
                        name=name,
                        dc=dc,
                        slot=slot,
                        fqdn=f"{name}.{self.domain}",
                        public_ipv4=addr.public_ipv4,
                        private_ipv4=addr.private_ipv4,
                        public_ipv6=addr.public_ipv6,
                        server_id=server_id(dc, slot),
                        peer_name=node_name(dc, SLOTS[1 - index]),
                    )
                )
        object.__setattr__(self, "nodes", tuple(nodes))
        self._check_mesh()
        self._check_private()

    # -- names --------------------------------------------------------------------------------
    @property
    def domain(self) -> str:
        return self.config.domain

    @property
    def mail_host(self) -> str:
        """The name users and MX point at: always the active data centre's shared IP."""
        return f"mail.{self.domain}"

    @property
    def active_dc(self) -> str:
        return self.config.active_dc

    @property
    def standby_dc(self) -> str | None:
        other = other_dc(self.active_dc)
        return other if other in self.dcs else None

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def dc_nodes(self, dc: str) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.dc == dc)

    @property
    def own_nodes(self) -> tuple[Node, ...]:
        """The nodes this stack provisions."""
        return self.dc_nodes(self.config.dc)

    def peer(self, node: Node) -> Node:
        return self.node(node.peer_name)

    def shared_ip(self, dc: str) -> str:
        return self.dcs[dc].shared_ipv4

    def shared_ipv6(self, dc: str) -> str | None:
        return self.dcs[dc].shared_ipv6

    # -- roles --------------------------------------------------------------------------------
    @property
    def dns_masters(self) -> tuple[Node, ...]:
        """Both nodes of the active data centre hold the zone as master (identical files from
        the same plan), so a Heartbeat takeover keeps DNS authoritative."""
        return self.dc_nodes(self.active_dc)

    @property
    def dns_slaves(self) -> tuple[Node, ...]:
        return self.dc_nodes(self.standby_dc) if self.standby_dc else ()

    def is_dns_master(self, node: Node) -> bool:
        """Whether ``node`` holds the zone as primary (BIND)."""
        return node.dc == self.active_dc

    def initialises_database(self, node: Node) -> bool:
        """Whether ``node`` carries the one-time writes to the database (accounts, Postfix
        Admin's and Roundcube's schemas, the mail domain): the nodes that can be the writable
        master, those of the active data centre. Each such step still runs only where
        ``mailcluster-role is-writer`` says so; the others get it all by replication."""
        return node.dc == self.active_dc

    @property
    def cluster_addresses(self) -> tuple[str, ...]:
        """Every address a cluster peer may come from (firewalls, BIND ACLs, MariaDB grants)."""
        out: list[str] = []
        for dc in DC_NAMES:
            if dc in self.dcs:
                out.append(self.dcs[dc].shared_ipv4)
        for n in self.nodes:
            out += [n.public_ipv4, n.private_ipv4]
        return tuple(dict.fromkeys(out))

    def certificate_names(self, dc: str) -> list[str]:
        """Subject names of the one certificate both nodes of ``dc`` share: the service names
        users see first (the first is the CN), then every address peers connect to by IP
        (Dovecot replication, MariaDB replication verify the cluster CA against these)."""
        names = [
            self.mail_host,
            f"webmail.{self.domain}",
            f"mta-sts.{self.domain}",
            f"autoconfig.{self.domain}",
            f"autodiscover.{self.domain}",
            # Outlook's first autodiscover lookup and Thunderbird's second go to the domain itself.
            self.domain,
            f"{dc}.{self.domain}",
        ]
        names += [n.fqdn for n in self.dc_nodes(dc)]
        names.append(self.shared_ip(dc))
        shared6 = self.shared_ipv6(dc)
        if shared6:
            # Clients verify TLS against the address they connected to, in either family.
            names.append(shared6)
        for n in self.dc_nodes(dc):
            names += [n.public_ipv4, n.private_ipv4]
        names += self.mesh_addresses(dc)  # dsync across data centres connects to these
        return list(dict.fromkeys(names))

    # -- the mesh (WireGuard between the four nodes; see cluster/services/mesh.py) -------------
    # Kept in one block: node-to-node services name these addresses, never public ones.
    @property
    def mesh_network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.config.mesh_cidr)

    def mesh_address(self, node: Node) -> str:
        """A node's inner address: the mesh network's host number ``server_id`` (1..4), fixed by
        the node's place, so it never changes when Linode gives the node new addresses."""
        return str(self.mesh_network.network_address + node.server_id)

    def mesh_addresses(self, dc: str) -> tuple[str, ...]:
        return tuple(self.mesh_address(n) for n in self.dc_nodes(dc))

    def mesh_members(self) -> tuple[tuple[str, str], ...]:
        """(name, mesh address) of every node of the cluster, whether its data centre's
        addresses are known yet or not: the mesh addresses are fixed by place and the keys are
        generated with the cluster's material, so a data centre deployed first already admits
        the other's nodes (the other learns where to send; WireGuard learns it back)."""
        return tuple(
            (node_name(dc, slot), str(self.mesh_network.network_address + server_id(dc, slot)))
            for dc in DC_NAMES
            for slot in SLOTS
        )

    @property
    def all_mesh_addresses(self) -> tuple[str, ...]:
        """Every node's mesh address, known data centre or not (``mesh_members``)."""
        return tuple(address for _, address in self.mesh_members())

    def _check_mesh(self) -> None:
        """The mesh network must hold every node and collide with no address the nodes have:
        a route for it would capture their traffic."""
        net = self.mesh_network
        if net.num_addresses - 2 < len(DC_NAMES) * len(SLOTS):
            raise ValueError(f"meshCidr {net} is too small for {len(DC_NAMES) * len(SLOTS)} nodes")
        for dc, addrs in self.dcs.items():
            used = [addrs.shared_ipv4] + [
                a for n in addrs.nodes.values() for a in (n.public_ipv4, n.private_ipv4)
            ]
            for addr in used:
                if ipaddress.IPv4Address(addr) in net:
                    raise ValueError(
                        f"meshCidr {net} contains {addr}, an address of {dc}: choose a range "
                        "the nodes do not use"
                    )

    def _check_private(self) -> None:
        """Two nodes with one private address (the two data centres' ``vpcSubnet`` overlap)
        would be one host to MariaDB's grants and the certificates' names."""
        seen: dict[str, str] = {}
        for node in self.nodes:
            other = seen.setdefault(node.private_ipv4, node.name)
            if other != node.name:
                raise ValueError(
                    f"{node.name} and {other} have the same private address "
                    f"{node.private_ipv4}: give the two data centres vpcSubnet ranges apart"
                )

    # -- DNS ----------------------------------------------------------------------------------
    def name_servers(self) -> list[tuple[str, str]]:
        """(name, address) of the zone's name servers: ns1 is the active DC's shared IP."""
        return [(name, self.shared_ip(dc)) for name, dc in self._name_server_dcs()]

    def _name_server_dcs(self) -> list[tuple[str, str]]:
        """(name, data centre) of each name server: ns1 the active DC, ns2 the standby."""
        servers = [(f"ns1.{self.domain}", self.active_dc)]
        if self.standby_dc:
            servers.append((f"ns2.{self.domain}", self.standby_dc))
        return servers

    def soa_values(self) -> dict[str, int | str]:
        """The SOA of every zone the cluster serves, its own and the further domains': the
        primary name server, the hostmaster, the timers, the TTL (``dnsTtl``) and the negative
        TTL (capped at an hour)."""
        ttl = self.config.dns_ttl
        return {
            "ttl": ttl,
            "soa_mname": f"{self.name_servers()[0][0]}.",
            "soa_rname": f"hostmaster.{self.domain}.",
            "refresh": SOA_REFRESH,
            "retry": SOA_RETRY,
            "expire": SOA_EXPIRE,
            "negative_ttl": min(ttl, 3600),
        }

    def _addresses(self, name: str, dc: str) -> list[DnsRecord]:
        """The A record of ``dc``'s shared IP for ``name``, and its AAAA when the data centre
        has a shared IPv6: every name users reach the cluster by answers in both families."""
        out = [DnsRecord(name, "A", self.shared_ip(dc))]
        v6 = self.shared_ipv6(dc)
        if v6:
            out.append(DnsRecord(name, "AAAA", v6))
        return out

    def dns_records(self, dkim_public_key_b64: str, mta_sts_id: str) -> list[DnsRecord]:
        """Every record of the zone except SOA. Values are zone-file ready."""
        d = self.domain
        records: list[DnsRecord] = []
        for name, dc in self._name_server_dcs():
            records.append(DnsRecord("@", "NS", f"{name}."))
            records += self._addresses(name.removesuffix(f".{d}"), dc)
        for label in ("@", "mail", "webmail", "mta-sts", "autoconfig", "autodiscover"):
            records += self._addresses(label, self.active_dc)
        for dc in DC_NAMES:
            if dc in self.dcs:
                records += self._addresses(dc, dc)
        for n in self.nodes:
            records.append(DnsRecord(n.name, "A", n.public_ipv4))
            if n.public_ipv6:
                records.append(DnsRecord(n.name, "AAAA", n.public_ipv6))
        records += self.hosted_mail_records()
        records.append(
            DnsRecord(f"{DKIM_SELECTOR}._domainkey", "TXT",
                      _txt(f"v=DKIM1; k=rsa; p={dkim_public_key_b64}"))
        )  # fmt: skip
        if self.config.mta_sts_mode != "none":
            records.append(DnsRecord("_mta-sts", "TXT", _txt(f"v=STSv1; id={mta_sts_id}")))
        # The further domains' DMARC reports go to this domain's postmaster: an address in
        # another domain takes them only when that domain says so (RFC 7489 7.1), and a
        # wildcard says it for every domain the cluster hosts, without a record per domain.
        records.append(DnsRecord("*._report._dmarc", "TXT", _txt("v=DMARC1")))
        return records

    def hosted_mail_records(self) -> list[DnsRecord]:
        """The mail records of every domain the cluster hosts, its own and the further ones
        (services/domains.py): MX to the cluster's host, SPF with its senders, DMARC and
        TLS-RPT reports to the postmaster."""
        senders = " ".join(
            [f"ip4:{a}" for a in self.outbound_addresses()]
            + [f"ip6:{a}" for a in self.outbound_addresses6()]
        )
        policy, postmaster = self.config.dmarc_policy, self.config.postmaster
        return [
            DnsRecord("@", "MX", f"10 {self.mail_host}."),
            DnsRecord("@", "TXT", _txt(f"v=spf1 mx {senders} -all")),
            DnsRecord("_dmarc", "TXT", _txt(f"v=DMARC1; p={policy}; rua=mailto:{postmaster}")),
            DnsRecord("_smtp._tls", "TXT", _txt(f"v=TLSRPTv1; rua=mailto:{postmaster}")),
        ]

    def outbound_addresses(self) -> tuple[str, ...]:
        """Addresses mail may leave from: every shared IP and node address (SPF)."""
        out = [self.dcs[dc].shared_ipv4 for dc in DC_NAMES if dc in self.dcs]
        out += [n.public_ipv4 for n in self.nodes]
        return tuple(dict.fromkeys(out))

    def outbound_addresses6(self) -> tuple[str, ...]:
        """The IPv6 addresses mail may leave from (SPF ``ip6:``): every shared IPv6 (Postfix's
        ``smtp_bind_address6``) and each node's own (a node without a shared IPv6 yet sends
        from it)."""
        out = [self.dcs[dc].shared_ipv6 for dc in DC_NAMES if dc in self.dcs]
        out += [n.public_ipv6 for n in self.nodes]
        return tuple(dict.fromkeys(a for a in out if a))


def _txt(text: str) -> str:
    """A TXT value for a zone file: split into 255-byte quoted strings (RFC 4408 3.1.3)."""
    chunks = [text[i : i + 255] for i in range(0, len(text), 255)]
    return " ".join(f'"{c}"' for c in chunks)
