"""Config: every bad value fails before any resource, with a message naming the key."""

from __future__ import annotations

from typing import Any

import pulumi
import pytest

from cluster.config import (
    DEFAULT_VPC_SUBNETS,
    IP_SHARING,
    KEYS,
    VPC_REGIONS,
    ConfigError,
    StackConfig,
    load_config,
)
from cluster.pulumi import config as pulumi_config
from cluster.stackfiles import read_stack_config

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHm2X0Y5mC1n0Xh3bq3wG5c6l4Qh0dC9GmN8m4b2m5Xy a@b"


def good(**changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "domain": "example.com",
        "sshKeys": [KEY],
        "adminCidrs": ["203.0.113.7/32"],
        "peerStack": "dc2",
    }
    raw.update(changes)
    return {k: v for k, v in raw.items() if v is not None}


BAD_INPUTS = [
    ("region", good(region="mars-north-1")),
    ("adminCidrs", good(adminCidrs=["300.1.2.3/32"])),
    ("adminCidrs", good(adminCidrs=["10.0.0.1/8"])),  # host bits set: not a network
    ("adminCidrs", good(adminCidrs=[])),
    ("volumeSizeGb", good(volumeSizeGb=9)),
    ("volumeSizeGb", good(volumeSizeGb="eighty")),
    ("sshKeys", good(sshKeys=None)),
    ("sshKeys", good(sshKeys=[])),
    ("sshKeys", good(sshKeys=["not a key"])),
    ("activeDc", good(activeDc="dc3")),
    ("domain", good(domain="exa mple..com")),
    ("domain", good(domain=None)),
    ("linodeSecondaryDns", good(linodeSecondaryDns="yes")),
    ("imapPlaintext", good(imapPlaintext="maybe")),
    ("dnssec", good(dnssec="yes")),
    ("activeDC", good(activeDC="dc2")),  # a typo is an unknown key, not silently ignored
    ("letsencryptEmail", good(tlsMode="letsencrypt")),
    ("letsencryptEmail", good(tlsMode="letsencrypt", letsencryptEmail="not-an-email")),
    ("heartbeatDeadtimeMs", good(heartbeatKeepaliveMs=600, heartbeatDeadtimeMs=1000)),
    ("instanceType", good(instanceType="huge")),
    ("messageSizeLimitMb", good(messageSizeLimitMb="10.5")),
    ("tlsMode", good(tlsMode="acme")),
    ("sharedIpMethod", good(sharedIpMethod="vrrp")),
    ("peerStack", good(peerStack="no spaces/allowed here/x/y")),
    ("dnsTtl", good(dnsTtl=5)),
    ("meshCidr", good(meshCidr="10.199.0.1/24")),  # host bits set
    ("meshCidr", good(meshCidr="8.8.8.0/24")),  # public: mesh traffic must never look public
    ("meshCidr", good(meshCidr="10.0.0.0/30")),  # too small for four nodes
    ("meshCidr", good(meshCidr="192.168.200.0/24")),  # Linode's private range
    ("meshCidr", good(meshCidr="fd00::/64")),  # IPv4 only (the inner network)
    ("metricsCidrs", good(metricsCidrs=["prometheus.example.com"])),  # a name, not a CIDR
    ("metricsCidrs", good(metricsCidrs=["2001:db8::1/48"])),  # host bits set
    ("metricsCidrs", good(metricsCidrs="203.0.113.0/24")),  # not a list
    ("vpcSubnet", good(vpcSubnet="10.0.1.1/24")),  # host bits set
    ("vpcSubnet", good(vpcSubnet="8.8.8.0/24")),  # public
    ("vpcSubnet", good(vpcSubnet="10.0.1.0/29")),  # no room for the nodes' hosts 11 and 12
    ("vpcSubnet", good(vpcSubnet="192.168.130.0/24")),  # Linode's private range
    ("vpcSubnet", good(vpcSubnet="198.18.1.0/24")),  # the lab's range: not RFC 1918 (Linode)
    ("vpcSubnet", good(vpcSubnet="10.199.0.0/16")),  # overlaps the default meshCidr
    ("region", good(region="us-east")),  # Newark: BGP, but no VPC
    ("dmarcPolicy", good(dmarcPolicy="strict")),
    ("mtaStsMode", good(mtaStsMode="on")),
    ("postmaster", good(postmaster="postmaster at example.com")),
    ("heartbeatKeepaliveMs", good(heartbeatKeepaliveMs=10)),
    ("bgpHoldTimeS", good(bgpHoldTimeS=2)),  # RFC 4271: 0 or at least 3
    ("bgpKeepaliveS", good(bgpKeepaliveS=0)),
    ("provision", good(provision="sometimes")),
    ("banMaxRetry", good(banMaxRetry=1)),  # one typo would ban a user
    ("banFindTimeSeconds", good(banFindTimeSeconds=10)),
    ("banTimeSeconds", good(banTimeSeconds=10)),
    ("submissionRateLimitPerHour", good(submissionRateLimitPerHour=0)),
    ("spamJunkScore", good(spamJunkScore="high")),
    ("spamJunkScore", good(spamJunkScore="nan")),
    ("spamRejectScore", good(spamRejectScore=0)),
    # Reject at or under the Junk score: nothing would ever be filed into Junk.
    ("spamRejectScore", good(spamJunkScore=8, spamRejectScore=8)),
    ("alertEmail", good(alertEmail=["ops at example.com"])),
    ("alertWebhook", good(alertWebhook="ftp://hooks.example.com/x")),
    ("backupRepository", good(backupRepository="/srv/restic")),  # not S3
    ("backupIntervalHours", good(backupIntervalHours=25)),
    ("backupKeepHourly", good(backupKeepHourly=-1)),
    ("backupKeepDaily", good(backupKeepDaily="many")),
    ("backupKeepMonthly", good(backupKeepMonthly=-1)),
]


