"""Where the operator CLI's commands run: the namespace lab, or a deployed stack's nodes.

Both give the same three things: the cluster's nodes by name, running a command on one of them
(stdin carries secrets, never the command line), and the data centres' layout. Everything
above this module is the same for the lab and for Linode.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from cluster.config import DC_NAMES

COMMAND_TIMEOUT_S = 120


class OpsError(Exception):
    """A failure the operator can act on: printed without a traceback, exit status 2."""


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


class Target(Protocol):
    description: str

    def nodes(self) -> tuple[str, ...]:
        """Every node of the cluster this target can see, ``dc1-svr1`` first."""
        ...

    def run(
        self, node: str, argv: Sequence[str], stdin: str = "", timeout: float = COMMAND_TIMEOUT_S
    ) -> Result:
        """``argv`` on ``node`` as root; a node that cannot be reached is a Result with
        returncode 255 and the reason in stderr (as ssh reports it)."""
        ...


def dc_of(node: str) -> str:
    return node.split("-")[0]


class LabTarget:
    """The namespace lab on this machine (``python -m cluster.lab up``)."""

    description = "the lab"

    def nodes(self) -> tuple[str, ...]:
        from cluster.lab.paths import HOSTS

        return HOSTS

    def run(
        self, node: str, argv: Sequence[str], stdin: str = "", timeout: float = COMMAND_TIMEOUT_S
    ) -> Result:
        from cluster.lab import hosts
        from cluster.lab.run import LabError
        from cluster.lab.state import HostRecord, LabState

        rec = LabState.load().hosts.get(node, HostRecord())
        try:
            proc = hosts.exec_in(node, rec, argv, input=stdin, timeout=timeout)
        except LabError as e:
            return Result(255, "", str(e))
        return Result(proc.returncode, proc.stdout, proc.stderr)


class StackTarget:
    """A deployed stack: addresses from its outputs (Pulumi's Automation API), the nodes over
    SSH as root with the operator's own key or agent. The peer stack's nodes are included when
    its outputs can be read (a lost data centre's stack may not be)."""

    def __init__(self, stack: str, addresses: dict[str, str]) -> None:
        self.description = f"stack {stack}"
        self._addresses = addresses  # node name -> public IPv4

    @classmethod
    def from_stack(cls, stack: str) -> StackTarget:
        from cluster.pulumi.automation import cluster_node_addresses

        try:
            return cls(stack, cluster_node_addresses(stack))
        except Exception as e:  # the Automation API raises many kinds; all mean the same here
            raise OpsError(f"--stack {stack}: cannot read its outputs: {e}") from e

    def nodes(self) -> tuple[str, ...]:
        order = {dc: i for i, dc in enumerate(DC_NAMES)}
        return tuple(sorted(self._addresses, key=lambda n: (order.get(dc_of(n), 9), n)))

    def ssh_argv(self, node: str, argv: Sequence[str]) -> list[str]:
        # BatchMode: never prompt (a script or CI must not hang); the host key is checked
        # against the operator's known_hosts as ssh always does.
        return [
            "ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
            f"root@{self._addresses[node]}", "--", shlex.join(argv),
        ]  # fmt: skip

    def run(
        self, node: str, argv: Sequence[str], stdin: str = "", timeout: float = COMMAND_TIMEOUT_S
    ) -> Result:
        try:
            proc = subprocess.run(
                self.ssh_argv(node, argv),
                input=stdin,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return Result(255, "", f"{node}: no answer in {timeout:.0f} s")
        return Result(proc.returncode, proc.stdout, proc.stderr)
