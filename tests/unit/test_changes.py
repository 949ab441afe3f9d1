"""Day-2 changes, proven under mocks: the program before and after a config change, every
changed input classified by the provider's rules (``cluster/pulumi/change_rules.py``).

Rules: no routine change replaces or deletes an instance, a volume or the shared IP; an update
that takes a node down reaches one node of a data centre at a time, the shared-IP holder last
and after the handover to its peer; region and domain changes are refused before any resource
is declared; what an `up` does per key is what the README's table says.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pulumi_harness as harness
import pytest
from pulumi_harness import (
    ROOT,
    Deployment,
    Registered,
    Result,
    committed_deployment,
    run_stack,
    unwrap,
)

from cluster.config import ConfigError, load_config
from cluster.pulumi import change_rules
from cluster.pulumi.change_rules import (
    COMMAND,
    INSTANCE,
    INSTANCE_IP,
    IPV6_RANGE,
    KEPT_TYPES,
    KEY_CHANGES,
    RULES,
    VOLUME,
    Effect,
    Outcome,
)
from cluster.pulumi.provision import LANES, plan_structure, real_plans, resource_name
from cluster.stackfiles import read_stack_config

NEW_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB2Jq4vN7xY0a1s2d3f4g5h6j7k8l9z0x1c2v3b4n5m6 new@laptop"
)


@dataclass(frozen=True)
class Diff:
    """What an `up` from ``before`` to ``after`` would do, by resource name."""

    before: Result
    after: Result
    effects: dict[str, dict[str, Effect]]
    deleted: list[Registered]

    @property
    def types(self) -> dict[str, str]:
        return {r.name: r.typ for r in [*self.before.resources, *self.after.resources]}

    @property
    def outcome(self) -> Outcome:
        return change_rules.outcome_of(self.effects, self.types)

    def effect(self, name: str) -> Effect | None:
        found = self.effects.get(name)
        return max(found.values(), key=lambda e: e.value) if found else None


def diff(before: Result, after: Result) -> Diff:
    old = {r.urn: r for r in before.resources}
    new = {r.urn: r for r in after.resources}
    effects: dict[str, dict[str, Effect]] = {}
    for urn, res in new.items():
        if urn in old:
            # ignore_changes of the new program decides, as the engine does.
            found = change_rules.classify(
                res.typ, unwrap(old[urn].inputs), unwrap(res.inputs), res.options.ignore_changes
            )
            if found:
                effects[res.name] = found
    return Diff(before, after, effects, [r for u, r in old.items() if u not in new])


def assert_safe(d: Diff) -> None:
    """No kept resource replaced or deleted, whatever the change."""
    for res in d.deleted:
        assert res.typ not in KEPT_TYPES, f"{res.name} would be deleted"
    for name, effects in d.effects.items():
        if d.types[name] in KEPT_TYPES:
            assert Effect.REPLACE not in effects.values(), f"{name} replaced: {effects}"


def from_earlier(
    after: Result, earlier: Callable[[Registered], Registered | None]
) -> tuple[Diff, set[str]]:
    """A stack deployed by an earlier version (``earlier`` maps each of today's resources to
    what that version registered, None where it had none), diffed against ``after``: the diff,
    checked safe, and the types of the resources the upgrade creates."""
    before = Result([r for r in map(earlier, after.resources) if r is not None], after.outputs,
                    after.secret_outputs)  # fmt: skip
    d = diff(before, after)
    assert_safe(d)
    new_urns = {r.urn for r in after.resources} - {r.urn for r in before.resources}
    return d, {after.by_urn(u).typ for u in new_urns}


# -- the runs -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def deployment() -> Deployment:
    return committed_deployment()


def _after(
    deployment: Deployment,
    dc: str,
    changes: Mapping[str, Any],
    secret: Mapping[str, str] | None = None,
    before: Result | None = None,
) -> Result:
    before = before or (deployment.dc1 if dc == "dc1" else deployment.dc2)
    peer = deployment.dc2 if dc == "dc1" else deployment.dc1
    raw = {**read_stack_config(dc), **changes}
    return run_stack(dc, raw, peer.peer_view(), secret_config=secret, previous=before)


@functools.lru_cache(maxsize=1)
def _unprovisioned() -> Result:
    """dc1 after its deployment with provision: false: infrastructure only, a fast baseline for
    the changes that touch no more than infrastructure when provisioning is off."""
    d = committed_deployment()
    raw = {**read_stack_config("dc1"), "provision": False}
    return run_stack("dc1", raw, d.dc2.peer_view(), previous=d.dc1)


# Changes whose effect on the infrastructure shows without provisioning (fast runs). The
# provisioned changes below also prove what the Commands do.
INFRA_CHANGES: dict[str, dict[str, Any]] = {
    "volumeSizeGb": {"volumeSizeGb": 160},
    "adminCidrs": {"adminCidrs": ["192.0.2.0/24", "198.51.100.7/32"]},
    "heartbeatKeepaliveMs": {"heartbeatKeepaliveMs": 100},
    "heartbeatDeadtimeMs": {"heartbeatDeadtimeMs": 600},
    "dnsTtl": {"dnsTtl": 60},
    "dnssec": {"dnssec": False},
    "tlsMode": {"tlsMode": "letsencrypt", "letsencryptEmail": "hostmaster@example.com"},
    "messageSizeLimitMb": {"messageSizeLimitMb": 25},
    "sshKeys": {"sshKeys": [*read_stack_config("dc1")["sshKeys"], NEW_KEY]},
}


@pytest.mark.parametrize("key", sorted(INFRA_CHANGES))
def test_infrastructure_change_is_safe_and_as_documented(key: str) -> None:
    before = _unprovisioned()
    after = run_stack(
        "dc1",
        {**read_stack_config("dc1"), "provision": False, **INFRA_CHANGES[key]},
        committed_deployment().dc2.peer_view(),
        previous=committed_deployment().dc1,
    )
    d = diff(before, after)
    assert_safe(d)
    assert d.outcome is KEY_CHANGES[key].outcome
    if key == "volumeSizeGb":
        assert {d.effect(n) for n in ("dc1-svr1-mail", "dc1-svr2-mail")} == {Effect.IN_PLACE}
    if key == "adminCidrs":
        assert d.effects == {"dc1-fw": {"inbounds": Effect.IN_PLACE}}
    if key == "sshKeys":
        # authorized_keys would replace both nodes: the Instance ignores it after creation.
        assert not any(d.types[n] == INSTANCE for n in d.effects)


def test_removing_an_ssh_key_replaces_nothing() -> None:
    keys = [*read_stack_config("dc1")["sshKeys"], NEW_KEY]
    d = committed_deployment()
    base = {**read_stack_config("dc1"), "provision": False}
    two = run_stack("dc1", {**base, "sshKeys": keys}, d.dc2.peer_view(), previous=d.dc1)
    one = run_stack("dc1", {**base, "sshKeys": keys[:1]}, d.dc2.peer_view(), previous=two)
    changes = diff(two, one)
    assert_safe(changes)
    assert changes.effects == {}


def _digests(changes: Mapping[str, Any], root_password: str = "") -> dict[str, str]:
    """Each step's digest (the Command's trigger) on dc1's nodes, from the pure plan: a step
    whose digest changes is the Command an `up` re-runs, and only that one."""
    d = committed_deployment()
    config = load_config({**read_stack_config("dc1"), **changes}, "dc1")
    secrets = {**harness.full_secrets(d.dc1, d.dc1), "root_password": root_password}
    plans = real_plans(config, d.dc1.outputs["addresses"], d.dc2.outputs["addresses"], secrets)
    return {f"{node}/{name}": v for node, p in plans.items() for name, v in p.digests().items()}


def _rerun(changes: Mapping[str, Any], root_password: str = "") -> set[str]:
    before, after = _digests({}), _digests(changes, root_password)
    return {step for step in after if before.get(step) != after[step]}


def test_adding_an_ssh_key_rewrites_authorized_keys_only() -> None:
    # The Instances ignore authorized_keys (test_infrastructure_change_is_safe_and_as_documented);
    # the plan rewrites root's file on both nodes, and nothing else re-runs.
    assert _rerun(INFRA_CHANGES["sshKeys"]) == {
        "dc1-svr1/access.authorized-keys", "dc1-svr2/access.authorized-keys"
    }  # fmt: skip


def test_root_password_is_set_by_provisioning_not_by_a_reboot(deployment: Deployment) -> None:
    raw = {**read_stack_config("dc1"), "provision": False}
    after = run_stack("dc1", raw, deployment.dc2.peer_view(), previous=deployment.dc1,
                      secret_config={"rootPassword": "N3wRootPw"})  # fmt: skip
    d = diff(_unprovisioned(), after)
    assert_safe(d)
    assert d.effects == {}  # root_pass is create-time only: no shutdown, no reset
    assert d.outcome is KEY_CHANGES["rootPassword"].outcome
    assert _rerun({}, "N3wRootPw") == {
        "dc1-svr1/access.root-password", "dc1-svr2/access.root-password"
    }  # fmt: skip


# -- rolling updates --------------------------------------------------------------------------
def _reaches(result: Result, start: str, goal: str) -> bool:
    """Whether ``start`` (a URN) depends on ``goal``, directly or through others."""
    by_urn = {r.urn: r for r in result.resources}
    seen, todo = set(), [start]
    while todo:
        urn = todo.pop()
        if urn == goal:
            return True
        if urn not in seen and urn in by_urn:
            seen.add(urn)
            todo += by_urn[urn].dependencies
    return False


def test_resize_rolls_one_node_at_a_time_holder_last(deployment: Deployment) -> None:
    after = _after(deployment, "dc1", {"instanceType": "g6-standard-4"})
    d = diff(deployment.dc1, after)
    assert_safe(d)
    assert d.outcome is Outcome.ROLLING is KEY_CHANGES["instanceType"].outcome
    svr1 = after.one_named(INSTANCE, "dc1-svr1")
    svr2 = after.one_named(INSTANCE, "dc1-svr2")
    assert d.effect(svr1.name) is d.effect(svr2.name) is Effect.DISRUPTIVE
    # The holder of the shared IP is svr1 ...
    ip = after.one(INSTANCE_IP.rsplit(":", 1)[1])
    assert str(int(float(unwrap(ip.inputs["linodeId"])))) == svr1.id
    # ... and goes down last: it waits for svr2's update and for the handover on svr2, which
    # itself waits for svr2 (so the engine never has both in flight), and no path leads back.
    handover = after.one_named("command:remote:Command", "dc1-svr2-handover")
    assert {svr2.urn, handover.urn} <= set(svr1.options.depends_on)
    assert _reaches(after, handover.urn, svr2.urn)
    assert not _reaches(after, svr2.urn, svr1.urn)
    assert unwrap(handover.inputs["connection"])["host"] == svr2.state["ipAddress"]
    # The handover re-runs because the resize is pending; it takes the IP and the role over.
    assert d.effect(handover.name) is Effect.REPLACE
    assert "hb_takeover" in handover.inputs["create"] and "is-holder" in handover.inputs["create"]
    # Provisioning waits for the instances, so no step runs during the rollout.
    for cmd in after.of_type("remote:Command"):
        if cmd.name != handover.name:
            assert svr1.urn in cmd.dependencies


def test_disruptive_updates_never_reach_both_nodes_at_once(deployment: Deployment) -> None:
    """The rule for every input the table calls disruptive, not just the one we change today:
    in each stack one instance depends on the other."""
    for result in (deployment.dc1, deployment.dc2):
        instances = result.of_type("instance:Instance")
        a, b = instances
        assert _reaches(result, a.urn, b.urn) != _reaches(result, b.urn, a.urn)


# -- failover, refused changes -----------------------------------------------------------------
@pytest.mark.parametrize("dc", ["dc1", "dc2"])
def test_active_dc_change_is_in_place(deployment: Deployment, dc: str) -> None:
    if dc == "dc2":  # the failover itself, provisioned
        before = deployment.dc2
        after = _after(deployment, dc, {"activeDc": "dc2"})
    else:  # dc1 rejoining as the standby: its infrastructure (fast, unprovisioned)
        before = _unprovisioned()
        after = _after(deployment, dc, {"activeDc": "dc2", "provision": False})
    d = diff(before, after)
    assert_safe(d)
    assert d.outcome is KEY_CHANGES["activeDc"].outcome is Outcome.IN_PLACE
    assert after.outputs["activeDc"] == "dc2"


@pytest.mark.parametrize(
    ("key", "value"),
    # fr-par: a region with VPCs and BGP IP sharing, so only the refusal stops it.
    [("region", "fr-par"), ("domain", "example.org"), ("vpcSubnet", "10.0.9.0/24")],
)  # fmt: skip
def test_unsafe_change_is_refused_before_any_resource(
    deployment: Deployment, key: str, value: str
) -> None:
    with pytest.raises(ConfigError) as err:
        _after(deployment, "dc1", {key: value})
    message = str(err.value)
    assert f"mailcluster:{key}:" in message and "Instead:" in message
    assert KEY_CHANGES[key].outcome is Outcome.REFUSED
    assert harness.last_monitor is not None and harness.last_monitor.registered == []


def test_first_deployment_is_not_refused(deployment: Deployment) -> None:
    # No previous outputs: any region and domain are fine (the committed deployment ran, and
    # so does one in another region, with another domain).
    assert (
        deployment.dc1_first.outputs["region"]
        == load_config(read_stack_config("dc1"), "dc1").region
    )
    raw = {**read_stack_config("dc1"), "region": "fr-par",
           "domain": "example.org"}  # fmt: skip
    other = run_stack("dc1", raw, deployment.dc2.peer_view())
    assert other.outputs["region"] == "fr-par" and other.outputs["mailHost"] == "mail.example.org"
    assert other.of_type("linode:index/instance:Instance")


def test_adding_the_shared_ipv6_to_a_deployed_stack_replaces_nothing(
    deployment: Deployment,
) -> None:
    """A stack deployed before the shared IPv6 existed: its state is this program's, less the
    IPv6 range, the range in svr2's sharing and the range's PTR. The next `up` creates the range
    and its PTR, updates the sharing in place, and touches no instance, volume or shared IPv4."""
    after = deployment.dc1
    v6range = after.one("ipv6Range:Ipv6Range")
    range_addr = v6range.state["range"]
    shared6 = after.outputs["sharedIpv6"]

    def old(res: Registered) -> Registered | None:
        if res.urn == v6range.urn:
            return None
        if res.typ.endswith("Rdns") and unwrap(res.inputs["address"]) == shared6:
            return None
        if res.typ.endswith("instanceSharedIps:InstanceSharedIps"):
            addresses = [a for a in res.inputs["addresses"] if a != range_addr]
            return dataclasses.replace(res, inputs={**res.inputs, "addresses": addresses})
        return res

    d, created = from_earlier(after, old)
    assert {t.rsplit(":", 1)[-1] for t in created} == {"Ipv6Range", "Rdns"}
    infra = {name: e for name, e in d.effects.items() if d.types[name] != COMMAND}
    assert infra == {"dc1-share-svr2": {"addresses": Effect.IN_PLACE}}, infra
    assert d.outcome is Outcome.IN_PLACE


def test_the_mailbox_features_on_a_deployed_stack_replace_no_linode(
    deployment: Deployment,
) -> None:
    """A stack deployed before issue 25: no Valkey or rspamd-controller password, a certificate
    without autodiscover.<domain> and the apex, no ManageSieve in the cloud firewall. The next
    `up` creates the two passwords, replaces the certificate request and the certificate (the
    rules table: dnsNames is create-time, hashicorp/terraform-provider-tls), updates the
    firewall's rules in place, and touches no instance, volume or shared IP."""
    after = deployment.dc1
    domain = after.outputs["mailHost"].removeprefix("mail.")
    added = {f"autodiscover.{domain}", domain}

    def old(res: Registered) -> Registered | None:
        if res.typ.endswith("RandomPassword") and res.urn.endswith(
            ("-valkey", "-rspamd-controller")
        ):
            return None
        if res.typ.endswith("certRequest:CertRequest"):
            names = [n for n in res.inputs["dnsNames"] if n not in added]
            return dataclasses.replace(res, inputs={**res.inputs, "dnsNames": names})
        if res.typ.endswith("firewall:Firewall"):
            rules = [{**r, "ports": r["ports"].replace(",4190", "")} if "ports" in r else r
                     for r in res.inputs["inbounds"]]  # fmt: skip
            return dataclasses.replace(res, inputs={**res.inputs, "inbounds": rules})
        return res

    d, created = from_earlier(after, old)
    assert {t.rsplit(":", 1)[-1] for t in created} == {"RandomPassword"}
    infra = {name: e for name, e in d.effects.items() if d.types[name] != COMMAND}
    assert infra.pop("dc1-fw") == {"inbounds": Effect.IN_PLACE}, infra
    assert {n: e.get("dnsNames") for n, e in infra.items() if "dnsNames" in e} == {
        "dc1-tls": Effect.REPLACE
    }, infra
    replaced = {d.types[n] for n, e in infra.items() if Effect.REPLACE in e.values()}
    assert replaced <= {"tls:index/certRequest:CertRequest",
                        "tls:index/locallySignedCert:LocallySignedCert"}, infra  # fmt: skip


