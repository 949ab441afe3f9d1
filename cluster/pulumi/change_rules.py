"""What a change of each input does to a running resource, and of each config key to the cluster.

Two tables, one concept:

- ``RULES``: per resource type, per input the program sets, the provider's rule (replace, a
  disruptive update that reboots or powers off a node, or an update in place) and its source.
  ``tests/unit/test_changes.py`` runs the program under mocks before and after a config change
  and classifies every changed input with this table: an input named in ``ignore_changes``
  causes no diff, and an input the table does not know counts as a replacement, so the table
  must cover everything we set.
- ``KEY_CHANGES``: per config key, what a ``pulumi up`` after changing it does (in place;
  rolling, one node at a time; or refused before any resource is declared). The tests check the
  claim against the classified diff, ``__main__`` refuses what it says is refused, and the
  README's table "Changing a running cluster" is generated from it
  (``python -m cluster.pulumi.change_rules --markdown``).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any


class Effect(Enum):
    """What the engine and the provider do when one input changes (ordered: worst last)."""

    IN_PLACE = 0
    DISRUPTIVE = 1  # an update that reboots or powers the node off (or pulls its disk away)
    REPLACE = 2

    @property
    def label(self) -> str:
        return {0: "in place", 1: "disruptive update", 2: "replace"}[self.value]


@dataclass(frozen=True)
class Rule:
    effect: Effect
    source: str


# Sources. The provider is pulumi-linode 6.8 (requirements.txt), which bridges a
# linode/terraform-provider-linode 4.x (its exact version is not recorded anywhere we could read:
# LINODE-VPC-FACTS.md, section 0); the TF files named are read at the provider's 2026 head, and
# the docstrings quoted are the installed SDK's (tests/unit/test_changes.py reads them back).
# The SDK offers two interface models: the legacy configuration profile interfaces
# (``Instance.interfaces``, what we use) and Linode interfaces (``interface_generation="linode"``
# with ``linode_interfaces`` or ``linode.Interface``).
TF = "linode/terraform-provider-linode"
TF_INSTANCE = f"{TF} linode/instance/schema_resource.go"
TF_INSTANCE_UPDATE = f"{TF} linode/instance/resource.go + helpers.go (update paths)"
PY_INSTANCE = "pulumi_linode 6.8 instance.py docstring"
TF_VOLUME = f"{TF} linode/volume/framework_schema_resource.go"
TF_IP = f"{TF} linode/instanceip/framework_schema.go"
TF_SHARED = f"{TF} linode/instancesharedips/framework_resource_schema.go"
TF_V6RANGE = f"{TF} linode/ipv6range/framework_schema_resource.go"
TF_PG = f"{TF} linode/placementgroup/framework_schema_resource.go"
TF_FW = f"{TF} linode/firewall/framework_schema_resource.go"
TF_RDNS = f"{TF} linode/rdns/framework_resource_schema.go"
TF_DOMAIN = f"{TF} linode/domain/framework_resource_schema.go"
TF_OBJ_BUCKET = f"{TF} linode/objbucket/framework_resource_schema.go"
TF_VPC = f"{TF} linode/vpc/framework_schema_resource.go"
TF_SUBNET = f"{TF} linode/vpcsubnet/framework_schema_resource.go"
VPC_FACTS = "/work/shared/LINODE-VPC-FACTS.md"
PY_OBJ_KEY = "pulumi_linode 6.8 object_storage_key.py docstring"
CMD = "pulumi/pulumi-command docs, remote.Command (triggers, create, stdin re-run the command)"
TLS_RANDOM = "hashicorp/terraform-provider-tls and -random: every argument RequiresReplace"
API_VOLUME = "techdocs.akamai.com/linode-api/reference/post-resize-volume (online, grow only)"
FACTS = "/work/shared/LINODE-FACTS.md"

_IN = Effect.IN_PLACE
_DIS = Effect.DISRUPTIVE
_REP = Effect.REPLACE

INSTANCE = "linode:index/instance:Instance"
VOLUME = "linode:index/volume:Volume"
INSTANCE_IP = "linode:index/instanceIp:InstanceIp"
VPC = "linode:index/vpc:Vpc"
VPC_SUBNET = "linode:index/vpcSubnet:VpcSubnet"
IPV6_RANGE = "linode:index/ipv6Range:Ipv6Range"
COMMAND = "command:remote:Command"
OBJ_BUCKET = "linode:index/objectStorageBucket:ObjectStorageBucket"

FIREWALL_INPUTS = ("label", "inboundPolicy", "outboundPolicy", "inbounds", "outbounds",
                   "linodes", "tags", "disabled")  # fmt: skip
GENERATED = {
    "random:index/randomPassword:RandomPassword": ("length", "special"),
    "random:index/randomBytes:RandomBytes": ("length",),
    "tls:index/privateKey:PrivateKey": ("algorithm", "rsaBits", "ecdsaCurve"),
    "tls:index/selfSignedCert:SelfSignedCert": (
        "privateKeyPem", "isCaCertificate", "subject", "validityPeriodHours", "allowedUses"),
    "tls:index/certRequest:CertRequest": ("privateKeyPem", "subject", "dnsNames", "ipAddresses"),
    "tls:index/locallySignedCert:LocallySignedCert": (
        "certRequestPem", "caPrivateKeyPem", "caCertPem", "validityPeriodHours",
        "earlyRenewalHours", "allowedUses"),
}  # fmt: skip

RULES: dict[str, dict[str, Rule]] = {
    INSTANCE: {
        "image": Rule(_REP, f"{TF_INSTANCE}: image ForceNew"),
        "authorizedKeys": Rule(_REP, f"{TF_INSTANCE}: authorized_keys ForceNew"),
        "authorizedUsers": Rule(_REP, f"{TF_INSTANCE}: authorized_users ForceNew"),
        "firewallId": Rule(_REP, f"{PY_INSTANCE}: changing firewall_id forces a new Linode"),
        "networkHelper": Rule(_REP, f"{FACTS}: network_helper replaces the instance"),
        # The model of the interfaces: "linode" (Linode interfaces) cannot be undone and
        # replaces the node; we pin "legacy_config" (datacentre.INTERFACE_GENERATION).
        "interfaceGeneration": Rule(
            _REP, f"{TF_INSTANCE}: interface_generation ForceNew ({VPC_FACTS} 1)"
        ),
        # Legacy configuration profile interfaces: not ForceNew, but with a vpc interface in
        # the old or the new list the provider shuts the Linode down, updates its
        # configuration profile and boots it (VPCInterfaceIncluded); Linode activates an added
        # interface only at a boot, and a subnet_id cannot change once assigned.
        "interfaces": Rule(
            _DIS,
            f"{TF_INSTANCE_UPDATE}: interface change with a vpc interface"
            f" = shutdown, update config, boot ({VPC_FACTS} 1)",
        ),
        # The provider resets the password by shutting the Linode down and booting it again.
        "rootPass": Rule(_DIS, f"{TF_INSTANCE_UPDATE}: root_pass = shutdown, reset, boot"),
        # A resize is a cold migration by default: shutdown, move, boot.
        "type": Rule(_DIS, f"{TF_INSTANCE_UPDATE}; {PY_INSTANCE}: migration_type default cold"),
        "region": Rule(_DIS, f"{PY_INSTANCE}: changing region triggers a migration"),
        "label": Rule(_IN, f"{TF_INSTANCE}: label updatable"),
        "tags": Rule(_IN, f"{TF_INSTANCE}: tags updatable"),
        # Enabled on an existing Linode, never disabled: ignored after creation (datacentre).
        "privateIp": Rule(_IN, f"{PY_INSTANCE}: private_ip can be enabled, not disabled"),
        "placementGroup": Rule(_IN, f"{TF_INSTANCE_UPDATE}: placement group assign/unassign"),
        "migrationType": Rule(_IN, f"{PY_INSTANCE}: only how a later resize runs"),
    },
    VOLUME: {
        "region": Rule(_REP, f"{TF_VOLUME}: region RequiresReplace"),
        "sourceVolumeId": Rule(_REP, f"{TF_VOLUME}: source_volume_id RequiresReplace"),
        "encryption": Rule(_REP, f"{TF_VOLUME}: encryption RequiresReplace"),
        "size": Rule(_IN, f"{API_VOLUME}; {TF_VOLUME}: size updatable"),
        # Moving a volume detaches it from the node that has it mounted.
        "linodeId": Rule(_DIS, f"{TF_VOLUME}: linode_id change = detach, attach"),
        "label": Rule(_IN, f"{TF_VOLUME}: label updatable"),
        "tags": Rule(_IN, f"{TF_VOLUME}: tags updatable"),
    },
    INSTANCE_IP: {
        "linodeId": Rule(_REP, f"{FACTS} ({TF_IP}): linode_id replaces"),
        "public": Rule(_REP, f"{FACTS} ({TF_IP}): public replaces"),
        "applyImmediately": Rule(_IN, f"{TF_IP}: apply_immediately acts on create only"),
        "rdns": Rule(_IN, f"{TF_IP}: rdns updatable"),
    },
    # The shared IPv6 (DataCentre.shared_ipv6_range). Adding it to a stack deployed without
    # it is a create: the range is new, and the sharing below only gains an address (an
    # in-place update of ``addresses``), so no instance, volume or shared IPv4 changes.
    IPV6_RANGE: {
        "prefixLength": Rule(_REP, f"{TF_V6RANGE}: prefix_length RequiresReplace"),
        "routeTarget": Rule(_REP, f"{TF_V6RANGE}: route_target RequiresReplace"),
        # Reassigning routes the range to another Linode: the address stays.
        "linodeId": Rule(_IN, f"{TF_V6RANGE}: linode_id updatable (reassigns the range)"),
    },
    "linode:index/instanceSharedIps:InstanceSharedIps": {
        # Older schemas update it in place; LINODE-FACTS (provider head) says replace: the
        # stricter rule.
        "linodeId": Rule(_REP, f"{FACTS} ({TF_SHARED}): linode_id replaces"),
        # IPv4 addresses and IPv6 ranges alike (a range as its address, no prefix length:
        # Linode API POST /networking/ips/share; v4beta for ranges, see datacentre.py).
        "addresses": Rule(_IN, f"{TF_SHARED}: addresses updatable"),
    },
    # The data centre's VPC (datacentre.DataCentre.vpc): only labels and the description can
    # change in place; a subnet's range never ("Only the label of a subnet can be edited":
    # linode/docs, vpc/guides/subnets), hence vpcSubnet is refused (KEY_CHANGES).
    VPC: {
        "region": Rule(_REP, f"{TF_VPC}: region RequiresReplace"),
        "label": Rule(_IN, f"{TF_VPC}: label updatable"),
        "description": Rule(_IN, f"{TF_VPC}: description updatable"),
    },
    VPC_SUBNET: {
        "vpcId": Rule(_REP, f"{TF_SUBNET}: vpc_id RequiresReplace"),
        "ipv4": Rule(_REP, f"{TF_SUBNET}: ipv4 RequiresReplace"),
        "label": Rule(_IN, f"{TF_SUBNET}: label updatable"),
    },
    "linode:index/placementGroup:PlacementGroup": {
        "region": Rule(_REP, f"{TF_PG}: region RequiresReplace"),
        "placementGroupType": Rule(_REP, f"{TF_PG}: placement_group_type RequiresReplace"),
        "placementGroupPolicy": Rule(_REP, f"{TF_PG}: is_strict/policy RequiresReplace"),
        "label": Rule(_IN, f"{TF_PG}: label updatable"),
    },
    "linode:index/firewall:Firewall": {
        key: Rule(_IN, f"{TF_FW}: {key} updatable (PUT rules, devices)") for key in FIREWALL_INPUTS
    },
    "linode:index/rdns:Rdns": {
        "address": Rule(_REP, f"{TF_RDNS}: address RequiresReplace"),
        "rdns": Rule(_IN, f"{TF_RDNS}: rdns updatable"),
        "waitForAvailable": Rule(_IN, f"{TF_RDNS}: only how the provider retries"),
    },
    "linode:index/domain:Domain": {
        "type": Rule(_REP, f"{TF_DOMAIN}: type RequiresReplace"),
        **{
            key: Rule(_IN, f"{TF_DOMAIN}: {key} updatable")
            for key in ("domain", "masterIps", "ttlSec", "tags", "soaEmail")
        },
    },
    OBJ_BUCKET: {
        "label": Rule(_REP, f"{TF_OBJ_BUCKET}: label RequiresReplace"),
        "region": Rule(_REP, f"{TF_OBJ_BUCKET}: region RequiresReplace"),
    },
    "linode:index/objectStorageKey:ObjectStorageKey": {
        "label": Rule(_IN, f"{PY_OBJ_KEY}: label updatable"),
        "bucketAccesses": Rule(_REP, f"{PY_OBJ_KEY}: changing bucket_access forces a new key"),
    },
    COMMAND: {
        # A replaced Command re-runs its step: how provisioning applies a change, by design.
        "triggers": Rule(_REP, CMD),
        "create": Rule(_REP, CMD),
        "stdin": Rule(_REP, CMD),
        "connection": Rule(_REP, CMD),
        "delete": Rule(_IN, f"{CMD}: delete is stored for the resource's removal"),
        "logging": Rule(_IN, f"{CMD}: output handling only"),
        "addPreviousOutputInEnv": Rule(_IN, f"{CMD}: environment of a later update only"),
    },
    "pulumi:pulumi:StackReference": {"name": Rule(_IN, "a read, not a managed resource")},
    **{typ: {key: Rule(_REP, TLS_RANDOM) for key in keys} for typ, keys in GENERATED.items()},
}

# Resources whose loss loses data or the cluster's public face: never replaced or deleted by a
# routine change (and protected, see DataCentre).
KEPT_TYPES = (INSTANCE, VOLUME, INSTANCE_IP, IPV6_RANGE, OBJ_BUCKET)
# Our own ComponentResources have no inputs of their own.
COMPONENT_PREFIX = "mailcluster:"


def rule(typ: str, key: str) -> Rule:
    """The rule for ``key`` of ``typ``; an input the table does not know counts as a
    replacement (so a new input cannot slip through as harmless). An unknown type is an error:
    the table must grow with the program."""
    if typ not in RULES:
        raise KeyError(f"change_rules.RULES knows no resource type {typ!r}: add its inputs")
    return RULES[typ].get(key, Rule(Effect.REPLACE, "not in change_rules.RULES: assumed replace"))


def changed_inputs(
    before: Mapping[str, Any], after: Mapping[str, Any], ignore_changes: Iterable[str] = ()
) -> list[str]:
    """Top-level inputs whose values differ; those in ``ignore_changes`` cause no diff."""
    ignored = set(ignore_changes)
    return sorted(
        k for k in set(before) | set(after) if k not in ignored and before.get(k) != after.get(k)
    )


def classify(
    typ: str,
    before: Mapping[str, Any],
    after: Mapping[str, Any],
    ignore_changes: Iterable[str] = (),
) -> dict[str, Effect]:
    """Every changed input of one resource and its effect."""
    if typ.startswith(COMPONENT_PREFIX):
        return {}
    return {k: rule(typ, k).effect for k in changed_inputs(before, after, ignore_changes)}


# -- config keys -------------------------------------------------------------------------------
class Outcome(Enum):
    IN_PLACE = "in place"
    ROLLING = "rolling, one node at a time"
    REFUSED = "refused"


@dataclass(frozen=True)
class KeyChange:
    outcome: Outcome
    does: str


_RE = "re-runs the plan steps whose content changed (config files, checked reloads)"
KEY_CHANGES: dict[str, KeyChange] = {
    "domain": KeyChange(Outcome.REFUSED,
                        "every host name, certificate, DNS record and mail address depends on it: "
                        "build a new cluster (new stacks) for the new domain and move the mail, "
                        "or add the new domain as a virtual domain in PostfixAdmin"),
    "region": KeyChange(Outcome.REFUSED,
                        "a Linode cannot move region without a migration, a volume not at all: "
                        "build the new data centre as a new stack in the new region, fail over "
                        "to it, then retire the old stack (its volumes are retained)"),
    "dc": KeyChange(Outcome.REFUSED,
                    "the nodes' names and labels are the data centre's: init a new stack instead"),
    "vpcSubnet": KeyChange(Outcome.REFUSED,
                           "Linode cannot change a subnet's range nor a VPC interface's subnet, "
                           "and every private address of the data centre is in it: build the "
                           "data centre as a new stack with the new range, fail over to it, "
                           "then retire the old stack (its volumes are retained)"),
    "instanceType": KeyChange(Outcome.ROLLING,
                              "resizes svr2 (cold migration: down for minutes), hands the "
                              "shared IP and the role to svr2, then resizes svr1"),
    "volumeSizeGb": KeyChange(Outcome.IN_PLACE,
                              "grows both volumes online (Linode volumes only grow; a smaller "
                              "size fails at Linode)"),
    "sshKeys": KeyChange(Outcome.IN_PLACE,
                         "rewrites root's authorized_keys on every node (the Linode's "
                         "create-time keys are ignored after creation)"),
    "rootPassword": KeyChange(Outcome.IN_PLACE,
                              "sets root's password with chpasswd from secret stdin when it "
                              "differs (no reboot; the create-time root_pass is ignored)"),
    "sshPrivateKey": KeyChange(Outcome.IN_PLACE,
                               "re-runs every step with the new connection key"),
    "adminCidrs": KeyChange(Outcome.IN_PLACE,
                            "updates the SSH rule of the cloud and host firewalls and "
                            "fail2ban's ignoreip"),
    "activeDc": KeyChange(Outcome.IN_PLACE,
                          "a failover or failback: DNS, database roles and PTRs follow"),
    "sharedIpMethod": KeyChange(Outcome.IN_PLACE,
                                "only to a method the region supports (checked); "
                                f"{_RE}; leaving bgp removes the shared IP from lo and "
                                "BIRD's sessions (the step heartbeat.bgp-leave, and the "
                                "removed steps' delete)"),
    **{
        key: KeyChange(Outcome.IN_PLACE,
                       "bgp: rewrites BIRD's configuration and reconfigures it; the sessions "
                       "to the route servers restart with the new timers (the holder's "
                       "routes are withdrawn and announced again: a second or two without "
                       "the shared IP)")
        for key in ("bgpHoldTimeS", "bgpKeepaliveS")
    },
    "peerStack": KeyChange(Outcome.IN_PLACE, f"reads the other stack; {_RE}"),
    "linodeSecondaryDns": KeyChange(Outcome.IN_PLACE,
                                    "adds or removes the Linode secondary zone (dc1)"),
    "dnssec": KeyChange(Outcome.IN_PLACE,
                        "the writer signs (true) or stops signing (false) every zone within a "
                        "minute, with the keys it keeps; before false, remove the DS records at "
                        "the registrars"),
    "tlsMode": KeyChange(Outcome.IN_PLACE,
                         f"{_RE}; from selfsigned to letsencrypt the MX's TLSA record (DANE) "
                         "goes: a DANE sender that cached it defers mail (4xx, nothing lost) "
                         "until the record expires, so lower `dnsTtl` a TTL ahead"),
    "provision": KeyChange(Outcome.IN_PLACE,
                           "false: stops managing the nodes' software (nothing on them is "
                           "undone); true: provisions them"),
    **{
        key: KeyChange(Outcome.IN_PLACE, _RE)
        for key in ("messageSizeLimitMb", "imapPlaintext", "letsencryptEmail",
                    "dnsTtl", "dmarcPolicy", "mtaStsMode", "postmaster",
                    "heartbeatKeepaliveMs", "heartbeatDeadtimeMs", "banMaxRetry",
                    "banFindTimeSeconds", "banTimeSeconds", "submissionRateLimitPerHour",
                    "spamJunkScore", "spamRejectScore", "alertEmail", "alertWebhook")
    },
}  # fmt: skip
KEY_CHANGES["backupRepository"] = KeyChange(
    Outcome.IN_PLACE,
    "rewrites the nodes' backup settings; the next backup starts a new repository there (the "
    "old one keeps its snapshots). Leaving the stack's own bucket: `pulumi state unprotect` it "
    "first (it is retained in Object Storage, with its snapshots)",
)
for _key in ("backupAccessKey", "backupSecretKey"):
    KEY_CHANGES[_key] = KeyChange(Outcome.IN_PLACE, "rewrites the nodes' backup key pair (0600)")
for _key in ("backupIntervalHours", "backupKeepHourly", "backupKeepDaily", "backupKeepMonthly"):
    KEY_CHANGES[_key] = KeyChange(
        Outcome.IN_PLACE, "rewrites the backup schedule or retention (its timer, the next forget)"
    )
KEY_CHANGES["imapPlaintext"] = KeyChange(Outcome.IN_PLACE, f"opens or closes 143; {_RE}")
KEY_CHANGES["metricsCidrs"] = KeyChange(
    Outcome.IN_PLACE,
    "updates the exporters' rules of the cloud and host firewalls; from empty: installs and "
    "starts the Prometheus exporters and the exporter's MariaDB account; to empty: stops "
    "them, drops the account and removes their files (the packages stay); set the same value on "
    "both stacks (the account is made by the active data centre's master)",
)
KEY_CHANGES["meshCidr"] = KeyChange(
    Outcome.IN_PLACE,
    f"renumbers the mesh; {_RE}; set the same value on both stacks and apply both (until the "
    "second runs, replication between the data centres pauses)",
)

REFUSED_KEYS = tuple(k for k, c in KEY_CHANGES.items() if c.outcome is Outcome.REFUSED)


def outcome_of(changes: Mapping[str, Mapping[str, Effect]], types: Mapping[str, str]) -> Outcome:
    """What an ``up`` with these changes is, by resource name: rolling when an instance gets a
    disruptive update, in place otherwise. (A replacement of a kept resource is never an
    outcome: the tests fail on it.)"""
    for name, effects in changes.items():
        if types[name] == INSTANCE and Effect.DISRUPTIVE in effects.values():
            return Outcome.ROLLING
    return Outcome.IN_PLACE


def markdown() -> str:
    """The README's table: every config key and what an ``up`` after changing it does."""
    lines = ["| Key | An `up` after changing it | What happens |", "|---|---|---|"]
    for key in sorted(KEY_CHANGES, key=str.lower):
        change = KEY_CHANGES[key]
        lines.append(f"| `{key}` | {change.outcome.value} | {change.does} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if sys.argv[1:] != ["--markdown"]:
        sys.exit("usage: python -m cluster.pulumi.change_rules --markdown")
    sys.stdout.write(markdown())
