"""Typed, validated stack configuration.

Every key a stack may set is declared once in ``KEYS`` with its default and the rule it must
obey. ``load_config`` turns the raw key/value mapping (from ``pulumi.Config`` or the lab) into a
frozen ``StackConfig`` or raises one ``ConfigError`` that names every bad key and what is
allowed, before any resource is declared.

Secrets (``rootPassword``, ``sshPrivateKey``) are not part of ``StackConfig``: they stay Pulumi
secret Outputs and are read where they are used.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

DC_NAMES = ("dc1", "dc2")

# Linode core compute regions (GET /v4/regions, 2026). Which IP-sharing method each supports is
# ``IP_SHARING`` below; the lab (not a Linode region) uses "arp" whatever the region says.
LINODE_REGIONS = frozenset(
    {
        "ap-northeast", "ap-south", "ap-southeast", "ap-west", "au-mel", "br-gru",
        "ca-central", "de-fra-2", "es-mad", "eu-central", "eu-west", "fr-par", "gb-lon",
        "id-cgk", "in-bom-2", "in-maa", "it-mil", "jp-osa", "jp-tyo-3", "nl-ams", "se-sto",
        "sg-sin-2", "us-central", "us-east", "us-iad", "us-lax", "us-mia", "us-ord",
        "us-sea", "us-southeast", "us-west",
    }
)  # fmt: skip

# Both defaults have what the design needs (``check_linode_region``): BGP-based IP sharing
# (``IP_SHARING``: Washington and Chicago since the 2023-07 revision) and VPCs (``VPC_REGIONS``).
# Newark (us-east), the default until the VPC, probably has no VPC: see ``VPC_REGIONS``.
DEFAULT_REGIONS = {"dc1": "us-iad", "dc2": "us-ord"}

# How a shared IP can fail over in each region, from Linode's "Configure Failover on a Compute
# Instance" guide, table "IP Sharing Availability" (linode/docs,
# docs/products/compute/compute-instances/guides/failover/index.md). The revision of 2022-12-01
# (commit 0515cae1) lists BGP: Newark, Frankfurt, London, Mumbai, Singapore, Sydney; ARP-legacy:
# Dallas, Fremont, Tokyo; none: Atlanta, Toronto. The revision of 2023-07-05 (the newest stored)
# moves Dallas to BGP, adds Chicago (18), Washington (17) and Paris (19) as BGP, and marks
# Atlanta, Fremont, Tokyo and Toronto "undergoing network upgrades" (sharing may not be
# enabled; it returns as BGP). The newest revision wins; a region it does not list, or lists as
# upgrading, is unknown and refused rather than deployed with an address nobody can route.
IP_SHARING: dict[str, str] = {
    "us-east": "bgp",  # Newark, id 6
    "us-central": "bgp",  # Dallas, id 2 (ARP-legacy until the 2023-07 revision)
    "us-ord": "bgp",  # Chicago, id 18
    "us-iad": "bgp",  # Washington, id 17
    "eu-central": "bgp",  # Frankfurt, id 10
    "eu-west": "bgp",  # London, id 7
    "fr-par": "bgp",  # Paris, id 19
    "ap-west": "bgp",  # Mumbai, id 14
    "ap-south": "bgp",  # Singapore, id 9
    "ap-southeast": "bgp",  # Sydney, id 16
}
# Where Linode offers VPCs (node-to-node traffic inside a data centre runs on a VPC subnet, whose
# range the Cloud Firewall's internal rules name). Linode's VPC overview, "Availability"
# (linode/docs, docs/products/networking/vpc/_index.md, revision of 2024-05-16, commit cc09e9e7,
# the newest stored): Amsterdam, Chennai, Chicago, Jakarta, Los Angeles, Miami, Milan, Paris,
# Osaka, Sao Paulo, Seattle, Stockholm, Washington DC. Newark is not listed, and
# linode/terraform-provider-linode PR #1245 (2024-01-23) says "Linode's Newark region (us-east)
# does not support VPCs at this time, resulting in a 404". A region not listed is refused; check
# a region live with `linode.get_region_vpc_availability(id=...)` (pulumi_linode 6.8) before
# adding it here, with its source.
VPC_REGIONS = frozenset(
    {
        "nl-ams", "in-maa", "us-ord", "id-cgk", "us-lax", "us-mia", "it-mil", "fr-par",
        "jp-osa", "br-gru", "us-sea", "se-sto", "us-iad",
    }
)  # fmt: skip
SHARED_IP_METHODS = ("bgp", "arp")
TLS_MODES = ("selfsigned", "letsencrypt")
DMARC_POLICIES = ("none", "quarantine", "reject")
MTA_STS_MODES = ("none", "testing", "enforce")
MIN_VOLUME_GB = 10
# The WireGuard mesh's inner network (cluster/services/mesh.py). A private range that Linode
# does not use itself (its private addresses are 192.168.128.0/17; VPCs are whatever the
# account chose, often 10.0.0.0/8's low end): change it if it collides with a network of yours.
DEFAULT_MESH_CIDR = "10.199.0.0/24"
LINODE_PRIVATE_V4 = ipaddress.IPv4Network("192.168.128.0/17")
# Each data centre's VPC subnet (one VPC per stack). The program fixes its nodes' addresses in
# it (``topology.vpc_address``), so the Cloud Firewall can name it before any node exists. The
# two data centres' VPCs never meet (a VPC is one region's), but distinct ranges keep every
# node's private address unique in the cluster (grants, certificates, logs).
DEFAULT_VPC_SUBNETS = {"dc1": "10.0.1.0/24", "dc2": "10.0.2.0/24"}
# What a VPC subnet may be at Linode (API, POST /vpcs, ``subnets[].ipv4``): "The range must belong
# to a private address space as defined in RFC1918", prefix length 1-29, not overlapping
# 192.168.128.0/17 (techdocs.akamai.com/linode-api/reference/post-vpc).
RFC1918 = tuple(ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
MAX_VOLUME_GB = 10240

_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_DOMAIN_RE = re.compile(rf"^(?=.{{4,253}}$)({_LABEL}\.)+[a-z]{{2,63}}$")
_EMAIL_RE = re.compile(r"^[A-Za-z0-9._%+-]+@" + rf"({_LABEL}\.)+[a-z]{{2,63}}$")
_SSH_KEY_RE = re.compile(
    r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com)"
    r" [A-Za-z0-9+/]+={0,3}( .*)?$"
)
_STACK_REF_RE = re.compile(r"^([A-Za-z0-9_.-]+/){0,2}[A-Za-z0-9_.-]+$")
_INSTANCE_TYPE_RE = re.compile(r"^g[0-9]+-[a-z0-9-]+$")


def other_dc(dc: str) -> str:
    """The data centre that is not ``dc`` (there are two)."""
    return DC_NAMES[1] if dc == DC_NAMES[0] else DC_NAMES[0]


class ConfigError(ValueError):
    """One or more config keys are wrong; the message names each key and what is allowed."""


@dataclass(frozen=True)
class StackConfig:
    """The validated configuration of one stack (one data centre)."""

    dc: str
    active_dc: str
    domain: str
    region: str
    instance_type: str
    volume_size_gb: int
    ssh_keys: tuple[str, ...]
    admin_cidrs: tuple[str, ...]
    shared_ip_method: str
    peer_stack: str | None
    linode_secondary_dns: bool
    message_size_limit_mb: int
    imap_plaintext: bool
    tls_mode: str
    letsencrypt_email: str | None
    dns_ttl: int
    dnssec: bool
    dmarc_policy: str
    mta_sts_mode: str
    postmaster: str
    heartbeat_keepalive_ms: int
    heartbeat_deadtime_ms: int
    bgp_hold_time_s: int
    bgp_keepalive_s: int
    provision: bool
    ban_max_retry: int
    ban_find_time_s: int
    ban_time_s: int
    submission_rate_limit_per_hour: int
    spam_junk_score: float = 6.0
    spam_reject_score: float = 15.0
    mesh_cidr: str = DEFAULT_MESH_CIDR
    vpc_subnet: str = DEFAULT_VPC_SUBNETS["dc1"]
    metrics_cidrs: tuple[str, ...] = ()
    alert_emails: tuple[str, ...] = ()
    alert_webhook: str | None = None
    backup_repository: str = ""
    backup_interval_hours: int = 1
    backup_keep_hourly: int = 48
    backup_keep_daily: int = 30
    backup_keep_monthly: int = 12

    @property
    def peer_dc(self) -> str:
        return other_dc(self.dc)

    @property
    def is_active(self) -> bool:
        return self.dc == self.active_dc

    def with_values(self, **changes: Any) -> StackConfig:
        return replace(self, **changes)


# ---------------------------------------------------------------------------------------------
# Validators: each takes the raw value and returns the typed value or raises ValueError whose
# text says what is allowed. ``load_config`` prefixes the key name.


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ValueError("must be true or false")


def _as_int(lo: int, hi: int, unit: str = "") -> Callable[[Any], int]:
    def check(value: Any) -> int:
        try:
            number = int(str(value), 10)
        except ValueError:
            raise ValueError(f"must be a whole number from {lo} to {hi}{unit}") from None
        if not lo <= number <= hi:
            raise ValueError(f"must be from {lo} to {hi}{unit}, got {number}")
        return number

    return check


def _as_score(lo: float, hi: float) -> Callable[[Any], float]:
    """An rspamd score: a number (decimals allowed) from ``lo`` to ``hi``."""

    def check(value: Any) -> float:
        try:
            number = float(str(value))
        except ValueError:
            raise ValueError(f"must be a number from {lo:g} to {hi:g}") from None
        if not lo <= number <= hi:  # NaN fails this too
            raise ValueError(f"must be from {lo:g} to {hi:g}, got {value}")
        return number

    return check


def _one_of(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}; got {value!r}")
        return str(value)

    return check


def _as_list(value: Any) -> list[Any]:
    """Pulumi config holds lists as JSON text; the lab and tests may pass real lists."""
    if isinstance(value, list | tuple):
        return list(value)
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError("must be a list (in YAML, or JSON text)") from None
        if isinstance(parsed, list):
            return parsed
    raise ValueError("must be a list (in YAML, or JSON text)")


def _domain(value: Any) -> str:
    text = str(value).strip().lower().rstrip(".")
    if not _DOMAIN_RE.match(text):
        raise ValueError(f"must be a DNS domain like example.com; got {value!r}")
    return text


def _email(value: Any) -> str:
    text = str(value).strip()
    if not _EMAIL_RE.match(text):
        raise ValueError(f"must be an e-mail address like admin@example.com; got {value!r}")
    return text


def _region(value: Any) -> str:
    if value not in LINODE_REGIONS:
        raise ValueError(
            f"must be a Linode region such as us-east or eu-central; got {value!r} "
            f"(allowed: {', '.join(sorted(LINODE_REGIONS))})"
        )
    return str(value)


def _instance_type(value: Any) -> str:
    if not _INSTANCE_TYPE_RE.match(str(value)):
        raise ValueError(f"must be a Linode plan id like g6-standard-2; got {value!r}")
    return str(value)


def _ssh_keys(value: Any) -> tuple[str, ...]:
    keys = [str(k).strip() for k in _as_list(value)]
    if not keys:
        raise ValueError("needs at least one SSH public key (ssh-ed25519 AAAA... user@host)")
    for key in keys:
        if not _SSH_KEY_RE.match(key):
            raise ValueError(f"{key[:30]!r}... is not an OpenSSH public key line")
    return tuple(keys)


def _cidr_list(value: Any) -> tuple[str, ...]:
    """CIDRs of either family, host bits zero; may be empty."""
    out = []
    for item in _as_list(value):
        try:
            out.append(str(ipaddress.ip_network(str(item), strict=True)))
        except ValueError:
            raise ValueError(
                f"{item!r} is not a CIDR like 203.0.113.0/24 or 2001:db8::/48"
            ) from None
    return tuple(out)


def _cidrs(value: Any) -> tuple[str, ...]:
    out = _cidr_list(value)
    if not out:
        raise ValueError("needs at least one CIDR that may reach SSH, like 203.0.113.7/32")
    return out


def _stack_ref(value: Any) -> str | None:
    text = str(value).strip()
    if not text:
        return None
    if not _STACK_REF_RE.match(text):
        raise ValueError(f"must be a stack name like dc2 or org/mailcluster/dc2; got {value!r}")
    return text


def _mesh_cidr(value: Any) -> str:
    """An IPv4 private network (RFC 1918, or RFC 2544 benchmark space for the lab) from /16 to
    /29, host bits zero, outside Linode's private range."""
    allowed = "a private IPv4 network from /16 to /29 like 10.199.0.0/24"
    try:
        net = ipaddress.IPv4Network(str(value), strict=True)
    except ValueError:
        raise ValueError(f"must be {allowed}; got {value!r}") from None
    if not 16 <= net.prefixlen <= 29 or not net.is_private or net.overlaps(LINODE_PRIVATE_V4):
        raise ValueError(
            f"must be {allowed}, not overlapping Linode's private {LINODE_PRIVATE_V4}; "
            f"got {value!r}"
        )
    return str(net)


