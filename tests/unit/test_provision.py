"""The Pulumi applier: one remote.Command per plan step per node, exactly the plan's content."""

from __future__ import annotations

import subprocess
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
from cluster.plan import CHANGED_MARK, HostPlan, Step, script_step
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


# The applier's contract, stated here rather than recomputed with applied_command (the program
# calls that very function, so comparing with it alone proves only that it is called):
# - every step is its plan command verbatim: bash under strict modes (Step.command);
# - a secret step's output never reaches Pulumi (its error message, logs, CI), a failure names
#   only the step, the node and the exit code, and the exit code is the step's own;
# - a secret reaches the host on stdin, never on the command line.
STRICT_BASH = "bash -c 'set -euo pipefail\n"
SECRET_SILENCE = " >/dev/null 2>&1 || { "


def assert_applied(create: str, node: str, step: Step) -> None:
    """``create`` is what the applier promises to run for ``step`` on ``node``."""
    assert create.startswith(STRICT_BASH), (step.name, create[:80])
    # The remote shell must parse it: a quoting slip (say a quote in a step name inside the
    # failure message) would fail every `up`, not one test.
    parsed = subprocess.run(["sh", "-n", "-c", create], capture_output=True, text=True,
                            check=False)  # fmt: skip
    assert parsed.returncode == 0, (step.name, parsed.stderr)
    if not step.secret:
        assert create == step.command, step.name
        return
    command, silence, handler = create.partition(SECRET_SILENCE)
    assert silence and command == step.command, step.name
    assert handler.startswith("rc=$?;") and handler.endswith("exit $rc; }"), handler
    assert f"mailcluster: step {step.name} failed" in handler and f" on {node} " in handler
    # (Empty when there is nothing to feed: no rootPassword configured.)
    assert not step.stdin or step.stdin not in create, step.name


def run_applied(create: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """Run a Command's create as the host does: remote.Command hands it to the login shell over
    SSH, the lab's applier to ``sh -c`` (cluster/lab/apply.py)."""
    return subprocess.run(["sh", "-c", create], input=stdin, capture_output=True, text=True,
                          timeout=30, check=False)  # fmt: skip


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
            assert_applied(cmd.inputs["create"], node, step)
            # And built by the function the tests below run for real.
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
            assert_applied(create, node, step)
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
    # One golden string per kind, for the fixed steps above, through the whole program: what
    # Linode's hosts are handed, spelt out (the checks above would pass a reworded wrapper).
    assert commands[resource_name("dc1-svr1", "zz.reload")].inputs["create"] == (
        "bash -c 'set -euo pipefail\ntrue\n'"
    )
    assert commands[resource_name("dc1-svr1", "zz.secret")].inputs["create"] == (
        "bash -c 'set -euo pipefail\ncat >/dev/null\n' >/dev/null 2>&1 || { rc=$?; "
        "echo 'mailcluster: step zz.secret failed (exit '$rc'); its output is withheld because "
        "the step handles a secret: run it by hand on dc1-svr1 to see why' >&2; exit $rc; }"
    )


# -- the wrapper, run: what a host does with a create string ---------------------------------
@pytest.mark.parametrize("secret", [False, True], ids=["plain", "secret"])
@pytest.mark.parametrize(
    ("script", "mode"),
    [
        ("false\necho reached\n", "errexit"),
        ('echo "$not_set"\necho reached\n', "nounset"),
        ("false | cat\necho reached\n", "pipefail"),
    ],
    ids=["errexit", "nounset", "pipefail"],
)
def test_a_failing_line_fails_the_step(script: str, mode: str, secret: bool) -> None:
    """The strict modes hold under the applier, the secret wrapper's `||` included (a shell
    ignores `set -e` on the left of `||`: the modes must live in the step's own bash)."""
    step = script_step("zz.strict", script, stdin="x" * 12 if secret else "", secret=secret)
    proc = run_applied(applied_command("dc1-svr1", step.name, step.secret, step.command),
                       step.stdin)  # fmt: skip
    assert proc.returncode != 0, (mode, proc)
    assert "reached" not in proc.stdout, mode
    if secret:
        assert proc.stdout == ""
        assert proc.stderr.startswith(
            f"mailcluster: step zz.strict failed (exit {proc.returncode});"
        ), proc.stderr


def test_a_secret_steps_failure_withholds_its_output_and_keeps_its_code() -> None:
    password = "s3cret-Passw0rd-on-stdin"
    # Echoes what it was fed on both streams, then fails with its own code.
    script = 'read -r pw\necho "out $pw"\necho "err $pw" >&2\nexit 3\n'
    step = script_step("zz.leaky", script, stdin=password + "\n", secret=True)
    create = applied_command("dc1-svr2", step.name, step.secret, step.command)
    assert password not in create
    proc = run_applied(create, step.stdin)
    assert proc.returncode == 3
    assert proc.stdout == ""
    assert password not in proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith("mailcluster: step zz.leaky failed (exit 3);"), line
    assert " on dc1-svr2 " in line


def test_a_secret_step_reads_its_stdin_and_succeeds_quietly() -> None:
    """stdin reaches the step through the wrapper (the wrapper redirects only its output), and
    a success prints nothing, its change line included."""
    password = "another-s3cret-of-31-characters"
    # Checks the length only: the value itself must not be on the command line.
    script = f'read -r pw\n[ "${{#pw}}" -eq {len(password)} ] || exit 4\necho "{CHANGED_MARK} pw"\n'
    step = script_step("zz.quiet", script, stdin=password + "\n", secret=True)
    proc = run_applied(applied_command("dc1-svr1", step.name, True, step.command), step.stdin)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    # The same step unwrapped shows its change line: the silence is the wrapper's.
    plain = run_applied(applied_command("dc1-svr1", step.name, False, step.command), step.stdin)
    assert (plain.returncode, plain.stdout) == (0, f"{CHANGED_MARK} pw\n")


def test_resource_names_are_readable_and_unique() -> None:
    assert resource_name("dc1-svr1", "file:/etc/postfix/main.cf") == (
        "dc1-svr1-file-etc-postfix-main.cf"
    )
    shapes = plan_structure(_config("dc1"))
    names = [resource_name(s.node, s.name) for s in shapes]
    assert len(names) == len(set(names))
