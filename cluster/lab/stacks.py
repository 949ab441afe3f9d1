"""The lab's two stacks as the lab runs them: the committed config plus the ``apply --set``
overrides it keeps per stack (as `pulumi config set` keeps them in a stack's file), and what
each stack knows of the other when it is applied, as a `pulumi up` of it would.

A stack's `up` knows the other data centre only once the other stack was deployed (its
StackReference has outputs): the first deployment is dc1 (alone), dc2 (which knows dc1), dc1
again (now it knows dc2). ``applied_topology`` gives an apply exactly that knowledge, from the
lab's record of what was applied (``LabState.applied``), and ``stale_stacks`` names the stacks
whose last apply did not know a data centre deployed since: the third run.
"""

from __future__ import annotations

import json
from typing import Any

from cluster.config import DC_NAMES, ConfigError, StackConfig
from cluster.lab.addresses import lab_dc_addresses
from cluster.lab.model import lab_config, lab_topology
from cluster.lab.run import LabError
from cluster.lab.state import LabState
from cluster.topology import Topology

# Fixed by the lab's network (addresses.VPC_SUBNETS), as a deployed stack's is by Linode
# (change_rules refuses it): an override would leave the hosts on the old addresses.
FIXED_KEYS = ("vpcSubnet",)


def parse_sets(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` pairs; a value that parses as JSON (a number, true, a list) is taken as
    such, as `pulumi config set --path` would; anything else is a string."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise LabError(f"--set wants key=value, got {pair!r}")
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


def stack_topology(state: LabState, stack: str) -> Topology:
    """The stack's topology with its kept overrides; a bad value is a LabError naming the key."""
    try:
        return lab_topology(stack, state.sets.get(stack, {}))
    except ConfigError as e:
        raise LabError(f"stack {stack}: {e}") from e


def applied_topology(state: LabState, stack: str) -> Topology:
    """The topology an apply of ``stack`` renders: its kept overrides, its own data centre, and
    the other one only if that stack was applied before (a StackReference to a stack without
    outputs yields nothing). A standby whose active data centre was never applied is refused,
    as the Pulumi program refuses it."""
    config = _config(state, stack)
    known = [dc for dc in DC_NAMES if dc == stack or dc in state.applied]
    if config.active_dc not in known:
        raise LabError(
            f"stack {stack}: activeDc is {config.active_dc}, which was never applied: apply "
            f"--stack {config.active_dc} first"
        )
    try:
        return Topology(config, {dc: lab_dc_addresses(dc) for dc in known})
    except ValueError as e:
        raise LabError(f"stack {stack}: {e}") from e


def _config(state: LabState, stack: str) -> StackConfig:
    try:
        return lab_config(stack, state.sets.get(stack, {}))
    except ConfigError as e:
        raise LabError(f"stack {stack}: {e}") from e


def record_applied(state: LabState, topo: Topology) -> None:
    """After a successful apply: the data centres the stack now knows (its "outputs")."""
    state.applied[topo.config.dc] = sorted(topo.dcs)


def stale_stacks(state: LabState) -> list[str]:
    """Applied stacks whose last apply did not know a data centre applied since: the run that
    lets dc1 know dc2 after a first deployment."""
    return [
        s for s in DC_NAMES if s in state.applied and set(state.applied) - set(state.applied[s])
    ]


def forget_applied(state: LabState) -> None:
    """The nodes are gone (``wipe``): the next `up` is a first deployment again."""
    state.applied.clear()


def keep_sets(state: LabState, stack: str, sets: dict[str, Any]) -> None:
    """Merge ``sets`` into the stack's overrides, validated first: a bad value leaves the state
    as it was and fails before anything runs."""
    fixed = sorted(set(sets) & set(FIXED_KEYS))
    if fixed:
        raise LabError(f"{', '.join(fixed)}: fixed by the lab's network (cluster/lab/addresses.py)")
    previous = state.sets.get(stack)
    state.sets[stack] = {**(previous or {}), **sets}
    try:
        stack_topology(state, stack)
    except LabError:
        if previous is None:
            state.sets.pop(stack)
        else:
            state.sets[stack] = previous
        raise