def _vpc_subnet(value: Any) -> str:
    """An IPv4 private network (RFC 1918 on Linode, ``check_linode_region``; RFC 2544 benchmark
    space for the lab) from /8 to /28, host bits zero, outside Linode's private range. /28 is
    the smallest that holds the nodes' fixed host numbers (``topology.VPC_HOSTS``, 11 and 12)
    clear of the last two addresses, which Linode keeps for itself."""
    allowed = "a private IPv4 network from /8 to /28 like 10.0.1.0/24"
    try:
        net = ipaddress.IPv4Network(str(value), strict=True)
    except ValueError:
        raise ValueError(f"must be {allowed}; got {value!r}") from None
    if not 8 <= net.prefixlen <= 28 or not net.is_private or net.overlaps(LINODE_PRIVATE_V4):
        raise ValueError(
            f"must be {allowed}, not overlapping Linode's private {LINODE_PRIVATE_V4}; "
            f"got {value!r}"
        )
    return str(net)


def _emails(value: Any) -> tuple[str, ...]:
    """A list of e-mail addresses; empty: the default (the postmaster)."""
    return tuple(_email(item) for item in _as_list(value))


_URL_RE = re.compile(r"^https?://[^\s/?#@]+(:[0-9]{1,5})?([/?#]\S*)?$", re.IGNORECASE)


