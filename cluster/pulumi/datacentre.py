"""The Linode infrastructure of one data centre, as a Pulumi ComponentResource.

Per stack: an anti-affinity placement group; a VPC with one subnet (``vpcSubnet``); ``svr1`` and
``svr2`` (Debian 13, IPv6, a public interface and a VPC interface whose address the program
fixes, ``topology.vpc_address``); an extra public IPv4 on svr1 and an IPv6 routed /64 range
routed to svr1, both shared with svr2 (the shared IPs Heartbeat moves); a block-storage volume
per node; a cloud firewall whose rules name no node (the internal ports: the VPC subnet);
reverse DNS; and, when asked, a Linode DNS Manager secondary zone. Reverse DNS and the secondary
zone are declared by ``declare_dns`` once provisioning is known, because Linode checks that the
forward name resolves and our own BIND serves it.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_command.remote as remote
import pulumi_linode as linode

from cluster import ports
from cluster.config import StackConfig, other_dc
from cluster.pulumi import forward_dns
from cluster.pulumi.handover import handover_command
from cluster.pulumi.peer import (
    NODE_ADDRESS_KEYS,
    OUT_ACTIVE_DC,
    OUT_ADDRESSES,
    OUT_ADMIN_URL,
    OUT_DC,
    OUT_HOSTNAMES,
    OUT_MAIL_HOST,
    OUT_NODES,
    OUT_REGION,
    OUT_REVERSE_DNS,
    OUT_SHARED_IPV4,
    OUT_SHARED_IPV6,
    OUT_SHARED_IPV6_RANGE,
    OUT_TLS_CERTIFICATE,
    OUT_TOPOLOGY_DCS,
    OUT_VPC_SUBNET,
    OUT_WEBMAIL_URL,
    PeerStack,
    addresses_to_dict,
    dict_to_addresses,
    node_address,
)
from cluster.services.storage import volume_label
from cluster.topology import SLOTS, node_name, vpc_address

# Debian 13, the nodes' only release (README: no upgrade path from Debian 12). The slug is
# Linode's (API spec, get-image: "linode/debian13", label "Debian 13"; shared/LINODE-VPC-FACTS.md).
IMAGE = "linode/debian13"
# Every Linode resource carries this tag; the account-wide ones (placement group, VPC, firewall) are
# labelled "<TAG>-<dc>" (Linode labels are unique per account).
TAG = "mailcluster"
# Linode's strict anti-affinity: the two nodes never share a physical host, and Linode refuses
# a placement that would break that rather than quietly co-locating them.
PLACEMENT_TYPE = "anti_affinity:local"
PLACEMENT_POLICY = "strict"

# Inputs Linode acts on only when it creates a Linode; a change to any of them would replace
# the node (change_rules.RULES). After creation the plan manages what they stood for: root's
# authorized_keys and password (services/access.py), the node's networking (Network Helper
# off), the firewall (the Firewall resource's own rules). ``privateIp``: nodes are created
# without Linode's private IPv4 now (the VPC carries their private traffic), and a node that
# has one keeps it: Linode can enable it but not disable it (pulumi_linode 6.8, private_ip).
# ``interfaceGeneration``: a node created before it was set has it from the account's setting.
INSTANCE_CREATE_ONLY = [
    "image", "authorizedKeys", "rootPass", "firewallId", "networkHelper", "privateIp",
    "interfaceGeneration",
]  # fmt: skip
# Linode's legacy configuration profile interfaces, the model of the ``interfaces`` input (the
# newer "Linode interfaces", ``interface_generation="linode"``, replace a node and cannot be
# undone: change_rules.RULES). Explicit, as the account setting ``interfaces_for_new_linodes``
# decides the default (pulumi_linode 6.8, Instance.interface_generation).
INTERFACE_GENERATION = "legacy_config"

# The shared IPv6: an IPv6 routed range (Linode allows /64 and /56: terraform-provider-linode
# linode/ipv6range/framework_schema_resource.go, prefix_length OneOf(56, 64)), routed to svr1
# and shared with svr2 like the shared IPv4 ("IPv4 addresses and IPv6 routed ranges can both be
# shared", Linode's failover guide). The service address is ``::10`` of the range, the same host
# part as the lab's (cluster/lab/addresses.py), so a range's first address stays free.
SHARED_IPV6_PREFIXLEN = 64
SHARED_IPV6_HOST = 0x10
# Sharing an IPv6 range is "early access" in the provider: "IPv6 sharing is currently
# available through early access. To use early access resources, the api_version provider
# argument must be set to v4beta" (pulumi_linode 6.8, InstanceSharedIps docstring; the same
# notice in terraform-provider-linode's docs for linode_instance_shared_ips). The Linode API
# takes a range in the list of shared IPs as its address without the prefix length
# (techdocs.akamai.com/linode-api/reference/post-share-ips: `--ips 2001:db8:3c4d:15::`), which
# is what Ipv6Range's ``range`` output holds; the provider's own acceptance test shares
# ``linode_ipv6_range.foobar.range`` the same way (linode/instancesharedips/tmpl/configs.gotf).
LINODE_API_VERSION_FOR_V6_SHARING = "v4beta"


def shared_ipv6_address(range_: str, prefixlen: int = SHARED_IPV6_PREFIXLEN) -> str:
    """The shared IPv6 service address in a routed range (``range_`` with or without its
    prefix length, as Linode reports it)."""
    net = ipaddress.IPv6Network(f"{range_.split('/')[0]}/{prefixlen}")
    return str(net[SHARED_IPV6_HOST])


@dataclass(frozen=True)
class RuleSpec:
    """One inbound firewall rule; ``source`` is one of ``cluster.ports.SOURCES``."""

    label: str
    protocol: str
    ports: tuple[int, ...]
    source: str


def inbound_rules(config: StackConfig) -> list[RuleSpec]:
    """The firewall's inbound rules as plain data, one per (source, protocol) of the port table
    (cluster/ports.py, which the host firewall is generated from too); everything else is
    dropped."""
    table = ports.port_table(config)
    out = []
    for source in ports.SOURCES:
        if source == ports.MESH:
            continue  # inside the tunnel: the cloud firewall sees it as MESH_PORT ("nodes")
        for protocol in ("tcp", "udp"):
            numbers = ports.ports_by(table, source, protocol)
            if numbers:
                out.append(RuleSpec(f"{source}-{protocol}", protocol.upper(), numbers, source))
    # ICMP: path-MTU discovery needs "fragmentation needed"; without it large messages over TLS
    # stall on some paths. (The host firewall admits the same ICMP types and IPv6 ND.)
    out.append(RuleSpec("icmp", "ICMP", (), ports.WORLD))
    return out


def _inbounds(
    config: StackConfig, sources: dict[str, tuple[list[str], list[str]]]
) -> list[linode.FirewallInboundArgs]:
    """Linode refuses an ACCEPT rule without addresses: a source with none (``metricsCidrs``
    empty) has no rule at all (dropped)."""
    out = []
    for rule in inbound_rules(config):
        v4, v6 = sources[rule.source]
        if not (v4 or v6):
            continue
        out.append(
            linode.FirewallInboundArgs(
                label=rule.label,
                action="ACCEPT",
                protocol=rule.protocol,
                ports=",".join(str(p) for p in rule.ports) or None,
                ipv4s=v4 or None,
                ipv6s=v6 or None,
            )
        )
    return out


def firewall_sources(config: StackConfig) -> dict[str, tuple[list[str], list[str]]]:
    """Each rule source's (IPv4, IPv6) CIDRs: the stack's config alone (ports.source_cidrs)."""
    return ports.source_cidrs(config)


@dataclass
class DataCentreArgs:
    config: StackConfig
    peer: PeerStack
    root_password: pulumi.Input[str] | None = None
    tags: list[str] = field(default_factory=list)
    # Rolling disruptive updates hand the shared IP to svr2 before svr1 goes down (needs SSH:
    # only with provisioning).
    handover: bool = False
    ssh_private_key: pulumi.Input[str] | None = None
    # Addresses whose PTR the last `up` declared (its reverseDns output).
    deployed_ptrs: Sequence[str] = ()


class DataCentre(pulumi.ComponentResource):
    """One data centre: ``mailcluster:index:DataCentre``.

    Attributes:
        placement_group: the anti-affinity group both nodes are in.
        vpc, vpc_subnet: the data centre's VPC and the subnet of its nodes' private addresses.
        instances: ``{"svr1": Instance, "svr2": Instance}``.
        node_names: ``{"svr1": "dc1-svr1", ...}`` (Linode labels and host names).
        shared_ip: the extra public IPv4 on svr1; ``shared_ips``: its sharing with svr2.
        volumes: ``{"svr1": Volume, ...}``, each attached to its node.
        firewall: the cloud firewall of both nodes.
        addresses: ``Output`` of this DC's addresses in the shape the peer stack reads.
        rdns: the reverse DNS records declared so far; ``secondary_dns``: the Linode zone.
    """

    def __init__(
        self, name: str, args: DataCentreArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mailcluster:index:DataCentre", name, None, opts)
        self.prefix = name
        self.config = config = args.config
        self.peer = args.peer
        child = pulumi.ResourceOptions(parent=self)
        tags = [TAG, config.dc, *args.tags]
        account_label = f"{TAG}-{config.dc}"

        self.placement_group = linode.PlacementGroup(
            f"{name}-pg",
            label=account_label,
            region=config.region,
            placement_group_type=PLACEMENT_TYPE,
            placement_group_policy=PLACEMENT_POLICY,
            opts=child,
        )
        self.node_names = {slot: node_name(config.dc, slot) for slot in SLOTS}
        # The private network of the data centre. Its range and the nodes' addresses in it are
        # the program's choice, known before any node exists: the firewall names the range.
        self.vpc = linode.Vpc(
            f"{name}-vpc",
            label=account_label,
            region=config.region,
            description=f"{TAG} {config.dc}: node-to-node traffic inside the data centre",
            opts=child,
        )
        self.vpc_subnet = linode.VpcSubnet(
            f"{name}-subnet",
            vpc_id=self.vpc.id.apply(int),
            label=account_label,
            ipv4=config.vpc_subnet,
            opts=child,
        )
        self.firewall = self._firewall(config, tags)
        self.instances: dict[str, linode.Instance] = {}
        self.volumes: dict[str, linode.Volume] = {}
        self.handover: remote.Command | None = None
        # svr2 first, svr1 last: see _instance_order.
        for slot in reversed(SLOTS):
            node = self.node_names[slot]
            inst = linode.Instance(
                f"{name}-{slot}",
                label=node,
                image=IMAGE,
                region=config.region,
                type=config.instance_type,
                authorized_keys=list(config.ssh_keys),
                # Without a root password Linode sets a random one it never reveals: SSH keys
                # are the only way in, which is what we want unless the user asks otherwise.
                root_pass=args.root_password,
                interface_generation=INTERFACE_GENERATION,
                interfaces=self._interfaces(slot),
                # Linode's failover guide: Network Helper off on both nodes, or it rewrites the
                # networking at boot; the plan configures the node's addresses itself.
                network_helper=False,
                # Filtered from its first boot, not from when a later step attaches it.
                firewall_id=self.firewall.id.apply(int),
                placement_group=linode.InstancePlacementGroupArgs(
                    id=self.placement_group.id.apply(int)
                ),
                tags=tags,
                opts=pulumi.ResourceOptions(
                    parent=self,
                    # A deliberate rebuild stays possible: `pulumi state unprotect`, then
                    # `pulumi up --replace <urn>`, one node at a time (README). Labels are
                    # unique per account: the old node must go before its successor exists.
                    protect=True,
                    delete_before_replace=True,
                    ignore_changes=INSTANCE_CREATE_ONLY,
                    depends_on=self._instance_order(slot, args),
                ),
            )
            self.instances[slot] = inst
            # The label fixes the device path the storage step mounts (storage.device_path).
            self.volumes[slot] = linode.Volume(
                f"{name}-{slot}-mail",
                label=volume_label(node),
                region=config.region,
                size=config.volume_size_gb,
                linode_id=inst.id.apply(int),
                tags=tags,
                # The mail data: neither a routine change nor `pulumi destroy` may delete it.
                opts=pulumi.ResourceOptions(parent=self, protect=True, retain_on_delete=True),
            )
            if slot == "svr2" and args.handover:
                self.handover = handover_command(
                    f"{name}-svr2-handover", config, inst, args.ssh_private_key, self
                )
        self.instances = {slot: self.instances[slot] for slot in SLOTS}
        self.volumes = {slot: self.volumes[slot] for slot in SLOTS}

        svr1, svr2 = self.instances["svr1"], self.instances["svr2"]
        # No reboot: in BGP mode the VIP lives on lo and BIRD announces it; in ARP mode
        # Heartbeat's IPaddr2 adds it. Neither needs Linode to reconfigure eth0.
        self.shared_ip = linode.InstanceIp(
            f"{name}-shared-ip",
            linode_id=svr1.id.apply(int),
            public=True,
            apply_immediately=False,
            # The MX target and the registrar's glue: a new address breaks mail delivery.
            opts=pulumi.ResourceOptions(parent=self, protect=True),
        )
        # Created on an existing stack by its next `up` (change_rules.RULES: a create, and the
        # sharing below an in-place update of its addresses): nothing is replaced.
        self.shared_ipv6_range = linode.Ipv6Range(
            f"{name}-shared-ipv6",
            prefix_length=SHARED_IPV6_PREFIXLEN,
            linode_id=svr1.id.apply(int),
            # The AAAA target of mail.<domain>: a new range breaks IPv6 delivery and PTRs.
            opts=pulumi.ResourceOptions(parent=self, protect=True),
        )
        self.shared_ipv6: pulumi.Output[str] = self.shared_ipv6_range.range.apply(
            shared_ipv6_address
        )
        _warn_unless_v6_sharing_api(self)
        self.shared_ips = linode.InstanceSharedIps(
            f"{name}-share-svr2",
            linode_id=svr2.id.apply(int),
            addresses=[self.shared_ip.address, self.shared_ipv6_range.range],
            opts=child,
        )

        node_addrs = {
            slot: pulumi.Output.all(
                # pulumi.get avoids the deprecation warning the ip_address property prints on
                # every run; Linode still fills it with the primary public IPv4.
                pulumi.get(inst, "ip_address"),
                vpc_address(config.vpc_subnet, slot),
                inst.ipv6,
            )
            for slot, inst in self.instances.items()
        }
        self.addresses: pulumi.Output[dict[str, Any]] = pulumi.Output.all(
            self.shared_ip.address, self.shared_ipv6, node_addrs["svr1"], node_addrs["svr2"]
        ).apply(
            lambda v: addresses_to_dict(
                v[0],
                {
                    slot: (pub, priv, v6.split("/")[0] if v6 else None)
                    for slot, (pub, priv, v6) in zip(SLOTS, v[2:], strict=True)
                },
                shared_ipv6=v[1],
            )
        )

        self.rdns: list[linode.Rdns] = []
        self.secondary_dns: linode.Domain | None = None
        # Addresses whose PTR this stack declared: exported, so a later `up` keeps them
        # declared even if a lookup fails then (``deployed_ptrs``).
        self.reverse_dns: pulumi.Output[list[str]] = pulumi.Output.from_input([])
        self.deployed_ptrs = set(args.deployed_ptrs)
        self.register_outputs(
            {
                "addresses": self.addresses,
                "placementGroup": self.placement_group.id,
                "firewall": self.firewall.id,
            }
        )

    def _interfaces(self, slot: str) -> list[linode.InstanceInterfaceArgs]:
        """The public interface first and primary (eth0: the default route, over which the BGP
        sessions to the route servers run, and the shared IP; Linode's failover guide), then
        the VPC interface (eth1) at the node's fixed address, without 1:1 NAT (a public IPv4
        NATed to a VPC address cannot be shared: Linode API, POST /networking/ips/share)."""
        return [
            linode.InstanceInterfaceArgs(purpose="public", primary=True),
            linode.InstanceInterfaceArgs(
                purpose="vpc",
                subnet_id=self.vpc_subnet.id.apply(int),
                ipv4=linode.InstanceInterfaceIpv4Args(
                    vpc=vpc_address(self.config.vpc_subnet, slot)
                ),
            ),
        ]

    def _instance_order(self, slot: str, args: DataCentreArgs) -> list[pulumi.Resource]:
        """What a node's Instance waits for. The engine updates independent resources in
        parallel, so a resize (or any update that reboots) would take both nodes down at once.
        svr1, the usual holder of the shared IP, depends on svr2 and on the handover on svr2:
        an update that takes nodes down reaches svr2 first, then svr2 takes the shared IP and
        the role over, and only then svr1 goes down. (Only this direction: svr2 depending on
        svr1 as well would be a cycle.)"""
        if slot != "svr1":
            return []
        return [r for r in (self.instances["svr2"], self.handover) if r is not None]

    def _firewall(self, config: StackConfig, tags: list[str]) -> linode.Firewall:
        """The cloud firewall, declared before the nodes so each gets it at creation.

        Its rules come from config alone (ports.source_cidrs): the internal ports are open to
        the VPC subnet, which the program chose, and the mesh port to anyone. With Linode's
        legacy configuration profile interfaces a firewall filters the public and the VPC
        interfaces ("Public and VPC interfaces are subject to the firewall rules, while VLAN
        interfaces are not": Linode API, POST /networking/firewalls), so the DC peer's traffic
        passes it by the subnet rule. No rule needs a node's address, so the first `up` of a
        stack creates the firewall whole, then the nodes behind it, then provisions them.
        """
        return linode.Firewall(
            f"{self.prefix}-fw",
            label=f"{TAG}-{config.dc}",
            inbound_policy="DROP",
            outbound_policy="ACCEPT",
            inbounds=_inbounds(config, firewall_sources(config)),
            tags=tags,
            # The nodes join at creation (firewall_id). `linodes` was how they joined before:
            # ignoring it keeps an existing attachment instead of detaching it.
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["linodes"]),
        )

    @property
    def infrastructure(self) -> list[pulumi.Resource]:
        """What must exist before a node is provisioned over SSH."""
        return [
            *self.instances.values(),
            *self.volumes.values(),
            self.vpc_subnet,
            self.shared_ip,
            self.shared_ipv6_range,
            self.shared_ips,
            self.firewall,
        ]

    # -- DNS ----------------------------------------------------------------------------------
    def ptr_names(self) -> list[tuple[pulumi.Output[str], str]]:
        """(address, name) of every public address: a node's addresses carry its own name,
        the VIPs (IPv4 and IPv6) of the active DC ``mail.<domain>`` (what mail leaves as), the
        standby's ``<dc>.<domain>``. Each matches an A/AAAA record of the zone."""
        cfg = self.config
        out: list[tuple[pulumi.Output[str], str]] = []
        for slot, inst in self.instances.items():
            fqdn = f"{self.node_names[slot]}.{cfg.domain}"
            out.append((pulumi.get(inst, "ip_address"), fqdn))
            out.append((inst.ipv6.apply(lambda v: v.split("/")[0]), fqdn))
        vip_name = f"mail.{cfg.domain}" if cfg.is_active else f"{cfg.dc}.{cfg.domain}"
        out.append((self.shared_ip.address, vip_name))
        out.append((self.shared_ipv6, vip_name))
        return out

    def declare_dns(self, provisioned: Sequence[pulumi.Resource]) -> None:
        """Reverse DNS and the Linode secondary zone, after ``provisioned`` (BIND serving the
        forward names). A standby DC's names are served by the active DC, which learns them
        only on its next ``up``: until the peer's outputs show it rendered this DC, the
        standby's PTRs wait (a later ``up`` of this stack declares them)."""
        cfg = self.config
        if not cfg.provision or cfg.is_active:
            self.reverse_dns = self._declare_rdns(provisioned)
        else:
            ready = pulumi.Output.all(self.peer.topology_dcs, self.peer.active_dc).apply(
                lambda v: bool(v[0]) and cfg.dc in v[0] and v[1] == cfg.active_dc
            )

            # Declared inside apply: the condition comes from the peer's stack outputs, which
            # Pulumi reads during preview too, so preview shows these records.
            self.reverse_dns = ready.apply(lambda ok: self._declare_rdns(provisioned) if ok else [])
        self._declare_secondary_dns(provisioned)

    def _declare_rdns(self, provisioned: Sequence[pulumi.Resource]) -> pulumi.Output[list[str]]:
        """The PTRs whose forward name already resolves to the address (Linode refuses the
        others, after retrying for 15 minutes); a warning names the glue records that make the
        rest resolve, for the next `up`. A PTR this stack declared before stays declared."""
        opts = pulumi.ResourceOptions(parent=self, depends_on=list(provisioned))
        pairs = self.ptr_names()
        vips = pulumi.Output.all(self.shared_ip.address, self.peer.addresses)

        def declare(values: list[Any]) -> list[str]:
            *addresses, own_vip, peer = values
            missing = []
            for index, (address, (_, name)) in enumerate(zip(addresses, pairs, strict=True)):
                if not (forward_dns.resolves(name, address) or address in self.deployed_ptrs):
                    missing.append(f"{name} -> {address}")
                    continue
                self.rdns.append(
                    linode.Rdns(
                        f"{self.prefix}-rdns-{index}",
                        address=address,
                        rdns=name,
                        # Resolving here need not mean resolving at Linode's resolver yet.
                        wait_for_available=True,
                        opts=opts,
                    )
                )
            if missing:
                pulumi.log.warn(
                    f"reverse DNS not set yet for {', '.join(missing)}: the names do not "
                    f"resolve. Point the domain at the cluster at your registrar (glue: "
                    f"{glue_records(self.config, own_vip, peer)}), then run `pulumi up` again",
                    self,
                )
            return [str(r) for r, (_, n) in zip(addresses, pairs, strict=True)
                    if f"{n} -> {r}" not in missing]  # fmt: skip

        return pulumi.Output.all(*(a for a, _ in pairs), vips).apply(
            lambda v: declare([*v[:-1], *v[-1]])
        )

    def _declare_secondary_dns(self, provisioned: Sequence[pulumi.Resource]) -> None:
        cfg = self.config
        if not cfg.linode_secondary_dns:
            return
        if cfg.dc != "dc1":
            # A Linode domain is unique per account: one stack must own it, and dc1's must,
            # so a failover (an `up` of dc2 alone) never needs to create or move it.
            pulumi.log.warn("linodeSecondaryDns: the Linode secondary zone is managed by dc1")
            return
        masters = pulumi.Output.all(self.addresses, self.peer.addresses).apply(
            lambda v: bind_servers(cfg, v[0], v[1])
        )
        self.secondary_dns = linode.Domain(
            f"{self.prefix}-secondary-dns",
            domain=cfg.domain,
            type="slave",
            master_ips=masters,
            ttl_sec=cfg.dns_ttl,
            tags=[TAG],
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(provisioned)),
        )


