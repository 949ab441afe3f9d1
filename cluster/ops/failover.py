"""``failover --to DC``: the README's data-centre failover, rejoin and failback runbooks as one
command, for the lab and for Linode stacks.

The whole decision is ``plan_failover``: every stack whose ``activeDc`` is not ``DC`` gets it set,
and is applied, in an order that never leaves two writable masters:

- the stack that is to become the standby goes FIRST when it can be reached (its nodes turn
  read-only, its BIND a slave, its Postfix stops), then the new active stack is promoted. For the
  minute between the two applies nobody serves mail: senders queue and retry (the failback
  runbook's rule);
- when that stack cannot be reached (a lost data centre), only the new active stack is applied,
  and the plan says so: run the same command again once the lost DC is back, and it is rejoined
  as the standby (the rejoin runbook). Applying a stack that cannot be reached would fail half
  way, and could not step its nodes down anyway.

The command is therefore idempotent: a second run with the same ``--to`` plans nothing once both
stacks agree.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from cluster.config import DC_NAMES, other_dc
from cluster.ops.target import OpsError

Log = Callable[[str], None]


@dataclass(frozen=True)
class StackView:
    """What the plan needs to know of one data centre's stack."""

    dc: str
    stack: str  # the stack's name (the lab: the DC's name)
    active_dc: str  # the activeDc its config holds now
    reachable: bool  # every one of its nodes answers (an apply/up needs them all)
    partial: bool = False  # some of its nodes answer, not all


@dataclass(frozen=True)
class FailoverStep:
    stack: str
    dc: str
    action: str  # "step down", "rejoin as the standby", "promote"
    active_dc: str  # the value set

    def describe(self) -> str:
        what = {
            "step down": "its nodes become read-only standbys, its BIND a slave, Postfix stops",
            "rejoin as the standby": "its databases replicate from the active DC, mailboxes "
            "merge both ways",
            "promote": "its shared-IP holder becomes the writable master, its BIND the master; "
            "DNS answers its address",
        }[self.action]
        return (f"{self.dc} (stack {self.stack}): set activeDc={self.active_dc}, apply: "
                f"{self.action} ({what})")  # fmt: skip


@dataclass(frozen=True)
class FailoverPlan:
    to: str
    steps: tuple[FailoverStep, ...]
    deferred: str  # what is left for a later run, or ""

    def describe(self) -> str:
        if not self.steps:
            lines = [f"nothing to apply: every stack that can be reached has activeDc={self.to}"]
        else:
            lines = [f"failover to {self.to}: {len(self.steps)} step(s)"]
            lines += [f"  {i}. {s.describe()}" for i, s in enumerate(self.steps, 1)]
        if self.deferred:
            lines.append(f"  later: {self.deferred}")
        return "\n".join(lines)


def plan_failover(to: str, views: Mapping[str, StackView]) -> FailoverPlan:
    """The steps that make both stacks say ``activeDc: to`` (see the module's docstring)."""
    if to not in DC_NAMES:
        raise OpsError(f"--to: must be one of {', '.join(DC_NAMES)}, got {to!r}")
    target, other = views[to], views[other_dc(to)]
    steps: list[FailoverStep] = []
    deferred = ""
    if other.active_dc != to:
        if other.partial:
            # Its live nodes may still serve as the writable master: promoting the target now
            # would make two. Its `up` cannot run either (a node is missing).
            raise OpsError(
                f"{other.dc} is only partly reachable: its live nodes may still serve mail as the "
                f"writable master. Make it whole (boot or rebuild the missing node) or cut it off "
                f"entirely, then run failover again"
            )
        if other.reachable:
            # Already failed over (the target says so): this is the rejoin; else a planned move.
            action = "rejoin as the standby" if target.active_dc == to else "step down"
            steps.append(FailoverStep(other.stack, other.dc, action, to))
        else:
            deferred = (
                f"{other.dc} cannot be reached and keeps activeDc={other.active_dc} in its stack. "
                f"Do not apply it by hand: once it is back, run `failover --to {to}` again and it "
                f"rejoins as the standby."
            )
    if target.active_dc != to:
        if not target.reachable:
            raise OpsError(f"{to} cannot be reached: it cannot be promoted (its nodes must answer)")
        steps.append(FailoverStep(target.stack, target.dc, "promote", to))
    return FailoverPlan(to, tuple(steps), deferred)