def _webhook(value: Any) -> str | None:
    """An http or https URL (no user:password@ part: put a token in the path or query)."""
    text = str(value).strip()
    if not text:
        return None
    if not _URL_RE.match(text):
        raise ValueError(
            f"must be an http:// or https:// URL like https://hooks.example.com/alerts; "
            f"got {value!r}"
        )
    return text


# restic's S3 repository string: s3:http(s)://host[:port]/bucket[/prefix] (Linode Object
# Storage: s3:https://us-east-1.linodeobjects.com/my-bucket).
_BACKUP_REPO_RE = re.compile(
    r"^s3:https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?/[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[A-Za-z0-9._/-]*)?$"
)


def _backup_repository(value: Any) -> str:
    text = str(value).strip()
    if text and not _BACKUP_REPO_RE.match(text):
        raise ValueError(
            "must be restic's S3 repository like s3:https://us-east-1.linodeobjects.com/bucket "
            f"(or empty: the stack makes an Object Storage bucket); got {value!r}"
        )
    return text


@dataclass(frozen=True)
class Key:
    """One config key: its default (``None`` = required) and its validator."""

    attr: str
    default: Any
    check: Callable[[Any], Any]
    doc: str


KEYS: dict[str, Key] = {
    "activeDc": Key("active_dc", "dc1", _one_of(DC_NAMES),
                    "the data centre that serves mail; change it to fail over"),
    "domain": Key("domain", None, _domain, "the mail domain, e.g. example.com"),
    "region": Key("region", "", _region, "the Linode region of this stack's data centre"),
    "instanceType": Key("instance_type", "g6-standard-2", _instance_type, "Linode plan"),
    "volumeSizeGb": Key("volume_size_gb", 80, _as_int(MIN_VOLUME_GB, MAX_VOLUME_GB, " GB"),
                        "block storage for mail data, per node"),
    "sshKeys": Key("ssh_keys", None, _ssh_keys, "SSH public keys for root"),
    "adminCidrs": Key("admin_cidrs", None, _cidrs, "CIDRs allowed to reach SSH"),
    "sharedIpMethod": Key("shared_ip_method", "bgp", _one_of(SHARED_IP_METHODS),
                          "how the shared IP moves: bgp (BIRD announces it) or arp (IPaddr2)"),
    "peerStack": Key("peer_stack", "", _stack_ref, "the other data centre's stack"),
    "linodeSecondaryDns": Key("linode_secondary_dns", False, _as_bool,
                              "also serve the zone from Linode's DNS Manager as a secondary"),
    "messageSizeLimitMb": Key("message_size_limit_mb", 50, _as_int(1, 1024, " MB"),
                              "largest message Postfix accepts"),
    "imapPlaintext": Key("imap_plaintext", False, _as_bool, "also offer IMAP on 143"),
    "tlsMode": Key("tls_mode", "selfsigned", _one_of(TLS_MODES),
                   "selfsigned: cluster CA; letsencrypt: certbot"),
    "letsencryptEmail": Key("letsencrypt_email", "", lambda v: _email(v) if v else None,
                            "account e-mail for Let's Encrypt"),
    "dnsTtl": Key("dns_ttl", 300, _as_int(30, 86400, " s"), "TTL of every DNS record"),
    "dnssec": Key("dnssec", True, _as_bool,
                  "sign every zone the cluster serves, its own and the further domains' (DNSSEC)"),
    "dmarcPolicy": Key("dmarc_policy", "quarantine", _one_of(DMARC_POLICIES), "DMARC p="),
    "mtaStsMode": Key("mta_sts_mode", "testing", _one_of(MTA_STS_MODES), "MTA-STS mode"),
    "postmaster": Key("postmaster", "", lambda v: _email(v) if v else None,
                      "postmaster address (default postmaster@domain)"),
    "heartbeatKeepaliveMs": Key("heartbeat_keepalive_ms", 200, _as_int(50, 10000, " ms"),
                                "Heartbeat keepalive interval"),
    "heartbeatDeadtimeMs": Key("heartbeat_deadtime_ms", 1000, _as_int(200, 60000, " ms"),
                               "Heartbeat deadtime"),
    # lelastic's values (hold 9 s, keepalive 3 s): what Linode's route servers are known to
    # accept. A crashed node's route stays until the hold time runs out (see the README).
    "bgpHoldTimeS": Key("bgp_hold_time_s", 9, _as_int(3, 65535, " s"),
                        "BGP hold time towards Linode's route servers (RFC 4271: 3 s or more)"),
    "bgpKeepaliveS": Key("bgp_keepalive_s", 3, _as_int(1, 21845, " s"),
                         "BGP keepalive interval, at most a third of bgpHoldTimeS"),
    "provision": Key("provision", True, _as_bool, "configure the nodes over SSH"),
    "metricsCidrs": Key("metrics_cidrs", (), _cidr_list,
                         "CIDRs that may scrape the Prometheus exporters (empty: no exporters)"),
    "meshCidr": Key("mesh_cidr", DEFAULT_MESH_CIDR, _mesh_cidr,
                    "the WireGuard mesh's inner IPv4 network"),
    # Its default depends on the data centre (DEFAULT_VPC_SUBNETS), as the region's does.
    "vpcSubnet": Key("vpc_subnet", "", _vpc_subnet,
                     "the IPv4 range of this data centre's VPC subnet (its nodes' private "
                     "addresses)"),
    "banMaxRetry": Key("ban_max_retry", 5, _as_int(2, 100),
                       "failed logins from one address within banFindTimeSeconds that ban it"),
    "banFindTimeSeconds": Key("ban_find_time_s", 600, _as_int(60, 86400, " s"),
                              "the window in which banMaxRetry failures count"),
    "banTimeSeconds": Key("ban_time_s", 3600, _as_int(60, 30 * 86400, " s"),
                          "how long a ban holds, on every node"),
    "submissionRateLimitPerHour": Key("submission_rate_limit_per_hour", 200,
                                      _as_int(1, 100000, " recipients"),
                                      "recipients one authenticated user may send to per hour"),
    # rspamd's defaults (add header 6, reject 15): scores from its symbols, no Bayes here.
    "spamJunkScore": Key("spam_junk_score", 6, _as_score(1, 100),
                         "rspamd score from which mail is filed into the user's Junk"),
    "spamRejectScore": Key("spam_reject_score", 15, _as_score(1, 1000),
                           "rspamd score from which mail is refused at SMTP (above "
                           "spamJunkScore)"),
    "alertEmail": Key("alert_emails", [], _emails,
                      "addresses that get alerts by mail (default: the postmaster)"),
    "alertWebhook": Key("alert_webhook", "", _webhook,
                        "URL that gets each alert as a JSON POST (default: none)"),
    "backupRepository": Key("backup_repository", "", _backup_repository,
                            "restic's S3 repository for the backups (empty: the stack's own "
                            "Object Storage bucket); its keys: backupAccessKey, backupSecretKey"),
    "backupIntervalHours": Key("backup_interval_hours", 1, _as_int(1, 24, " h"),
                               "hours between backups"),
    "backupKeepHourly": Key("backup_keep_hourly", 48, _as_int(0, 10000),
                            "hourly snapshots kept (restic forget --keep-hourly)"),
    "backupKeepDaily": Key("backup_keep_daily", 30, _as_int(0, 10000),
                           "daily snapshots kept (restic forget --keep-daily)"),
    "backupKeepMonthly": Key("backup_keep_monthly", 12, _as_int(0, 10000),
                             "monthly snapshots kept (restic forget --keep-monthly)"),
}  # fmt: skip

