"""The Pulumi applier: one remote.Command per plan step per node, exactly the plan's content."""

from __future__ import annotations

import types
from typing import Any

import pytest
from pulumi_harness import (
    SSH_PRIVATE_KEY,
    Deployment,
    Result,
    committed_deployment,
    full_secrets,
    is_wrapped_secret,
    plain_strings,
    run_stack,
    unwrap,
    variant_run,
)

from cluster import hostcontext, hostplan, services
from cluster.config import StackConfig, load_config
from cluster.plan import HostPlan, script_step
from cluster.pulumi.provision import applied_command, plan_structure, real_plans, resource_name
from cluster.stackfiles import read_stack_config


@pytest.fixture(scope="module")
def deployment() -> Deployment:
    return committed_deployment()


def _config(dc: str, **changes: Any) -> StackConfig:
    return load_config({**read_stack_config(dc), **changes}, dc)


def _plans(result: Result, peer: Result | None, material: Result, dc: str) -> dict[str, HostPlan]:
    return real_plans(
        _config(dc),
        result.outputs["addresses"],
        peer.outputs["addresses"] if peer else None,
        full_secrets(result, material),
    )


def _pair_of(deployment: Deployment, dc: str) -> tuple[Result, Result]:
    """(this stack's result, the peer's) after the first deployment."""
    if dc == "dc1":
        return deployment.dc1, deployment.dc2
    return deployment.dc2, deployment.dc1


def _commands(result: Result) -> dict[str, Any]:
    """The plan's Commands (the handover before a rolling update belongs to DataCentre: see
    test_changes.py)."""
    return {c.name: c for c in result.of_type("remote:Command") if not c.name.endswith("-handover")}


@pytest.mark.parametrize("dc", ["dc1", "dc2"])
def test_one_command_per_step_per_node_with_the_plans_content(
    deployment: Deployment, dc: str
) -> None:
    result, peer = _pair_of(deployment, dc)
    plans = _plans(result, peer, deployment.dc1, dc)
    assert sorted(plans) == [f"{dc}-svr1", f"{dc}-svr2"]
    commands = _commands(result)
    expected = {resource_name(node, s.name) for node, p in plans.items() for s in p.steps}
    assert set(commands) == expected
    assert len(commands) == sum(len(p.steps) for p in plans.values())
    for node, plan in plans.items():
        digests = plan.digests()
        public_ip = result.outputs["nodes"][node]["publicIpv4"]
        for step in plan.steps:
            cmd = commands[resource_name(node, step.name)]
            assert cmd.inputs["create"] == applied_command(node, step.name, step.secret,
                                                           step.command)  # fmt: skip
            assert unwrap(cmd.inputs.get("stdin", "")) == step.stdin
            assert unwrap(cmd.inputs["triggers"]) == [digests[step.name]]
            conn = unwrap(cmd.inputs["connection"])
            assert (conn["host"], conn["user"]) == (public_ip, "root")
            if step.secret:
                assert is_wrapped_secret(cmd.inputs["stdin"]), step.name
                # Nothing logged, and a failure's message carries no output (it used to log
                # stderr).
                assert cmd.inputs["logging"] == "none"
                assert ">/dev/null 2>&1 ||" in cmd.inputs["create"]
            elif step.stdin:
                assert not is_wrapped_secret(cmd.inputs["stdin"]), step.name


def test_dependencies_follow_the_plan(deployment: Deployment) -> None:
    result = deployment.dc1
    plans = _plans(result, deployment.dc2, deployment.dc1, "dc1")
    commands = _commands(result)
    infra = {r.urn for r in result.resources if r.typ.startswith("linode:index/instance:")}
    checked = 0
    for node, plan in plans.items():
        for step in plan.steps:
            deps = set(commands[resource_name(node, step.name)].dependencies)
            assert infra <= deps, "every step waits for both instances"
            for dep in (*step.after, *step.watch):
                assert commands[resource_name(node, dep)].urn in deps
                checked += 1
            for host, dep in step.after_remote:
                if host in plans:
                    assert commands[resource_name(host, dep)].urn in deps
    assert checked > 0


def test_first_up_of_a_stack_provisions_its_nodes(deployment: Deployment) -> None:
    # The firewall names no node (the internal ports: the VPC subnet), so a stack's first `up`
    # builds its nodes behind it and provisions them in the same run (it used to build only
    # the infrastructure, because the firewall could name the nodes only once they existed).
    for first, dc in ((deployment.dc1_first, "dc1"), (deployment.dc2, "dc2")):
        assert first.of_type("instance:Instance")
        hosts = {unwrap(c.inputs["connection"])["host"] for c in first.of_type("remote:Command")}
        assert hosts == {n["publicIpv4"] for n in first.outputs["addresses"]["nodes"].values()}
        assert len(hosts) == 2, dc