class Applier(Protocol):
    """Reads the two stacks and applies one of them with a new activeDc."""

    def views(self) -> dict[str, StackView]: ...

    def apply(self, step: FailoverStep, log: Log) -> None: ...


def run_failover(plan: FailoverPlan, applier: Applier, log: Log) -> list[tuple[str, float]]:
    """Apply ``plan``'s steps in order, showing each; (step, seconds) per step."""
    timings = []
    for i, step in enumerate(plan.steps, 1):
        log(f"[{i}/{len(plan.steps)}] {step.describe()}")
        t0 = time.monotonic()
        applier.apply(step, log)
        took = time.monotonic() - t0
        log(f"[{i}/{len(plan.steps)}] {step.dc}: done in {took:.1f} s")
        timings.append((f"{step.dc} {step.action}", took))
    if plan.deferred:
        log(f"left for later: {plan.deferred}")
    return timings


class LabApplier:
    """The lab: the same sequence with ``python -m cluster.lab apply --stack DC --set
    activeDc=...`` (the lab keeps ``--set`` per stack, as a stack file keeps `pulumi config
    set`). A data centre is unreachable while its uplink is cut (``lab cut dc1``) or any of its
    hosts is down or cut."""

    def views(self) -> dict[str, StackView]:
        from cluster.lab import hosts
        from cluster.lab.stacks import stack_topology
        from cluster.lab.state import LabState

        state = LabState.load()
        if not state.hosts:
            raise OpsError("the lab is not up (python -m cluster.lab up)")
        out = {}
        for dc in DC_NAMES:
            topo = stack_topology(state, dc)
            nodes = [n.name for n in topo.dc_nodes(dc)]
            # `lab apply` needs every host of the stack, as `up` needs every node over SSH.
            up = [] if dc in state.cut else [
                n for n in nodes if n not in state.cut and hosts.alive(state.hosts[n])
            ]  # fmt: skip
            out[dc] = StackView(dc, dc, topo.config.active_dc, up == nodes,
                                partial=0 < len(up) < len(nodes))  # fmt: skip
        return out

    def apply(self, step: FailoverStep, log: Log) -> None:
        argv = [sys.executable, "-m", "cluster.lab", "apply", "--stack", step.stack,
                "--set", f"activeDc={step.active_dc}"]  # fmt: skip
        _stream(argv, log)


class StackApplier:
    """Linode stacks through Pulumi's Automation API: ``activeDc`` is set in the stack's own
    file (Pulumi.<stack>.yaml, as `pulumi config set` does), then ``up`` runs with its output
    shown. A data centre is unreachable when any of its nodes does not answer SSH, or its
    stack's outputs cannot be read."""

    def __init__(self, stack: str) -> None:
        from cluster.ops.target import StackTarget
        from cluster.pulumi.automation import stack_pair

        self._stacks = stack_pair(stack)  # dc -> stack name
        self._target = StackTarget.from_stack(stack)

    def views(self) -> dict[str, StackView]:
        from cluster.ops.target import dc_of
        from cluster.pulumi.automation import configured_active_dc

        out = {}
        for dc, stack in self._stacks.items():
            nodes = [n for n in self._target.nodes() if dc_of(n) == dc]
            # `up` provisions every node over SSH: a half-reachable DC would fail half way.
            answering = [n for n in nodes if self._target.run(n, ["true"]).returncode == 0]
            out[dc] = StackView(dc, stack, configured_active_dc(stack),
                                bool(nodes) and answering == nodes,
                                partial=0 < len(answering) < len(nodes))  # fmt: skip
        return out

    def apply(self, step: FailoverStep, log: Log) -> None:
        from cluster.pulumi.automation import set_active_dc_and_up

        try:
            set_active_dc_and_up(step.stack, step.active_dc, log)
        except Exception as e:  # the Automation API raises many kinds; all stop the sequence
            raise OpsError(f"stack {step.stack}: `up` failed, the sequence stops here: {e}") from e


def _stream(argv: list[str], log: Log) -> None:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    tail: list[str] = []
    for line in proc.stdout:
        log("    " + line.rstrip("\n"))
        tail = [*tail, line.rstrip("\n")][-5:]
    if proc.wait() != 0:
        raise OpsError(f"`{' '.join(argv[2:])}` failed (exit {proc.returncode}); the sequence "
                       f"stops here: {' / '.join(tail)}")  # fmt: skip