# Keys that exist but are read as secrets where they are used, never into StackConfig.
SECRET_KEYS = {"rootPassword", "sshPrivateKey", "backupAccessKey", "backupSecretKey"}


def ip_sharing_error(config: StackConfig) -> str | None:
    """Why Linode cannot route ``sharedIpMethod`` in the stack's region (``IP_SHARING``), or
    None."""
    known = IP_SHARING.get(config.region)
    if known == config.shared_ip_method:
        return None
    where = ", ".join(f"{r} ({m})" for r, m in sorted(IP_SHARING.items()))
    if known is None:
        why = (
            f"Linode documents no IP sharing method for region {config.region!r} (not listed, "
            "or undergoing network upgrades), so a shared IP there may never be routed"
        )
    else:
        why = f"region {config.region!r} shares IPs by {known}, not {config.shared_ip_method}"
    return (
        f"mailcluster:sharedIpMethod: {why}; choose a region and method Linode documents "
        f"(mailcluster:region / mailcluster:sharedIpMethod): {where}"
    )


def vpc_errors(config: StackConfig) -> list[str]:
    """Why the stack's VPC cannot be built at Linode: a region without VPCs (``VPC_REGIONS``),
    or a subnet outside RFC 1918 (Linode's rule; the lab's RFC 2544 range is not one)."""
    errors = []
    if config.region not in VPC_REGIONS:
        both = sorted(r for r in VPC_REGIONS if IP_SHARING.get(r) == config.shared_ip_method)
        errors.append(
            f"mailcluster:region: Linode documents no VPC in region {config.region!r}, and "
            "node-to-node traffic inside a data centre runs on a VPC subnet; choose a region "
            f"with VPCs and {config.shared_ip_method} IP sharing: {', '.join(both) or 'none'}"
        )
    subnet = ipaddress.IPv4Network(config.vpc_subnet)
    if not any(subnet.subnet_of(net) for net in RFC1918):
        errors.append(
            f"mailcluster:vpcSubnet: {subnet} is not inside RFC 1918 (10.0.0.0/8, "
            "172.16.0.0/12, 192.168.0.0/16), which Linode requires of a VPC subnet"
        )
    return errors