# -- options the engine acts on ---------------------------------------------------------------
def test_data_and_the_shared_ip_are_protected(deployment: Deployment) -> None:
    for result in (deployment.dc1, deployment.dc2):
        for res in result.resources:
            if res.typ in KEPT_TYPES:
                assert res.options.protect, res.name
            if res.typ == VOLUME:
                assert res.options.retain_on_delete, res.name
            if res.typ == INSTANCE:
                assert set(res.options.ignore_changes) >= {
                    "authorizedKeys", "rootPass", "image", "firewallId", "networkHelper",
                    "privateIp", "interfaceGeneration",
                }  # fmt: skip
                assert res.inputs["networkHelper"] is False
                assert res.options.delete_before_replace  # fixed, account-unique labels


def test_every_instance_input_that_replaces_is_create_time_only(deployment: Deployment) -> None:
    """An Instance input whose change replaces the node (the table says so) is one the program
    sets only for Linode's creation: ignored after it, so no config change can replace a node."""
    for result in (deployment.dc1, deployment.dc2):
        for res in result.of_type("instance:Instance"):
            replacing = {k for k in res.inputs if change_rules.rule(INSTANCE, k).effect
                         is Effect.REPLACE}  # fmt: skip
            assert replacing, "the check is not vacuous: image, firewallId ... are set"
            assert replacing <= set(res.options.ignore_changes), res.name


