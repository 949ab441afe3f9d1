"""The lab's two stacks as the lab runs them: the committed config plus the ``apply --set``
overrides it keeps per stack (as `pulumi config set` keeps them in a stack's file)."""

from __future__ import annotations

import json
from typing import Any

from cluster.config import ConfigError
from cluster.lab.model import lab_topology
from cluster.lab.run import LabError
from cluster.lab.state import LabState
from cluster.topology import Topology


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


def keep_sets(state: LabState, stack: str, sets: dict[str, Any]) -> None:
    """Merge ``sets`` into the stack's overrides, validated first: a bad value leaves the state
    as it was and fails before anything runs."""
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
