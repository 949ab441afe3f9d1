"""Host firewall: nftables on every node, generated from the port table (cluster/ports.py).

Table ``inet mailcluster``: input drops by default; loopback, replies (established/related),
essential ICMP/ICMPv6 and the table's rules pass. The table also holds the ban sets
(``banned4``/``banned6``, elements with timeouts) that fail2ban.py fills; reloading the rules
keeps them.

The file is checked with ``nft -c`` before it is loaded, and loaded only when it differs from
what this node loaded last or the table is missing, so a second apply changes nothing. Debian's
``nftables.service`` (shipped disabled) loads it at boot: enabled here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from cluster.config import StackConfig
from cluster.hostcontext import HostContext
from cluster.plan import CHANGED_MARK, STATE_DIR, Step, script_step, start_at_boot
from cluster.ports import (
    CLUSTER,
    MESH,
    MESH_INTERFACE,
    SOURCES,
    WORLD,
    port_table,
    ports_by,
    source_cidrs,
)
from cluster.topology import VPC_INTERFACE, DcAddresses, Topology

PACKAGES: tuple[str, ...] = ("nftables",)

TABLE = "mailcluster"
BAN_SET4 = "banned4"
BAN_SET6 = "banned6"
CONF = "/etc/nftables.conf"
RULES = "/etc/nftables.d/mailcluster.nft"
LOAD_STEP = "firewall.load"
STAMP = f"{STATE_DIR}/nftables.sha256"


@dataclass(frozen=True)
class HostRule:
    """One accept rule of the input chain: ``family`` "ip"/"ip6" with ``saddrs``, or None (both
    families, any source); ``iifname``: only what arrives on that interface (the mesh's, or
    the VPC's)."""

    comment: str
    protocol: str
    ports: tuple[int, ...]
    family: str | None = None
    saddrs: tuple[str, ...] = ()
    iifname: str | None = None

    @property
    def nft(self) -> str:
        parts = []
        if self.iifname:
            parts.append(f'iifname "{self.iifname}"')
        if self.family:
            parts.append(f"{self.family} saddr {_set(self.saddrs)}")
        parts.append(f"{self.protocol} dport {_set(str(p) for p in self.ports)}")
        return " ".join(parts)


def _set(items: Iterable[str | int]) -> str:
    values = [str(i) for i in items]
    return values[0] if len(values) == 1 else "{ " + ", ".join(values) + " }"


def host_rules(config: StackConfig) -> list[HostRule]:
    """The input chain's accept rules (config alone: no node's address, see ports.py)."""
    table = port_table(config)
    sources = source_cidrs(config)
    out: list[HostRule] = []
    for source in SOURCES:
        for protocol in ("tcp", "udp"):
            numbers = ports_by(table, source, protocol)
            if not numbers:
                continue
            names = f"{protocol} " + ", ".join(
                f"{r.port} {r.service.split(' (')[0]}"
                for r in table
                if r.source == source and r.protocol == protocol
            )
            if source == WORLD:
                out.append(HostRule(f"{names}: anyone", protocol, numbers))
                continue
            iifname = None
            if source in (CLUSTER, MESH):
                out.append(HostRule(f"{names}: over the mesh", protocol, numbers,
                                    iifname=MESH_INTERFACE))  # fmt: skip
                if source == MESH:
                    continue
                # Only as it arrives on the VPC interface: the subnet is private, but a packet
                # claiming it on the public interface is not the DC peer.
                names += ": from the data centre's VPC subnet (the DC peer)"
                iifname = VPC_INTERFACE
            else:
                names += f": {source} only"
            v4, v6 = sources[source]
            for family, cidrs in (("ip", v4), ("ip6", v6)):
                if cidrs:
                    out.append(HostRule(names, protocol, numbers, family, tuple(cidrs), iifname))
    return out


def known_dcs(topology: Topology) -> list[DcAddresses]:
    """The data centres whose addresses are known, in name order (a stable rendering; fail2ban
    never bans their addresses)."""
    return [topology.dcs[dc] for dc in sorted(topology.dcs)]


def steps(ctx: HostContext) -> list[Step]:
    rules = ctx.file(
        RULES,
        mode="0640",
        table=TABLE,
        ban_set4=BAN_SET4,
        ban_set6=BAN_SET6,
        rules=host_rules(ctx.config),
    )
    conf = ctx.file(CONF, mode="0755")
    return [
        rules,
        conf,
        script_step(
            LOAD_STEP,
            f"""nft -c -f {CONF}
want=$(cat {CONF} {RULES} | sha256sum | cut -d' ' -f1)
if nft list table inet {TABLE} >/dev/null 2>&1 && [ "$(cat {STAMP} 2>/dev/null)" = "$want" ]; then
  exit 0
fi
nft -f {CONF}
echo "$want" > {STAMP}
echo "{CHANGED_MARK} nftables {TABLE} loaded"
""",
            watch=(rules, conf),
            after=("base.state-dir",),
        ),
        script_step("firewall.boot", start_at_boot("nftables"), after=(LOAD_STEP,)),
    ]
