"""The port table (cluster/ports.py) and the two firewalls made from it: the Linode Cloud
Firewall (cluster/pulumi/datacentre.py) and the nftables host firewall (cluster/services/
firewall.py) admit the same ports from the same sources, per address family."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any

import pytest

from cluster import ports
from cluster.config import ConfigError, StackConfig, load_config
from cluster.hostplan import build_host_plan
from cluster.lab.addresses import lab_dc_addresses
from cluster.lab.model import LAB_SUBMISSION_LIMIT, lab_config, lab_topology
from cluster.material import generate
from cluster.pulumi.datacentre import _inbounds, firewall_sources, inbound_rules
from cluster.services import firewall, postfix, ratelimit
from cluster.stackfiles import read_stack_config
from cluster.topology import SLOTS, VPC_INTERFACE, Topology

ROOT = Path(__file__).resolve().parents[2]
PUBLIC_TCP = {25, 53, 80, 443, 465, 587, 993, 4190}
INTERNAL = {("tcp", 3306), ("tcp", 12345), ("tcp", 6379), ("udp", 694)}
# Over the VPC as well as the mesh: all but dsync and Valkey's replication, which are plain TCP
# and so mesh-only.
ON_VPC = INTERNAL - {("tcp", 12345), ("tcp", 6379)}
EXPORTERS = {("tcp", 9100), ("tcp", 9104), ("tcp", 9154)}
Entry = tuple[str, str, int, str]  # (family, protocol, port, source CIDR or "any")


def cloud_entries(config: StackConfig) -> set[Entry]:
    out: set[Entry] = set()
    for rule in _inbounds(config, firewall_sources(config)):
        if rule.protocol == "ICMP":
            continue
        for port in (int(p) for p in str(rule.ports).split(",")):
            for family, cidrs in (("ip", rule.ipv4s or []), ("ip6", rule.ipv6s or [])):
                for cidr in cidrs:
                    source = "any" if cidr in ("0.0.0.0/0", "::/0") else cidr
                    out.add((family, rule.protocol.lower(), port, source))
    return out


def host_entries(rules: list[firewall.HostRule]) -> set[Entry]:
    out: set[Entry] = set()
    for rule in rules:
        if rule.iifname == ports.MESH_INTERFACE:
            continue  # the mesh interface: traffic the cloud firewall saw as MESH_PORT
        for port in rule.ports:
            if rule.family is None:
                out |= {("ip", rule.protocol, port, "any"), ("ip6", rule.protocol, port, "any")}
            else:
                out |= {(rule.family, rule.protocol, port, cidr) for cidr in rule.saddrs}
    return out


@pytest.fixture(params=[(False, True), (True, True), (False, False)],
                ids=["default", "imapPlaintext", "metricsOff"])  # fmt: skip
def config(request: pytest.FixtureRequest) -> StackConfig:
    imap, metrics = request.param
    sets: dict[str, Any] = {"imapPlaintext": imap}
    if not metrics:
        sets["metricsCidrs"] = []
    return lab_config("dc1", sets)


def test_cloud_and_host_firewalls_agree_per_port_source_and_family(config: StackConfig) -> None:
    cloud = cloud_entries(config)
    host = host_entries(firewall.host_rules(config))
    assert cloud == host, {"cloud only": cloud - host, "host only": host - cloud}
    assert (("ip", "tcp", 143, "any") in cloud) == config.imap_plaintext


def test_the_public_set_and_who_may_reach_the_rest(config: StackConfig) -> None:
    entries = cloud_entries(config)
    for family in ("ip", "ip6"):
        world = {(p, n) for f, p, n, s in entries if f == family and s == "any"}
        # The mesh port too: WireGuard answers only a packet made with a cluster key.
        expected = {("tcp", n) for n in PUBLIC_TCP} | {("udp", 53), ("udp", ports.MESH_PORT)}
        if config.imap_plaintext:
            expected.add(("tcp", 143))
        assert world == expected, family
    ssh = {s for f, p, n, s in entries if n == 22}
    assert ssh == set(config.admin_cidrs)
    # Internal ports: only the data centre's VPC subnet (the DC peer); no public, shared or
    # IPv6 address, so nothing internal is reachable from the internet even from a node's
    # address. The subnet holds exactly this data centre's nodes' private addresses.
    internal_sources = {s for f, p, n, s in entries if (p, n) in INTERNAL}
    assert internal_sources == {config.vpc_subnet}
    subnet = ipaddress.IPv4Network(config.vpc_subnet)
    dcs = {dc: lab_dc_addresses(dc) for dc in ("dc1", "dc2")}
    for dc, addresses in dcs.items():
        for slot in SLOTS:
            inside = ipaddress.IPv4Address(addresses.nodes[slot].private_ipv4) in subnet
            assert inside == (dc == config.dc), (dc, slot)
            assert ipaddress.IPv4Address(addresses.nodes[slot].public_ipv4) not in subnet
    assert not {e for e in entries if (e[1], e[2]) in INTERNAL and e[0] == "ip6"}
    # The exporters: from metricsCidrs (both families), and not at all without them.
    exporters = {s for f, p, n, s in entries if (p, n) in EXPORTERS}
    assert exporters == set(config.metrics_cidrs)
    for family in ("ip", "ip6"):
        on = {(p, n) for f, p, n, s in entries if f == family and (p, n) in EXPORTERS}
        assert on == (EXPORTERS if config.metrics_cidrs else set()), family


def test_managesieve_is_public_like_imaps(config: StackConfig) -> None:
    rule = next(r for r in ports.port_table(config) if r.port == 4190)
    assert (rule.protocol, rule.source, rule.service) == ("tcp", ports.WORLD,
                                                          "ManageSieve (STARTTLS)")  # fmt: skip


def test_every_internal_port_and_web_sync_are_open_on_the_mesh_interface() -> None:
    config = lab_config("dc1")
    rules = firewall.host_rules(config)
    on_mesh = {(r.protocol, p) for r in rules if r.iifname == ports.MESH_INTERFACE
               for p in r.ports}  # fmt: skip
    assert on_mesh == INTERNAL | {("tcp", ports.SSH_PORT)}
    # The internal ports from the VPC subnet, only as they arrive on the VPC interface.
    on_vpc = {(r.protocol, p, r.saddrs) for r in rules if r.iifname == VPC_INTERFACE
              for p in r.ports}  # fmt: skip
    assert on_vpc == {(proto, port, (config.vpc_subnet,)) for proto, port in ON_VPC}
    # Web sync's ssh is the mesh's alone: the cloud firewall has no rule for it.
    assert [r.label for r in inbound_rules(config)] == [
        "world-tcp", "world-udp", "admin-tcp", "metrics-tcp", "cluster-tcp", "cluster-udp",
        "icmp"
    ]  # fmt: skip
    assert "metrics-tcp" not in [r.label for r in inbound_rules(
        lab_config("dc1", {"metricsCidrs": []}))]  # fmt: skip


def test_rendered_host_firewall_holds_every_rule_and_keeps_the_ban_sets() -> None:
    topo = lab_topology("dc1")
    secrets = generate(topo.domain, ["dc1", "dc2"], {dc: topo.certificate_names(dc)
                                                     for dc in ("dc1", "dc2")})  # fmt: skip
    plan = build_host_plan(topo, "dc2-svr2", secrets, "lab")
    text = next(f.content for f in plan.files if f.path == firewall.RULES)
    for rule in firewall.host_rules(topo.config):
        assert f"{rule.nft} accept\n" in text
    subnet = topo.config.vpc_subnet
    assert f'iifname "eth1" ip saddr {subnet} tcp dport 3306 accept\n' in text
    assert "policy drop;" in text
    # Declared and never flushed: a reload keeps the bans.
    assert f"set {firewall.BAN_SET4} {{ type ipv4_addr; flags timeout; }}" in text
    assert "flush set" not in text and "flush ruleset" not in text
    assert "ip saddr @banned4 drop\n" in text and "ip6 saddr @banned6 drop\n" in text
    assert "nd-neighbor-solicit" in text and "packet-too-big" in text
    assert text.index("@banned4 drop") < text.index("ct state established,related accept")
    load = plan.step(firewall.LOAD_STEP)
    assert "nft -c -f" in load.script
    assert load.script.index("nft -c -f") < load.script.index("nft -f /etc/nftables.conf")


def test_readme_security_table_is_generated_from_the_port_table() -> None:
    readme = (ROOT / "README.md").read_text()
    config = load_config(read_stack_config("dc1"), "dc1")
    assert ports.markdown(config) in readme, (
        "README's security table is stale: regenerate it with `python -m cluster.ports --markdown`"
    )


# -- config keys ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("key", "value"),
    [("banMaxRetry", "1"), ("banMaxRetry", "many"), ("banFindTimeSeconds", "10"),
     ("banTimeSeconds", str(31 * 86400)), ("submissionRateLimitPerHour", "0")],
)  # fmt: skip
def test_bad_ban_and_limit_keys_are_named(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"mailcluster:{key}: must"):
        lab_config("dc1", {key: value})


def test_defaults_are_sane() -> None:
    # What a user's stack gets (the lab raises the sending limit for its steady senders).
    config = load_config(read_stack_config("dc1"), "dc1")
    assert config.submission_rate_limit_per_hour == 200
    assert (config.ban_max_retry, config.ban_find_time_s, config.ban_time_s) == (5, 600, 3600)
    assert lab_config("dc1").submission_rate_limit_per_hour == LAB_SUBMISSION_LIMIT


# -- the sending limit ---------------------------------------------------------------------------
def test_submission_asks_the_rate_limit_at_data() -> None:
    """policyd-rate-limit counts a message's recipients at DATA (its count_mode 1): the policy
    is in submission's smtpd_data_restrictions, and nowhere at RCPT."""
    options = dict(o.split("=", 1) for o in postfix.SUBMISSION_OPTIONS)
    chain = options["smtpd_data_restrictions"].split(",")
    policy = chain.index("check_policy_service")
    assert chain[policy + 1] == ratelimit.POLICY_SERVICE
    assert ratelimit.POLICY_SERVICE not in options["smtpd_recipient_restrictions"]
    conf = (ROOT / "templates/etc/policyd-rate-limit.yaml.j2").read_text()
    assert "\ncount_mode: 1\n" in conf
    # Port 25 (postscreen/smtpd from main.cf) is not limited: only authenticated submission.
    main_cf = (ROOT / "templates/etc/postfix/main.cf.j2").read_text()
    assert "ratelimit" not in main_cf and str(ratelimit.POLICY_SERVICE) not in main_cf