@pytest.mark.parametrize(("key", "raw"), BAD_INPUTS, ids=[f"{k}-{i}" for i, (k, _) in
                                                          enumerate(BAD_INPUTS)])  # fmt: skip
def test_bad_input_names_the_key(key: str, raw: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as err:
        pulumi_config.load(raw, "dc1")
    assert f"mailcluster:{key}:" in str(err.value)


def test_every_key_has_a_bad_input() -> None:
    # From the product's own table: a key added without a validator test fails here.
    assert set(KEYS) - {k for k, _ in BAD_INPUTS} == set()


def test_standby_without_peer_stack_names_peer_stack() -> None:
    with pytest.raises(ConfigError, match="mailcluster:peerStack:"):
        pulumi_config.load(good(peerStack=None), "dc2")


def test_good_config_loads_with_defaults() -> None:
    cfg = pulumi_config.load(good(), "dc2")
    assert isinstance(cfg, StackConfig)
    assert (cfg.dc, cfg.region, cfg.volume_size_gb, cfg.active_dc) == ("dc2", "us-ord", 80,
                                                                       "dc1")  # fmt: skip
    assert cfg.mesh_cidr == "10.199.0.0/24"
    assert cfg.vpc_subnet == DEFAULT_VPC_SUBNETS["dc2"] != DEFAULT_VPC_SUBNETS["dc1"]
    assert cfg.metrics_cidrs == ()  # metrics off


def test_spam_scores_default_to_rspamds_and_take_decimals() -> None:
    cfg = pulumi_config.load(good(), "dc1")
    assert (cfg.spam_junk_score, cfg.spam_reject_score) == (6.0, 15.0)
    cfg = pulumi_config.load(good(spamJunkScore="5.5", spamRejectScore=12), "dc1")
    assert (cfg.spam_junk_score, cfg.spam_reject_score) == (5.5, 12.0)
    with pytest.raises(ConfigError, match=r"spamRejectScore: must be above spamJunkScore \(9\)"):
        pulumi_config.load(good(spamJunkScore=9, spamRejectScore=7), "dc1")


def test_metrics_cidrs_take_both_families_and_may_be_empty() -> None:
    cfg = pulumi_config.load(good(metricsCidrs=["203.0.113.9/32", "2001:db8:9::/64"]), "dc1")
    assert cfg.metrics_cidrs == ("203.0.113.9/32", "2001:db8:9::/64")
    assert pulumi_config.load(good(metricsCidrs=[]), "dc1").metrics_cidrs == ()
    with pytest.raises(ConfigError, match=r"mailcluster:metricsCidrs: '10\.0\.0\.1/8' is not a"):
        pulumi_config.load(good(metricsCidrs=["10.0.0.1/8"]), "dc1")


@pytest.mark.parametrize("stack", ["dc1", "dc2"])
def test_committed_stack_files_are_valid(stack: str) -> None:
    cfg = pulumi_config.load(read_stack_config(stack), stack)
    assert cfg.dc == stack


def _with_runtime_config(values: dict[str, str], secret: list[str] | None = None) -> None:
    pulumi.runtime.set_all_config(values, secret or [])


def test_raw_config_reads_runtime_keys_and_drops_other_namespaces() -> None:
    _with_runtime_config(
        {
            "mailcluster:domain": "example.org",
            "mailcluster:config:region": "eu-central",  # the older engine's spelling
            "mailcluster:sshPrivateKey": "not-a-real-key",
            "linode:token": "abc",
        },
        ["mailcluster:sshPrivateKey", "linode:token"],
    )
    try:
        assert pulumi_config.raw_config() == {"domain": "example.org", "region": "eu-central"}
    finally:
        _with_runtime_config({})


def test_unknown_key_in_runtime_config_is_rejected() -> None:
    raw = {f"mailcluster:{k}": v if isinstance(v, str) else str(v).replace("'", '"')
           for k, v in good().items()}  # fmt: skip
    raw["mailcluster:volumeSize"] = "100"
    _with_runtime_config(raw)
    try:
        with pytest.raises(ConfigError, match="mailcluster:volumeSize: unknown key"):
            pulumi_config.load(stack="dc1")
    finally:
        _with_runtime_config({})


def test_json_text_lists_from_the_engine_are_accepted() -> None:
    raw = {
        "mailcluster:domain": "example.com",
        "mailcluster:sshKeys": f'["{KEY}"]',
        "mailcluster:adminCidrs": '["203.0.113.0/24", "2001:db8::/32"]',
        "mailcluster:volumeSizeGb": "120",
        "mailcluster:imapPlaintext": "true",
    }
    _with_runtime_config(raw)
    try:
        cfg = pulumi_config.load(stack="dc1")
    finally:
        _with_runtime_config({})
    assert cfg.admin_cidrs == ("203.0.113.0/24", "2001:db8::/32")
    assert cfg.volume_size_gb == 120 and cfg.imap_plaintext is True


@pytest.mark.parametrize(
    ("region", "method"),
    [
        ("us-east", "arp"),  # Newark is BGP-only
        ("eu-central", "arp"),
        ("us-southeast", "bgp"),  # Atlanta: no documented IP sharing
        ("ap-northeast", "arp"),  # Tokyo: "undergoing network upgrades" (was ARP-legacy)
        ("se-sto", "bgp"),  # newer region, not in Linode's table
    ],
)
def test_shared_ip_method_must_be_what_the_region_supports(region: str, method: str) -> None:
    with pytest.raises(ConfigError) as err:
        pulumi_config.load(good(region=region, sharedIpMethod=method), "dc1")
    message = str(err.value)
    assert "mailcluster:sharedIpMethod:" in message and region in message
    assert "us-east (bgp)" in message  # says what is allowed


def test_default_regions_share_ips_by_bgp_and_have_vpcs() -> None:
    regions = set()
    for dc in ("dc1", "dc2"):
        cfg = pulumi_config.load(good(), dc)
        assert IP_SHARING[cfg.region] == cfg.shared_ip_method == "bgp"
        assert cfg.region in VPC_REGIONS
        regions.add(cfg.region)
    assert len(regions) == 2  # two data centres


def test_a_region_without_vpcs_is_refused_naming_the_key_and_the_choices() -> None:
    with pytest.raises(ConfigError) as err:
        pulumi_config.load(good(region="us-east"), "dc1")
    message = str(err.value)
    assert "mailcluster:region: Linode documents no VPC in region 'us-east'" in message
    # What has both VPCs and BGP sharing, by the two cited tables.
    assert "fr-par, us-iad, us-ord" in message
    assert "sharedIpMethod" not in message  # Newark does share by BGP


def test_both_linode_problems_are_reported_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        pulumi_config.load(good(region="eu-central", sharedIpMethod="arp",
                                vpcSubnet="198.18.5.0/24"), "dc1")  # fmt: skip
    lines = str(err.value).splitlines()[1:]
    keys = [line.split(":")[1] for line in lines]
    assert keys == ["sharedIpMethod", "region", "vpcSubnet"], lines


def test_the_vpc_subnet_is_the_data_centres_and_checked_only_for_linode_against_rfc1918() -> None:
    raw = good(vpcSubnet="172.20.0.0/16")
    assert pulumi_config.load(raw, "dc1").vpc_subnet == "172.20.0.0/16"
    # The lab keeps its addresses in benchmark space: valid config, refused only for Linode.
    assert load_config(good(vpcSubnet="198.18.1.0/24"), "dc1").vpc_subnet == "198.18.1.0/24"
    with pytest.raises(ConfigError, match=r"mailcluster:vpcSubnet: 198\.18\.1\.0/24 is not in"):
        pulumi_config.load(good(vpcSubnet="198.18.1.0/24"), "dc1")


def test_the_lab_override_stays_valid() -> None:
    # The lab is not a Linode region: its overrides are checked by load_config only. It routes
    # the shared IP by BGP, as Linode does, and takes arp when asked.
    from cluster.lab.model import lab_config

    assert lab_config("dc1").shared_ip_method == "bgp"
    assert lab_config("dc1", {"sharedIpMethod": "arp"}).shared_ip_method == "arp"
