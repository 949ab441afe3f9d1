"""Build the plans of hosts from the topology: every service contributes its files and steps.

``build_host_plan`` builds one host's plan and checks its references to its own steps (and that
a step waiting on another host names a node of the cluster); ``build_stack_plans`` builds those
of a stack's own nodes and checks the references between them, step by step. The appliers
(``cluster/pulumi/provision.py`` for Pulumi, ``cluster/lab`` for the lab) build from these.
"""

from __future__ import annotations

import dataclasses

from cluster.hostcontext import HostContext
from cluster.material import ClusterSecrets
from cluster.plan import PACKAGES_STEP, HostPlan, check_remote_refs, packages_step
from cluster.services import SERVICES
from cluster.topology import Topology


def all_packages() -> tuple[str, ...]:
    """Every Debian package any host's plan may install: the lab bakes these into its base."""
    names: set[str] = set(common_packages())
    for service in SERVICES:
        names.update(getattr(service, "OPTIONAL_PACKAGES", ()))
    return tuple(sorted(names))


def common_packages() -> tuple[str, ...]:
    """The packages every host gets in the plan's first step (``PACKAGES`` of every service).
    A service whose packages depend on the configuration (``OPTIONAL_PACKAGES``) installs them
    in a step of its own."""
    names: set[str] = set()
    for service in SERVICES:
        names.update(service.PACKAGES)
    return tuple(sorted(names))


def build_host_plan(
    topology: Topology, node_name: str, secrets: ClusterSecrets, platform: str = "linode"
) -> HostPlan:
    ctx = HostContext(topology, topology.node(node_name), secrets, platform)
    plan = HostPlan(host=node_name, packages=common_packages())
    plan.add(packages_step(plan.packages))
    for service in SERVICES:
        for step in service.steps(ctx):
            if step.name != PACKAGES_STEP and not (step.after or step.watch):
                step = dataclasses.replace(step, after=(PACKAGES_STEP,))
            plan.add(step)
    plan.ordered()  # fail early on unknown dependencies or cycles
    check_remote_refs({node_name: plan}, other_hosts={n.name for n in topology.nodes})
    return plan


def build_stack_plans(
    topology: Topology, secrets: ClusterSecrets, platform: str = "linode"
) -> dict[str, HostPlan]:
    """The plans of the stack's own nodes, by node name, with every step's ``after_remote``
    checked against them (a reference to another stack's node is checked for the node only)."""
    plans = {
        n.name: build_host_plan(topology, n.name, secrets, platform) for n in topology.own_nodes
    }
    check_remote_refs(plans, other_hosts={n.name for n in topology.nodes})
    return plans