def check_linode_region(config: StackConfig) -> None:
    """Refuse what Linode cannot build for this stack: IP sharing by ``sharedIpMethod`` and a
    VPC with ``vpcSubnet`` in ``region`` (one error, every problem named by its key).

    Only for a deployment to Linode: the lab is not a Linode region, drills both methods and
    keeps its addresses in documentation and benchmark ranges."""
    errors = [e for e in (ip_sharing_error(config), *vpc_errors(config)) if e]
    if errors:
        raise ConfigError("invalid stack config:\n  " + "\n  ".join(errors))


def load_config(raw: Mapping[str, Any], stack: str) -> StackConfig:
    """Validate ``raw`` (keys without the ``mailcluster:`` prefix) for ``stack``.

    Raises ``ConfigError`` listing every problem, one line per key.
    """
    errors: list[str] = []
    dc = str(raw.get("dc", stack))
    if dc not in DC_NAMES:
        errors.append(
            f"mailcluster:dc: must be one of {', '.join(DC_NAMES)} (default: the "
            f"stack name); got {dc!r}"
        )
        dc = "dc1"
    values: dict[str, Any] = {"dc": dc}
    for name in raw:
        if name not in KEYS and name not in SECRET_KEYS and name != "dc":
            errors.append(f"mailcluster:{name}: unknown key (known: {', '.join(sorted(KEYS))})")
    for name, key in KEYS.items():
        given = raw.get(name)
        if given is None or given == "":
            if key.default is None:
                errors.append(f"mailcluster:{name}: is required ({key.doc})")
                continue
            given = key.default
            if name == "region":
                given = DEFAULT_REGIONS[dc]
            if name == "vpcSubnet":
                given = DEFAULT_VPC_SUBNETS[dc]
        try:
            values[key.attr] = key.check(given)
        except ValueError as exc:
            errors.append(f"mailcluster:{name}: {exc}")
    if not errors:
        if values["tls_mode"] == "letsencrypt" and not values["letsencrypt_email"]:
            errors.append("mailcluster:letsencryptEmail: is required when tlsMode is letsencrypt")
        if values["heartbeat_deadtime_ms"] < 2 * values["heartbeat_keepalive_ms"]:
            errors.append(
                "mailcluster:heartbeatDeadtimeMs: must be at least twice "
                "heartbeatKeepaliveMs, or one lost packet fails the node over"
            )
        if values["bgp_keepalive_s"] > values["bgp_hold_time_s"] // 3:
            errors.append(
                f"mailcluster:bgpKeepaliveS: must be at most a third of bgpHoldTimeS "
                f"({values['bgp_hold_time_s']} s -> at most {values['bgp_hold_time_s'] // 3} s), "
                f"got {values['bgp_keepalive_s']}: three keepalives must fit in one hold time"
            )
        if not (values["backup_keep_hourly"] or values["backup_keep_daily"]
                or values["backup_keep_monthly"]):  # fmt: skip
            errors.append(
                "mailcluster:backupKeepHourly: backupKeepHourly, backupKeepDaily and "
                "backupKeepMonthly are all 0: forget --prune would delete every snapshot"
            )
        if values["spam_reject_score"] <= values["spam_junk_score"]:
            errors.append(
                f"mailcluster:spamRejectScore: must be above spamJunkScore "
                f"({values['spam_junk_score']:g}), got {values['spam_reject_score']:g}: mail "
                "between the two is filed into Junk, mail from spamRejectScore up is refused"
            )
        mesh, vpc = (ipaddress.IPv4Network(values[k]) for k in ("mesh_cidr", "vpc_subnet"))
        if mesh.overlaps(vpc):
            errors.append(
                f"mailcluster:vpcSubnet: {vpc} overlaps meshCidr {mesh}: the mesh's routes would "
                "capture the data centre's private traffic; choose ranges apart"
            )
        if values["postmaster"] is None:
            values["postmaster"] = f"postmaster@{values['domain']}"
    if errors:
        raise ConfigError("invalid stack config:\n  " + "\n  ".join(errors))
    return StackConfig(**values)
