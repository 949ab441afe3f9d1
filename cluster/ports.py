"""The cluster's one port table: every port a node accepts from the network, and from whom.

Both firewalls are generated from it, so they cannot disagree:
- the Linode Cloud Firewall (``cluster/pulumi/datacentre.py``, ``inbound_rules``);
- the nftables host firewall on every node (``cluster/services/firewall.py``).
A unit test (tests/unit/test_firewall_agreement.py) resolves both for the same addresses and
compares them port by port and family by family; README's security section is printed from it
(``python -m cluster.ports --markdown``).

Who may connect (``Rule.source``):
- ``world``: anyone (public mail, web and DNS; and the WireGuard mesh port, which answers only
  a packet made with one of the cluster's keys, so its rule names no address and a node with
  new addresses, rebuilt or in a data centre deployed later, is a peer at once);
- ``admin``: the stack's ``adminCidrs`` (SSH);
- ``cluster``: internal services. The other data centre reaches them only through the mesh (the
  host firewall admits them on ``MESH_INTERFACE``); the DC peer over the data centre's VPC
  subnet (``vpcSubnet``, on ``topology.VPC_INTERFACE``), which both firewalls name: the program
  chose it before any node existed, so neither firewall waits for a node's address. Never a
  public or shared address: nothing internal is reachable from the internet, even from a
  node's public address.
- ``metrics``: the stack's ``metricsCidrs`` (the Prometheus exporters, services/metrics.py);
  with none configured the exporters do not run and have no rule at all.
- ``mesh``: only inside the mesh (web sync's ssh to the unprivileged ``websync``). The cloud
  firewall never sees that traffic (it arrives as ``MESH_PORT``), so it has no rule for it.

Loopback-only ports (rspamd 11332-11334, BIND's statistics 8053, the rate-limit policy 8552,
postsrsd 10001-10002 and the forwarding pass 10027) are in no rule: the host firewall accepts
``lo`` and nothing else reaches them.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass

from cluster.config import StackConfig
from cluster.topology import DcAddresses

MESH_PORT = 51820  # WireGuard, UDP: open, it authenticates every packet itself
MESH_INTERFACE = "wgmesh"  # the WireGuard interface on every node: internal services live behind it

WORLD = "world"
ADMIN = "admin"
CLUSTER = "cluster"
MESH = "mesh"
METRICS = "metrics"
SOURCES = (WORLD, ADMIN, METRICS, CLUSTER, MESH)
SOURCE_DOCS = {
    WORLD: "anyone",
    ADMIN: "`adminCidrs` only",
    METRICS: "`metricsCidrs` only",
    CLUSTER: "the mesh interface, and the data centre's VPC subnet (the DC peer)",
    MESH: "the mesh interface only",
}
WORLD_CIDRS = (["0.0.0.0/0"], ["::/0"])

SSH_PORT = 22
SMTP_PORT = 25  # the MX: what DANE (services/dane.py) protects
HTTPS_PORT = 443
SUBMISSIONS_PORT = 465  # implicit TLS (RFC 8314)
SUBMISSION_PORT = 587  # STARTTLS (RFC 6409)
IMAPS_PORT = 993
IMAP_PLAINTEXT_PORT = 143
MARIADB_PORT = 3306
DOVEADM_PORT = 12345
MANAGESIEVE_PORT = 4190  # RFC 5804's port
VALKEY_PORT = 6379  # rspamd's Bayes store (services/bayes.py)
# Loopback only (services/srs.py): postsrsd's forward and reverse maps (Debian's defaults), and
# the listener forwarded copies are handed to for their second pass.
SRS_FORWARD_PORT = 10001
SRS_REVERSE_PORT = 10002
SRS_REINJECT_PORT = 10027
BIND_STATS_PORT = 8053  # BIND's statistics channel, JSON (mailgraph's counters, domains' status)
HEARTBEAT_PORT = 694
# Debian's exporters' own default ports (and Prometheus' port allocation wiki).
NODE_EXPORTER_PORT = 9100
MYSQLD_EXPORTER_PORT = 9104
POSTFIX_EXPORTER_PORT = 9154


@dataclass(frozen=True)
class Rule:
    """One port a node accepts, from ``source`` (one of ``SOURCES``), over both families."""

    service: str
    protocol: str  # "tcp" or "udp"
    port: int
    source: str


# Always open, in this order (the README's order).
_ALWAYS: tuple[Rule, ...] = (
    Rule("SMTP (MX, postscreen)", "tcp", SMTP_PORT, WORLD),
    Rule("DNS (BIND, authoritative)", "tcp", 53, WORLD),
    Rule("DNS (BIND, authoritative)", "udp", 53, WORLD),
    Rule("HTTP (ACME, redirect to HTTPS)", "tcp", 80, WORLD),
    Rule("HTTPS (webmail, Postfix Admin, MTA-STS, autoconfiguration)", "tcp", HTTPS_PORT, WORLD),
    Rule("submissions (implicit TLS)", "tcp", SUBMISSIONS_PORT, WORLD),
    Rule("submission (STARTTLS)", "tcp", SUBMISSION_PORT, WORLD),
    Rule("IMAPS", "tcp", IMAPS_PORT, WORLD),
    Rule("ManageSieve (STARTTLS)", "tcp", MANAGESIEVE_PORT, WORLD),
    Rule("SSH", "tcp", SSH_PORT, ADMIN),
    Rule("WireGuard mesh", "udp", MESH_PORT, WORLD),
    Rule("Prometheus node exporter", "tcp", NODE_EXPORTER_PORT, METRICS),
    Rule("Prometheus mysqld exporter", "tcp", MYSQLD_EXPORTER_PORT, METRICS),
    Rule("Prometheus postfix exporter", "tcp", POSTFIX_EXPORTER_PORT, METRICS),
    Rule("MariaDB replication", "tcp", MARIADB_PORT, CLUSTER),
    Rule("Dovecot replication (doveadm/dsync)", "tcp", DOVEADM_PORT, MESH),
    Rule("Valkey replication (rspamd's Bayes)", "tcp", VALKEY_PORT, MESH),
    Rule("Heartbeat (ucast)", "udp", HEARTBEAT_PORT, CLUSTER),
    Rule("web sync (ssh, forced rrsync to websync)", "tcp", SSH_PORT, MESH),
)

_IMAPS = next(r for r in _ALWAYS if r.port == IMAPS_PORT)


def port_table(config: StackConfig) -> tuple[Rule, ...]:
    """Every rule for this stack's config (``imapPlaintext`` adds 143 after IMAPS)."""
    rules = [r for r in _ALWAYS if r.source != METRICS or config.metrics_cidrs]
    if config.imap_plaintext:
        rules.insert(rules.index(_IMAPS) + 1, Rule("IMAP (STARTTLS)", "tcp", 143, WORLD))
    return tuple(rules)


