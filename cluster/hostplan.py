"""Build the plan of one host from the topology: every service contributes its files and steps.

``build_host_plan`` is the only entry point both appliers use (``cluster/pulumi/provision.py``
for Pulumi, ``cluster/lab`` for the lab).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from cluster.config import StackConfig
from cluster.material import ClusterSecrets
from cluster.plan import FileSpec, HostPlan, Step, file_step, packages_step
from cluster.render import render
from cluster.services import SERVICES
from cluster.topology import Node, Topology


@dataclass(frozen=True)
class HostContext:
    """What a service needs to plan one host."""

    topology: Topology
    node: Node
    secrets: ClusterSecrets
    # "linode" or "lab": only for facts that truly differ (device names, lelastic); the lab
    # never gets a different *configuration* of a daemon.
    platform: str = "linode"

    @property
    def config(self) -> StackConfig:
        return self.topology.config

    @property
    def peer(self) -> Node:
        return self.topology.peer(self.node)

    def common(self) -> dict[str, Any]:
        """Values every template may use."""
        return {
            "node": self.node,
            "peer": self.peer,
            "topology": self.topology,
            "config": self.config,
            "domain": self.config.domain,
        }

    def file(
        self,
        path: str,
        *,
        mode: str = "0644",
        owner: str = "root",
        group: str = "root",
        secret: bool = False,
        after: tuple[str, ...] = ("packages",),
        **values: Any,
    ) -> Step:
        """Render ``templates/<path>.j2`` and return the step that installs it."""
        content = render(path, **self.common(), **values)
        return file_step(FileSpec(path, content, mode, owner, group, secret), after=after)

    def literal_file(
        self,
        path: str,
        content: str,
        *,
        mode: str = "0644",
        owner: str = "root",
        group: str = "root",
        secret: bool = False,
        after: tuple[str, ...] = ("packages",),
    ) -> Step:
        """A file whose content is data, not a template (a certificate, a key)."""
        return file_step(FileSpec(path, content, mode, owner, group, secret), after=after)


def all_packages() -> tuple[str, ...]:
    """Every Debian package any host's plan may install: the lab bakes these into its base."""
    names: set[str] = set()
    for service in SERVICES:
        names.update(service.PACKAGES)
    return tuple(sorted(names))


def build_host_plan(
    topology: Topology, node_name: str, secrets: ClusterSecrets, platform: str = "linode"
) -> HostPlan:
    ctx = HostContext(topology, topology.node(node_name), secrets, platform)
    plan = HostPlan(host=node_name, packages=all_packages())
    plan.add(packages_step(plan.packages))
    for service in SERVICES:
        for step in service.steps(ctx):
            if step.name != "packages" and not (step.after or step.watch):
                step = dataclasses.replace(step, after=("packages",))
            plan.add(step)
    plan.ordered()  # fail early on unknown dependencies or cycles
    return plan