def test_the_interface_facts_are_the_installed_sdks() -> None:
    """What change_rules cites from pulumi_linode 6.8 is what the installed SDK says: two
    interface models (the legacy configuration profile interfaces we use, and Linode
    interfaces, chosen by interface_generation with an account-wide default), a fixed VPC
    address on a legacy interface, firewall_id replacing a node, a private IPv4 that cannot be
    turned off, and the resource types the table names."""
    import inspect

    import pulumi_linode as linode
    from pulumi_linode import instance, vpc, vpc_subnet

    text = inspect.getsource(instance)
    assert "Changing `firewall_id` forces the creation of a new Linode Instance" in text
    assert "It can be enabled on an existing Linode but it can't be disabled." in text
    assert ("(`linode`, `legacy_config`; default is determined by the account "
            "`interfaces_for_new_linodes` setting)") in text  # fmt: skip
    assert 'Requires `interface_generation = "linode"`' in text  # linode_interfaces
    params = inspect.signature(linode.InstanceArgs).parameters
    assert {"interfaces", "interface_generation", "linode_interfaces"} <= set(params)
    iface = inspect.signature(linode.InstanceInterfaceArgs).parameters
    assert {"purpose", "subnet_id", "ipv4", "primary"} <= set(iface)
    assert {"vpc", "nat11"} == set(inspect.signature(linode.InstanceInterfaceIpv4Args).parameters)
    assert f"'{change_rules.VPC}'" in inspect.getsource(vpc)
    assert f"'{change_rules.VPC_SUBNET}'" in inspect.getsource(vpc_subnet)
    # And the table holds them: the legacy interfaces power a node off and on, the model
    # replaces it.
    assert change_rules.rule(INSTANCE, "interfaces").effect is Effect.DISRUPTIVE
    assert change_rules.rule(INSTANCE, "interfaceGeneration").effect is Effect.REPLACE
    assert change_rules.rule(INSTANCE, "firewallId").effect is Effect.REPLACE
    assert change_rules.rule(change_rules.VPC_SUBNET, "ipv4").effect is Effect.REPLACE