def ports_by(rules: Iterable[Rule], source: str, protocol: str) -> tuple[int, ...]:
    """The sorted ports of ``rules`` open to ``source`` over ``protocol``."""
    return tuple(sorted({r.port for r in rules if r.source == source and r.protocol == protocol}))


def host_cidr(address: str) -> str:
    address = address.split("/")[0]
    return f"{address}/128" if ":" in address else f"{address}/32"


def split_cidrs(cidrs: Iterable[str]) -> tuple[list[str], list[str]]:
    cidrs = list(cidrs)
    return [c for c in cidrs if ":" not in c], [c for c in cidrs if ":" in c]


def node_cidrs(dcs: Iterable[DcAddresses]) -> tuple[list[str], list[str]]:
    """Every node's own addresses (public and private IPv4, public IPv6) as host CIDRs."""
    v4: list[str] = []
    v6: list[str] = []
    for dc in dcs:
        for node in (dc.nodes[slot] for slot in sorted(dc.nodes)):
            v4 += [host_cidr(node.public_ipv4), host_cidr(node.private_ipv4)]
            if node.public_ipv6:
                v6.append(host_cidr(node.public_ipv6))
    return list(dict.fromkeys(v4)), list(dict.fromkeys(v6))


def cluster_cidrs(dcs: Iterable[DcAddresses]) -> tuple[list[str], list[str]]:
    """Every address the cluster itself may come from: the nodes' and the shared addresses
    (fail2ban never bans them; no firewall rule is made from them)."""
    dcs = list(dcs)
    nodes4, nodes6 = node_cidrs(dcs)
    v4 = [host_cidr(dc.shared_ipv4) for dc in dcs] + nodes4
    v6 = [host_cidr(dc.shared_ipv6) for dc in dcs if dc.shared_ipv6] + nodes6
    return list(dict.fromkeys(v4)), list(dict.fromkeys(v6))


def source_cidrs(config: StackConfig) -> dict[str, tuple[list[str], list[str]]]:
    """Each source as (IPv4 CIDRs, IPv6 CIDRs): config alone, never a node's address, so both
    firewalls are whole before any node exists."""
    return {
        WORLD: (list(WORLD_CIDRS[0]), list(WORLD_CIDRS[1])),
        ADMIN: split_cidrs(config.admin_cidrs),
        METRICS: split_cidrs(config.metrics_cidrs),
        # The VPC is the account's and the data centre's alone: only this stack's two nodes
        # have an interface in it (the other data centre's VPC is another region's).
        CLUSTER: ([config.vpc_subnet], []),
        MESH: ([], []),  # on the mesh interface: no address rule
    }


def markdown(config: StackConfig) -> str:
    """README's table: every open port, per address family, and who may reach it."""
    lines = [
        "| port | protocol | service | admitted over IPv4 | over IPv6 | who may connect |",
        "|---|---|---|---|---|---|",
    ]
    for rule in port_table(config):
        # Internal services: the mesh's inner network and the VPC subnet are IPv4.
        v6 = "no" if rule.source in (CLUSTER, MESH) else "yes"
        lines.append(
            f"| {rule.port} | {rule.protocol} | {rule.service} | yes | {v6} "
            f"| {SOURCE_DOCS[rule.source]} |"
        )
    if not config.imap_plaintext:
        lines.append("| 143 | tcp | IMAP (STARTTLS) | with `imapPlaintext` | same | anyone |")
    if not config.metrics_cidrs:
        for rule in (r for r in _ALWAYS if r.source == METRICS):
            lines.append(
                f"| {rule.port} | {rule.protocol} | {rule.service} | with `metricsCidrs` "
                f"| same | {SOURCE_DOCS[METRICS]} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    from cluster.stackfiles import read_stack_config

    if argv != ["--markdown"]:
        print("usage: python -m cluster.ports --markdown", file=sys.stderr)
        return 2
    from cluster.config import load_config

    print(markdown(load_config(read_stack_config("dc1"), "dc1")), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
