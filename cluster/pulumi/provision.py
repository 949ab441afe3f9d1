"""The Pulumi applier of the per-host plan: one ``remote.Command`` per step per node.

Pulumi must know every resource and its dependencies when the program runs, but the plan's
contents depend on addresses Linode assigns (and, for a standby, on the peer stack's outputs),
which are Outputs. The plan's *structure* (step names, dependencies, which steps carry secrets)
does not depend on addresses, so it is computed once from a placeholder topology with the same
config; each step's command and stdin come from the real plan, built inside ``apply`` from the
real addresses (once per distinct set of inputs). A step the placeholder has but the real plan
lacks runs ``true``; a real step the placeholder lacks is an error, never silently skipped.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_command.remote as remote

from cluster.config import DC_NAMES, StackConfig
from cluster.hostplan import build_stack_plans
from cluster.material import ClusterSecrets, generate
from cluster.plan import HostPlan, file_step_name
from cluster.pulumi import ssh
from cluster.pulumi.peer import dict_to_addresses, node_address
from cluster.services import bgp
from cluster.topology import SLOTS, DcAddresses, NodeAddresses, Topology, node_name

PLATFORM = "linode"
# Commands of one node in flight at once, at most: each holds an SSH connection, and sshd's
# default `MaxStartups 10:30:100` starts refusing unauthenticated connections beyond 10. Four
# leaves room for an operator's own sessions and for the handshakes of the next commands.
LANES = 4

# Steps whose effect outlives them: when a later config drops the step (sharedIpMethod bgp ->
# arp), Pulumi deletes its Command and runs the service's undo script (``bgp.UNDO_SCRIPT``).
UNDO = {bgp.LO_STEP: bgp.UNDO_SCRIPT, file_step_name(bgp.LO_CONFIG): bgp.UNDO_SCRIPT}
ABSENT: dict[str, Any] = {"command": "true", "stdin": "", "digest": "absent", "secret": False}


@dataclass(frozen=True)
class StepShape:
    """What the resource graph needs of a step: its name, same-host and cross-host deps."""

    node: str
    name: str
    deps: tuple[str, ...]
    remote_deps: tuple[tuple[str, str], ...]
    secret: bool


# -- structure ---------------------------------------------------------------------------------
def _placeholder_dc(dc: str) -> DcAddresses:
    """Documentation addresses (RFC 5737, RFC 3849): never real, never contacted."""
    i = DC_NAMES.index(dc) + 1
    return DcAddresses(
        shared_ipv4=f"192.0.2.{i}0",
        # Present, as it is on every stack from this version on: a step that only a dual-stack
        # plan has must be in the structure.
        shared_ipv6=f"2001:db8:{i}:a::10",
        nodes={
            slot: NodeAddresses(f"192.0.2.{i}{n}", f"192.168.{127 + i}.{n}", f"2001:db8::{i}:{n}")
            for n, slot in enumerate(SLOTS, start=1)
        },
    )


@functools.lru_cache(maxsize=4)
def _placeholder_secrets(domain: str) -> ClusterSecrets:
    return generate(domain, DC_NAMES, {dc: [f"mail.{domain}", f"{dc}.{domain}"] for dc in DC_NAMES})


def _placeholder_plans(config: StackConfig) -> list[dict[str, HostPlan]]:
    """Plans for every peer situation this stack may meet: a standby always has the active
    DC's addresses; an active DC may not know its peer yet (the first ``up`` of dc1)."""
    both = {dc: _placeholder_dc(dc) for dc in DC_NAMES}
    variants = [both]
    if config.is_active:
        variants.append({config.dc: both[config.dc]})
    secrets = _placeholder_secrets(config.domain)
    out = []
    for dcs in variants:
        topo = Topology(config, dcs)
        out.append(build_stack_plans(topo, secrets, PLATFORM))
    return out


def plan_structure(config: StackConfig) -> list[StepShape]:
    """Every step of every node of this stack, in an order where dependencies come first."""
    own = {node_name(config.dc, slot) for slot in SLOTS}
    shapes: dict[tuple[str, str], StepShape] = {}
    for plans in _placeholder_plans(config):
        for node, plan in plans.items():
            for step in plan.ordered():
                key = (node, step.name)
                prev = shapes.get(key)
                deps = tuple(dict.fromkeys((*(prev.deps if prev else ()), *step.after,
                                            *step.watch)))  # fmt: skip
                # Ordering across stacks cannot be a resource dependency: the deploy order
                # (README) provides it. Within the stack it can.
                remote_deps = tuple(
                    dict.fromkeys(
                        (*(prev.remote_deps if prev else ()),
                         *(d for d in step.after_remote if d[0] in own))
                    )
                )  # fmt: skip
                shapes[key] = StepShape(node, step.name, deps, remote_deps,
                                        step.secret or bool(prev and prev.secret))  # fmt: skip
    return _ordered(shapes)