def test_a_full_mailbox_is_refused_at_rcpt_on_both_ports() -> None:
    """Dovecot's quota-status is asked at RCPT by port 25's smtpd (main.cf) and by submission,
    before any permit (a full mailbox is refused whoever sends), and fails open."""
    options = dict(o.split("=", 1) for o in postfix.SUBMISSION_OPTIONS)
    chain = options["smtpd_recipient_restrictions"].split(",")
    assert chain[chain.index("check_policy_service") + 1] == postfix.QUOTA_POLICY
    assert chain.index(postfix.QUOTA_POLICY) < chain.index("permit_sasl_authenticated")
    assert postfix.QUOTA_POLICY == "unix:private/quota-status"
    topo: Topology = lab_topology("dc1")
    secrets = generate(topo.domain, ["dc1", "dc2"], {dc: topo.certificate_names(dc)
                                                     for dc in ("dc1", "dc2")})  # fmt: skip
    plan = build_host_plan(topo, "dc1-svr1", secrets, "lab")
    main_cf = next(f.content for f in plan.files if f.path == "/etc/postfix/main.cf")
    rcpt = re.search(r"^smtpd_recipient_restrictions = (.*?)\n(?!\s)", main_cf, re.M | re.S)
    assert rcpt, main_cf
    policy = "check_policy_service { unix:private/quota-status, default_action=DUNNO }"
    assert policy in rcpt.group(1)
    assert rcpt.group(1).index(policy) < rcpt.group(1).index("permit_mynetworks")


def test_rate_limit_config_carries_the_key_and_a_clear_4xx() -> None:
    topo: Topology = lab_topology("dc1", {"submissionRateLimitPerHour": "37"})
    secrets = generate(topo.domain, ["dc1", "dc2"], {dc: topo.certificate_names(dc)
                                                     for dc in ("dc1", "dc2")})  # fmt: skip
    plan = build_host_plan(topo, "dc1-svr1", secrets, "lab")
    text = next(f.content for f in plan.files if f.path == ratelimit.CONF)
    assert "    - [37, 3600]\n" in text
    assert 'SOCKET: ["127.0.0.1", 8552]' in text
    action = re.search(r'^fail_action: "(.*)"$', text, re.M)
    assert action and action.group(1).startswith("defer_if_permit ")
    assert ratelimit.LOG_TAG in action.group(1) and "37 recipients per hour" in action.group(1)
