"""What the operator CLI reads from deployed stacks, through Pulumi's Automation API.

Only addresses: the CLI reaches the nodes over SSH with the operator's own credentials, so it
never needs the stacks' secrets.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pulumi import automation as auto

from cluster.config import other_dc
from cluster.pulumi.peer import OUT_ADDRESSES, OUT_DC, dict_to_addresses
from cluster.stackfiles import read_stack_config
from cluster.topology import node_name

PROJECT_DIR = Path(__file__).resolve().parents[2]


def stack_outputs(stack: str) -> dict[str, Any]:
    selected = auto.select_stack(stack_name=stack, work_dir=str(PROJECT_DIR))
    return {key: out.value for key, out in selected.outputs().items()}


def _nodes_of(outputs: dict[str, Any]) -> dict[str, str]:
    dc = str(outputs[OUT_DC])
    addresses = dict_to_addresses(outputs[OUT_ADDRESSES])
    return {node_name(dc, slot): a.public_ipv4 for slot, a in addresses.nodes.items()}


def cluster_node_addresses(stack: str) -> dict[str, str]:
    """Node name -> public IPv4 of ``stack``'s nodes and, when its outputs can be read, of its
    peer stack's (``peerStack``, else the stack named after the other data centre)."""
    outputs = stack_outputs(stack)
    nodes = _nodes_of(outputs)
    peer = read_stack_config(stack).get("peerStack") or other_dc(str(outputs[OUT_DC]))
    # A lost data centre's stack may not answer: work with what is reachable.
    with contextlib.suppress(Exception):
        nodes.update(_nodes_of(stack_outputs(str(peer))))
    return nodes


def stack_dc(stack: str) -> str:
    """The data centre a stack is: its ``dc`` key, else its name's last part (``org/p/dc1``)."""
    return str(read_stack_config(stack).get("dc") or stack.rsplit("/", 1)[-1])


def stack_pair(stack: str) -> dict[str, str]:
    """Data centre -> stack name for ``stack`` and its peer (``peerStack``, else the stack named
    after the other data centre)."""
    dc = stack_dc(stack)
    peer = str(read_stack_config(stack).get("peerStack") or other_dc(dc))
    return {dc: stack, other_dc(dc): peer}


def configured_active_dc(stack: str) -> str:
    """The ``activeDc`` the stack's file holds (the program's default when unset)."""
    from cluster.config import KEYS

    return str(read_stack_config(stack).get("activeDc") or KEYS["activeDc"].default)


def set_active_dc_and_up(stack: str, active_dc: str, log: Callable[[str], None]) -> None:
    """`pulumi config set mailcluster:activeDc` in the stack's file, then `pulumi up`, its output
    line by line to ``log``."""
    selected = auto.select_stack(stack_name=stack, work_dir=str(PROJECT_DIR))
    selected.set_config("mailcluster:activeDc", auto.ConfigValue(value=active_dc))
    selected.up(on_output=lambda line: log("    " + line.rstrip("\n")))