def _ordered(shapes: dict[tuple[str, str], StepShape]) -> list[StepShape]:
    done: list[StepShape] = []
    seen: set[tuple[str, str]] = set()

    def visit(key: tuple[str, str], stack: tuple[tuple[str, str], ...]) -> None:
        if key in seen:
            return
        if key in stack:
            raise ValueError(f"dependency cycle across hosts at {key}")
        shape = shapes[key]
        for dep in (*((shape.node, d) for d in shape.deps), *shape.remote_deps):
            visit(dep, (*stack, key))
        seen.add(key)
        done.append(shape)

    for key in shapes:
        visit(key, ())
    return done


def applied_command(node: str, step: str, secret: bool, command: str) -> str:
    """What a Command runs for a step. A secret step's output is dropped and a failure says
    only which step failed: the provider puts a failed command's output into its error message,
    which Pulumi prints and CI logs keep, and such output might echo what the step was fed."""
    if not secret:
        return command
    return (
        f"{command} >/dev/null 2>&1 || {{ rc=$?; echo 'mailcluster: step {step} failed "
        f"(exit '$rc'); its output is withheld because the step handles a secret: run it by "
        f"hand on {node} to see why' >&2; exit $rc; }}"
    )


def lanes(shapes: Sequence[StepShape]) -> dict[tuple[str, str], tuple[str, str]]:
    """The step each step must wait for besides its own dependencies, so that a node's steps
    form at most ``LANES`` chains: a chain runs one command at a time, so a node never has more
    than ``LANES`` commands (SSH sessions) in flight. In dependency order, a step joins a chain
    whose last step it already waits for (most do: no extra edge), else the chain with the
    oldest last step, which it then waits for. Edges only point to earlier steps: no cycle."""
    ancestors: dict[tuple[str, str], frozenset[tuple[str, str]]] = {}
    position: dict[tuple[str, str], int] = {}
    tails: dict[str, list[tuple[str, str] | None]] = {}
    out: dict[tuple[str, str], tuple[str, str]] = {}
    for index, shape in enumerate(shapes):
        key = (shape.node, shape.name)
        found: set[tuple[str, str]] = set()
        for dep in (*((shape.node, d) for d in shape.deps), *shape.remote_deps):
            found |= ancestors[dep] | {dep}
        chains = tails.setdefault(shape.node, [None] * LANES)
        free = [i for i, tail in enumerate(chains) if tail is None or tail in found]
        if free:
            lane = free[0]
        else:
            lane = min(range(LANES), key=lambda i: position[chains[i]])  # type: ignore[index]
            tail = chains[lane]
            assert tail is not None
            out[key] = tail
            found |= ancestors[tail] | {tail}
        chains[lane] = key
        ancestors[key] = frozenset(found)
        position[key] = index
    return out


def resource_name(node: str, step: str) -> str:
    """``dc1-svr1-file-etc-postfix-main.cf``: Pulumi names stay readable and URN-safe."""
    return f"{node}-" + re.sub(r"[^A-Za-z0-9._-]+", "-", step).strip("-")


# -- real plans --------------------------------------------------------------------------------
def real_plans(
    config: StackConfig,
    own: dict[str, Any],
    peer: dict[str, Any] | None,
    secrets: dict[str, Any],
) -> dict[str, HostPlan]:
    dcs = {config.dc: dict_to_addresses(own)}
    if peer:
        dcs[config.peer_dc] = dict_to_addresses(peer)
    if config.active_dc not in dcs:
        raise RuntimeError(
            f"activeDc is {config.active_dc} but stack {config.peer_stack!r} (peerStack) has no "
            f"'addresses' output yet: run `pulumi up -s {config.peer_stack}` first"
        )
    topo = Topology(config, dcs)
    cs = ClusterSecrets.from_dict(secrets)
    return build_stack_plans(topo, cs, PLATFORM)


def rendered_steps(
    config: StackConfig,
    shapes: Sequence[StepShape],
    own: dict[str, Any],
    peer: dict[str, Any] | None,
    secrets: dict[str, Any],
) -> dict[tuple[str, str], dict[str, Any]]:
    """Command, stdin and digest of every (node, step) of the structure."""
    plans = real_plans(config, own, peer, secrets)
    wanted = {(s.node, s.name): s for s in shapes}
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for node, plan in plans.items():
        digests = plan.digests()
        for step in plan.steps:
            shape = wanted.get((node, step.name))
            if shape is None:
                raise RuntimeError(
                    f"{node}: step {step.name!r} exists only with real addresses; the plan's "
                    "structure must not depend on addresses (fix the service that adds it)"
                )
            if step.secret and not shape.secret:
                raise RuntimeError(f"{node}: step {step.name!r} is secret only with real input")
            out[(node, step.name)] = {
                "command": step.command,
                "stdin": step.stdin,
                "digest": digests[step.name],
                "secret": step.secret,
            }
    return {key: out.get(key, ABSENT) for key in wanted}