# What the installed pulumi_linode says a change of an input does, in its own argument docs.
# The SDK holds no schema and no replace_on_changes (the provider decides a replacement in its
# Diff, out of reach of the SDK): its wording is its only signal, and these phrases are every
# kind of it that the package uses (grep of pulumi_linode 6.8 for forces/replace/migration/
# updated/existing). A phrase in the doc of an input, or of an input type nested in it (an
# object storage key's bucket access), decides for the whole input, as RULES does.
SDK_REPLACES = "forces the creation of a new"
SDK_UPDATES = ("will trigger a migration", "may be updated", "can be enabled on an existing")
# The RULES entries the SDK words, and nothing else: the SDK says nothing of the firewall's,
# rDNS', instance IP's, VPC's (its region), subnet's, shared IPs', placement group's, domain's
# or bucket's inputs, nor of an instance's image, authorized keys or root password. Those rest
# on the provider's Go sources that RULES cites. (A new phrase in an SDK upgrade fails this
# test on purpose: add the entry once RULES agrees with it.)
SDK_WORDED = {
    (INSTANCE, "firewallId"),  # forces a new Linode Instance
    (INSTANCE, "region"),  # triggers a migration
    (INSTANCE, "privateIp"),  # can be enabled on an existing Linode
    (VOLUME, "region"),  # forces a new Linode Volume
    (IPV6_RANGE, "linodeId"),  # may be updated to reassign the range
    ("linode:index/objectStorageKey:ObjectStorageKey", "bucketAccesses"),  # permissions: new key
}