def test_dc1_without_peer_still_provisions(deployment: Deployment) -> None:
    result = deployment.dc1_first
    plans = _plans(result, None, result, "dc1")
    commands = _commands(result)
    for node, plan in plans.items():
        for step in plan.steps:
            create = commands[resource_name(node, step.name)].inputs["create"]
            assert create == applied_command(node, step.name, step.secret, step.command)
    # Steps that exist only once the peer is known run `true` until then.
    known = {resource_name(n, s.name) for n, p in plans.items() for s in p.steps}
    for name, cmd in commands.items():
        if name not in known:
            assert cmd.inputs["create"] == "true"


@pytest.mark.parametrize("dc", ["dc1", "dc2"])
def test_structure_does_not_depend_on_addresses(deployment: Deployment, dc: str) -> None:
    result, peer = _pair_of(deployment, dc)
    shapes = plan_structure(_config(dc))
    plans = _plans(result, peer, deployment.dc1, dc)
    assert {(s.node, s.name) for s in shapes} == {
        (node, step.name) for node, plan in plans.items() for step in plan.steps
    }
    position = {(s.node, s.name): i for i, s in enumerate(shapes)}
    for s in shapes:
        for dep in s.deps:
            assert position[(s.node, dep)] < position[(s.node, s.name)]


def test_building_twice_gives_the_same_digests(deployment: Deployment) -> None:
    again = run_stack(
        "dc1", read_stack_config("dc1"), deployment.dc2.peer_view(), previous=deployment.dc1
    )
    first = {n: unwrap(c.inputs["triggers"]) for n, c in _commands(deployment.dc1).items()}
    second = {n: unwrap(c.inputs["triggers"]) for n, c in _commands(again).items()}
    assert first == second
    for node in ("dc1-svr1", "dc1-svr2"):
        own = [str(v) for n, v in first.items() if n.startswith(f"{node}-")]
        assert len(set(own)) == len(own), "a node's digests tell its steps apart"


def test_no_commands_when_provision_is_false() -> None:
    result = run_stack("dc1", {**read_stack_config("dc1"), "provision": False})
    assert not result.of_type("remote:Command")
    # Without our BIND the PTRs do not wait for provisioning: two nodes' IPv4 and IPv6, and
    # the shared IPv4 and IPv6.
    assert len(result.of_type("Rdns")) == 6


def test_ssh_private_key_from_config_stays_secret() -> None:
    key = SSH_PRIVATE_KEY
    result = variant_run()
    commands = result.of_type("remote:Command")
    assert commands
    for cmd in commands:
        assert is_wrapped_secret(cmd.inputs["connection"]) or is_wrapped_secret(
            cmd.inputs["connection"].get("privateKey")
        )
        assert unwrap(cmd.inputs["connection"])["privateKey"] == key
        assert not any("MOCKKEYMATERIAL" in s for s in plain_strings(cmd.inputs))


def test_secret_steps_get_secret_stdin_and_triggers(
    monkeypatch: pytest.MonkeyPatch, deployment: Deployment
) -> None:
    """With a service that feeds a password on stdin (whatever the real services do today)."""

    def steps(ctx: hostcontext.HostContext) -> list[Any]:
        return [
            script_step(
                "zz.secret",
                "cat >/dev/null\n",
                stdin=ctx.secrets.db_replication,
                secret=True,
                after=("packages",),
            ),
            script_step("zz.reload", "true\n", watch=("zz.secret",)),
        ]

    fake = types.SimpleNamespace(PACKAGES=(), steps=steps)
    monkeypatch.setattr(hostplan, "SERVICES", (*services.SERVICES, fake))
    result = run_stack(
        "dc1", read_stack_config("dc1"), deployment.dc2.peer_view(), previous=deployment.dc1
    )
    commands = _commands(result)
    password = result.outputs["clusterSecrets"]["db_replication"]
    for node in ("dc1-svr1", "dc1-svr2"):
        secret = commands[resource_name(node, "zz.secret")]
        assert is_wrapped_secret(secret.inputs["stdin"])
        assert unwrap(secret.inputs["stdin"]) == password
        triggers = secret.inputs["triggers"]
        assert is_wrapped_secret(triggers) or is_wrapped_secret(triggers[0])
        reload = commands[resource_name(node, "zz.reload")]
        assert secret.urn in reload.dependencies
    for cmd in commands.values():
        assert not any(password in s for s in plain_strings(cmd.inputs))


def test_resource_names_are_readable_and_unique() -> None:
    assert resource_name("dc1-svr1", "file:/etc/postfix/main.cf") == (
        "dc1-svr1-file-etc-postfix-main.cf"
    )
    shapes = plan_structure(_config("dc1"))
    names = [resource_name(s.node, s.name) for s in shapes]
    assert len(names) == len(set(names))