@dataclass
class ProvisioningArgs:
    config: StackConfig
    own_addresses: pulumi.Output[dict[str, Any]]
    peer_addresses: pulumi.Output[dict[str, Any] | None]
    secrets: pulumi.Output[dict[str, Any]]
    ssh_private_key: pulumi.Input[str] | None
    infrastructure: Sequence[pulumi.Resource]


class Provisioning(pulumi.ComponentResource):
    """``mailcluster:index:Provisioning``: every node's plan as remote Commands.

    Attributes:
        shapes: the plan structure (``StepShape`` per node and step, dependencies first).
        commands: ``{(node, step name): remote.Command}``.
        digests: ``Output`` of ``{"node/step": digest}``.
    """

    def __init__(
        self, name: str, args: ProvisioningArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mailcluster:index:Provisioning", name, None, opts)
        config = args.config
        self.shapes = plan_structure(config)
        slots = {node_name(config.dc, slot): slot for slot in SLOTS}
        cache: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}

        def render(values: list[Any]) -> dict[tuple[str, str], dict[str, Any]]:
            own, peer, secrets = values
            key = hashlib.sha256(
                json.dumps([own, peer, secrets], sort_keys=True).encode()
            ).hexdigest()
            if key not in cache:
                cache[key] = rendered_steps(config, self.shapes, own, peer, secrets)
            return cache[key]

        rendered = pulumi.Output.all(args.own_addresses, args.peer_addresses, args.secrets).apply(
            render
        )
        # Secret like the material they derive from: a secret step's digest stays secret.
        self.digests: pulumi.Output[dict[str, str]] = rendered.apply(
            lambda r: {f"{n}/{s}": v["digest"] for (n, s), v in r.items()}
        )
        self.commands: dict[tuple[str, str], remote.Command] = {}
        self.lane_after = lanes(self.shapes)
        for shape in self.shapes:
            slot = slots[shape.node]
            connection = ssh.connection(
                node_address(args.own_addresses, slot, "publicIpv4"), args.ssh_private_key
            )
            self.commands[(shape.node, shape.name)] = self._command(
                shape, rendered, connection, args.infrastructure
            )
        self.register_outputs({"digests": self.digests})

    def _command(
        self,
        shape: StepShape,
        rendered: pulumi.Output[dict[tuple[str, str], dict[str, Any]]],
        connection: remote.ConnectionArgs,
        infrastructure: Sequence[pulumi.Resource],
    ) -> remote.Command:
        key = (shape.node, shape.name)
        field = rendered.apply(lambda r: r[key])

        def part(item: str, secret: bool) -> pulumi.Output[str]:
            value = field.apply(lambda v: str(v[item]))
            # Everything derives from the secret material, so Pulumi would mark every value
            # secret. The plan's rule is that only a secret step's stdin holds a secret:
            # unsecret the rest, so `pulumi preview` shows what changes on a host.
            return pulumi.Output.secret(value) if secret else pulumi.Output.unsecret(value)

        deps: list[pulumi.Resource] = [*infrastructure]
        deps += [self.commands[(shape.node, d)] for d in shape.deps]
        deps += [self.commands[d] for d in shape.remote_deps]
        if key in self.lane_after:
            deps.append(self.commands[self.lane_after[key]])
        opts = pulumi.ResourceOptions(
            parent=self,
            depends_on=deps,
            # A secret step's output could echo what it was fed: keep it out of state in clear.
            additional_secret_outputs=["stdout", "stderr"] if shape.secret else None,
        )
        return remote.Command(
            resource_name(shape.node, shape.name),
            connection=connection,
            create=part("command", False).apply(
                lambda c: applied_command(shape.node, shape.name, shape.secret, c)
            ),
            stdin=part("stdin", shape.secret),
            # The digest covers the command, stdin and the steps it watches: a step re-runs
            # exactly when one of those changes. A secret step's digest stays secret too.
            triggers=[part("digest", shape.secret)],
            delete=UNDO.get(shape.name),
            add_previous_output_in_env=False,
            # A secret step logs nothing (applied_command keeps its output out of errors too).
            logging=remote.Logging.NONE if shape.secret else remote.Logging.STDOUT_AND_STDERR,
            opts=opts,
        )