def _sdk_docs(typ: str) -> dict[str, str]:
    """Input name (as RULES spells it) -> the installed SDK's doc of that input of ``typ``,
    with the docs of the input types nested in it."""
    import pulumi_linode

    name = typ.rsplit(":", 1)[1]
    module = inspect.getmodule(getattr(pulumi_linode, name))
    assert module is not None and f"'{typ}'" in inspect.getsource(module), typ
    # VpcSubnetArgs is a nested type's name: the resource's own arguments are VpcSubnetInitArgs.
    args = getattr(module, f"{name}InitArgs", None) or getattr(module, f"{name}Args")

    def docs(cls: type, seen: frozenset[type]) -> dict[str, str]:
        out: dict[str, str] = {}
        for py, prop in vars(cls).items():
            if not isinstance(prop, property):
                continue
            text = prop.__doc__ or ""
            returns = repr(prop.fget.__annotations__.get("return", "")) if prop.fget else ""
            for nested_name in set(re.findall(r"\b([A-Z]\w*Args)\b", returns)):
                nested = getattr(module, nested_name)
                if nested not in seen:
                    text += " " + " ".join(docs(nested, seen | {nested}).values())
            out[re.sub(r"_([a-z0-9])", lambda m: m[1].upper(), py)] = " ".join(text.split())
        return out

    return docs(args, frozenset({args}))