def _warn_unless_v6_sharing_api(resource: pulumi.Resource) -> None:
    """Linode shares an IPv6 range only through its beta API (LINODE_API_VERSION_FOR_V6_SHARING):
    say so before the sharing fails at Linode."""
    version = pulumi.Config("linode").get("apiVersion") or os.environ.get("LINODE_API_VERSION")
    if version != LINODE_API_VERSION_FOR_V6_SHARING:
        pulumi.log.warn(
            "sharing the IPv6 range with svr2 needs Linode's beta API: run `pulumi config set "
            f'linode:apiVersion {LINODE_API_VERSION_FOR_V6_SHARING}` (README, "Dual stack")',
            resource,
        )


def glue_records(config: StackConfig, own_vip: str, peer: dict[str, Any] | None) -> str:
    """``ns1.<domain>`` is dc1's shared IP, ``ns2`` dc2's (README, "Deploy to Linode")."""
    vips = {config.dc: own_vip}
    if peer:
        vips[config.peer_dc] = peer["sharedIpv4"]
    return ", ".join(
        f"ns{i}.{config.domain} -> {vips.get(dc, f'the {dc} stack output sharedIpv4')}"
        for i, dc in enumerate(("dc1", "dc2"), start=1)
    )


def bind_servers(
    config: StackConfig, own: dict[str, Any], peer: dict[str, Any] | None
) -> list[str]:
    """Public IPv4s of the BIND servers Linode may transfer the zone from: the active DC's (the
    masters) first, then the standby's slaves, which hold the same serial. Listing both means
    Linode keeps following the zone after a failover that never touches dc1's stack."""
    by_dc = {config.dc: own, config.peer_dc: peer}
    out: list[str] = []
    for dc in (config.active_dc, other_dc(config.active_dc)):
        data = by_dc.get(dc)
        if data:
            addresses = dict_to_addresses(data)
            out.append(addresses.shared_ipv4)
            out += [addresses.nodes[slot].public_ipv4 for slot in SLOTS]
    return list(dict.fromkeys(out))


