"""What a service sees while it plans one host: the topology, the node, the secrets, and the
builders of file steps rendered from ``templates/``.

Its own module so that services (which need it) and ``cluster/hostplan.py`` (which calls every
service) do not import each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cluster.config import StackConfig
from cluster.material import ClusterSecrets
from cluster.plan import PACKAGES_STEP, FileSpec, Step, StepRef, file_step
from cluster.render import render
from cluster.topology import Node, Topology


@dataclass(frozen=True)
class HostContext:
    """What a service needs to plan one host."""

    topology: Topology
    node: Node
    secrets: ClusterSecrets
    # "linode" or "lab": only for facts that truly differ (device names, route servers); the lab
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
        after: Sequence[StepRef] = (PACKAGES_STEP,),
        **values: Any,
    ) -> Step:
        """Render ``templates/<path>.j2`` and return the step that installs it."""
        content = render(path, **self.common(), **values)
        return self.literal_file(
            path, content, mode=mode, owner=owner, group=group, secret=secret, after=after
        )

    def literal_file(
        self,
        path: str,
        content: str,
        *,
        mode: str = "0644",
        owner: str = "root",
        group: str = "root",
        secret: bool = False,
        after: Sequence[StepRef] = (PACKAGES_STEP,),
    ) -> Step:
        """A file whose content is data, not a template (a certificate, a key)."""
        return file_step(FileSpec(path, content, mode, owner, group, secret), after=after)