def test_rules_agree_with_the_installed_sdks_wording() -> None:
    """RULES is our reading of the provider; where the installed SDK words what a change does,
    the two must agree (replace, or an update of the running resource)."""
    worded: dict[tuple[str, str], Effect] = {}
    for typ, rules in RULES.items():
        if not typ.startswith("linode:"):
            continue
        docs = _sdk_docs(typ)
        for key, rule in rules.items():
            # A misspelt key would leave the real input to the unknown-input default.
            assert key in docs, f"{typ}: the SDK has no input {key!r}"
            said = f"{typ}.{key}: RULES says {rule.effect.label}, the SDK: {docs[key]!r}"
            if SDK_REPLACES in docs[key]:
                assert rule.effect is Effect.REPLACE, said
                worded[(typ, key)] = rule.effect
            if any(phrase in docs[key] for phrase in SDK_UPDATES):
                assert rule.effect is not Effect.REPLACE, said
                worded[(typ, key)] = rule.effect
    assert set(worded) == SDK_WORDED
    # A resize or a move is a migration, "cold" unless migration_type says otherwise: the
    # node is powered off, one at a time (the rolling outcome of instanceType).
    migration = _sdk_docs(INSTANCE)["migrationType"]
    assert "when updating the type or region of a Linode" in migration
    assert "default `cold`" in migration
    assert change_rules.rule(INSTANCE, "type").effect is Effect.DISRUPTIVE
    assert change_rules.rule(INSTANCE, "region").effect is Effect.DISRUPTIVE