def stack_outputs(
    dc: DataCentre,
    secret_exports: dict[str, pulumi.Output[Any]],
    topology_dcs: Any,
    tls_certificate: pulumi.Input[str],
) -> dict[str, Any]:
    """Everything the stack exports, for the user and for the peer stack's StackReference,
    under the output names of ``cluster.pulumi.peer``."""
    cfg = dc.config
    outputs: dict[str, Any] = {
        OUT_DC: cfg.dc,
        OUT_ACTIVE_DC: cfg.active_dc,
        OUT_REGION: cfg.region,
        OUT_VPC_SUBNET: cfg.vpc_subnet,
        OUT_ADDRESSES: dc.addresses,
        OUT_SHARED_IPV4: dc.shared_ip.address,
        OUT_SHARED_IPV6: dc.shared_ipv6,
        OUT_SHARED_IPV6_RANGE: dc.shared_ipv6_range.range.apply(
            lambda r: f"{r.split('/')[0]}/{SHARED_IPV6_PREFIXLEN}"
        ),
        OUT_NODES: {
            node: {
                "hostname": f"{node}.{cfg.domain}",
                **{key: node_address(dc.addresses, slot, key) for key in NODE_ADDRESS_KEYS},
            }
            for slot, node in dc.node_names.items()
        },
        OUT_HOSTNAMES: [f"{node}.{cfg.domain}" for node in dc.node_names.values()],
        OUT_MAIL_HOST: f"mail.{cfg.domain}",
        OUT_WEBMAIL_URL: f"https://mail.{cfg.domain}/",
        OUT_ADMIN_URL: f"https://mail.{cfg.domain}/postfixadmin/",
        OUT_TOPOLOGY_DCS: topology_dcs,
        OUT_TLS_CERTIFICATE: tls_certificate,
        OUT_REVERSE_DNS: dc.reverse_dns,
    }
    outputs.update({k: pulumi.Output.secret(v) for k, v in secret_exports.items()})
    return outputs