def test_adding_the_vpc_to_a_deployed_stack_rolls_one_node_at_a_time(
    deployment: Deployment,
) -> None:
    """A stack deployed before the VPC: no VPC or subnet, nodes with Linode's private IPv4 and
    no interfaces, a handover stamped with the plan alone. The next `up` creates the VPC and
    the subnet, and adds each node's VPC interface (a power cycle, change_rules.RULES): svr2
    first, then the handover on svr2 (its trigger changed), then svr1. Nothing is replaced."""
    after = deployment.dc1
    vpc_types = {change_rules.VPC, change_rules.VPC_SUBNET}

    def old(res: Registered) -> Registered | None:
        if res.typ in vpc_types:
            return None
        if res.typ == INSTANCE:
            inputs = {k: v for k, v in res.inputs.items()
                      if k not in ("interfaces", "interfaceGeneration")}  # fmt: skip
            return dataclasses.replace(res, inputs={**inputs, "privateIp": True})
        if res.name == "dc1-svr2-handover":
            triggers = [res.inputs["triggers"][0]]
            return dataclasses.replace(res, inputs={**res.inputs, "triggers": triggers})
        return res

    d, created = from_earlier(after, old)
    assert created == vpc_types
    for slot in ("svr1", "svr2"):
        assert d.effects[f"dc1-{slot}"] == {"interfaces": Effect.DISRUPTIVE}
    assert d.outcome is Outcome.ROLLING
    # The handover runs again: svr2 takes the role before svr1 powers off.
    assert d.effect("dc1-svr2-handover") is Effect.REPLACE
    svr1 = after.one_named(INSTANCE, "dc1-svr1")
    assert after.one_named(COMMAND, "dc1-svr2-handover").urn in svr1.options.depends_on


def test_the_rules_table_covers_every_input_we_set(deployment: Deployment) -> None:
    for result in (deployment.dc1_first, deployment.dc1, deployment.dc2):
        for res in result.resources:
            if res.typ.startswith(change_rules.COMPONENT_PREFIX):
                continue
            missing = set(res.inputs) - set(change_rules.RULES[res.typ])
            assert not missing, f"{res.typ}: no rule for {sorted(missing)}"
    assert change_rules.rule(INSTANCE, "somethingNew").effect is Effect.REPLACE


def test_every_config_key_has_a_documented_outcome() -> None:
    from cluster.config import KEYS, SECRET_KEYS

    assert set(KEY_CHANGES) == {*KEYS, *SECRET_KEYS, "dc"}


def test_readme_table_is_generated_from_the_rules() -> None:
    readme = (ROOT / "README.md").read_text()
    assert change_rules.markdown() in readme, (
        "README's 'Changing a running cluster' table is stale: regenerate it with "
        "`python -m cluster.pulumi.change_rules --markdown`"
    )


# -- SSH sessions --------------------------------------------------------------------------------
def _width(nodes: list[Registered], result: Result) -> int:
    """The most commands that could run at once: the largest antichain of the dependency
    order (Dilworth: commands minus a maximum matching of the comparability graph)."""
    by_urn = {r.urn: r for r in result.resources}
    memo: dict[str, frozenset[str]] = {}

    def below(urn: str) -> frozenset[str]:
        if urn not in memo:
            deps = by_urn[urn].dependencies if urn in by_urn else []
            memo[urn] = frozenset(deps).union(*(below(d) for d in deps))
        return memo[urn]

    urns = [n.urn for n in nodes]
    reach = {u: below(u) & set(urns) for u in urns}
    match: dict[str, str] = {}

    def augment(u: str, seen: set[str]) -> bool:
        for v in reach[u]:
            if v not in seen:
                seen.add(v)
                if v not in match or augment(match[v], seen):
                    match[v] = u
                    return True
        return False

    return len(urns) - sum(augment(u, set()) for u in urns)


def test_ssh_sessions_per_node_stay_bounded(deployment: Deployment) -> None:
    result = deployment.dc1
    by_host: dict[str, list[Registered]] = {}
    for cmd in result.of_type("remote:Command"):
        by_host.setdefault(unwrap(cmd.inputs["connection"])["host"], []).append(cmd)
    assert len(by_host) == 2
    for commands in by_host.values():
        assert _width(commands, result) <= LANES < 10  # sshd: MaxStartups 10:30:100


def test_shared_ip_steps_undo_themselves(deployment: Deployment) -> None:
    """bgp -> arp drops these steps: their Commands' delete removes the VIP from lo."""
    commands = {c.name: c for c in deployment.dc1.of_type("remote:Command")}
    for node in ("dc1-svr1", "dc1-svr2"):
        undo = commands[resource_name(node, "heartbeat.shared-ip-on-lo")].inputs.get("delete")
        assert undo and "ip addr del" in undo and "SHARED_IP_METHOD" in undo
    # (No Linode region takes arp today, so the plan, not the program, shows the switch.)
    arp = load_config({**read_stack_config("dc1"), "sharedIpMethod": "arp"}, "dc1")
    assert "heartbeat.shared-ip-on-lo" not in {s.name for s in plan_structure(arp)}
