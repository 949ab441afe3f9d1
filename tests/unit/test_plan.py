"""The plan model: ordering, digests, and the file installer's idempotence (run for real)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from cluster.hostplan import all_packages, build_host_plan
from cluster.material import ClusterSecrets
from cluster.plan import CHANGED_MARK, FileSpec, HostPlan, file_step, script_step
from cluster.topology import Topology


def run(step_command: str, stdin: str) -> str:
    done = subprocess.run(
        step_command, shell=True, input=stdin, capture_output=True, text=True, check=True
    )
    return done.stdout


def test_file_step_changes_once_then_nothing(tmp_path: Path) -> None:
    target = tmp_path / "etc" / "demo.conf"
    step = file_step(FileSpec(str(target), "a = 1\n", mode="0640"))
    first = run(step.command, step.stdin)
    second = run(step.command, step.stdin)
    assert CHANGED_MARK in first
    assert second == ""
    assert target.read_text() == "a = 1\n"
    assert oct(target.stat().st_mode & 0o777) == "0o640"
    # A changed mode alone is a change.
    os.chmod(target, 0o644)
    assert CHANGED_MARK in run(step.command, step.stdin)
    assert not list(target.parent.glob("*.mc-*")), "temporary files must not be left behind"


def test_file_content_never_in_command(secrets: ClusterSecrets) -> None:
    step = file_step(FileSpec("/etc/x", f"password = {secrets.db_postfix}\n", secret=True))
    assert secrets.db_postfix not in step.command
    assert step.secret


def test_ordering_and_cycles() -> None:
    plan = HostPlan("h")
    plan.add(script_step("b", "true", after=("a",)), script_step("a", "true"))
    assert [s.name for s in plan.ordered()] == ["a", "b"]
    cyclic = HostPlan("h")
    cyclic.add(script_step("a", "true", after=("b",)), script_step("b", "true", after=("a",)))
    with pytest.raises(ValueError, match="cycle"):
        cyclic.ordered()
    unknown = HostPlan("h")
    unknown.add(script_step("a", "true", after=("nope",)))
    with pytest.raises(ValueError, match="unknown"):
        unknown.ordered()
    with pytest.raises(ValueError, match="twice"):
        plan.add(script_step("a", "true"))


def test_watch_propagates_digest_changes() -> None:
    def plan_with(content: str) -> dict[str, str]:
        plan = HostPlan("h")
        plan.add(file_step(FileSpec("/etc/f", content)))
        plan.add(script_step("reload", "true", watch=("file:/etc/f",)))
        plan.add(script_step("other", "true", after=("file:/etc/f",)))
        return plan.digests()

    one, two = plan_with("1"), plan_with("2")
    assert one["reload"] != two["reload"], "a reload re-runs when a watched file changes"
    assert one["other"] == two["other"], "ordering alone does not re-run a step"


@pytest.mark.parametrize("stack", ["dc1", "dc2"])
def test_same_inputs_same_digests(
    stack: str, topologies: dict[str, Topology], secrets: ClusterSecrets
) -> None:
    """Idempotence of the whole plan: a second apply with the same inputs runs nothing."""
    topo = topologies[stack]
    for node in topo.own_nodes:
        first = build_host_plan(topo, node.name, secrets, "lab").digests()
        second = build_host_plan(topo, node.name, secrets, "lab").digests()
        assert first == second


def test_every_plan_packages_known(
    topologies: dict[str, Topology], secrets: ClusterSecrets
) -> None:
    plan = build_host_plan(topologies["dc1"], "dc1-svr1", secrets)
    assert plan.ordered()[0].name == "packages"
    assert set(plan.packages) == set(all_packages())


def test_no_secret_in_any_command(topologies: dict[str, Topology], secrets: ClusterSecrets) -> None:
    values = [
        v for k, v in secrets.to_dict().items() if isinstance(v, str) and v and k != "ca_cert_pem"
    ] + [pair.key_pem for pair in secrets.tls.values()]
    for topo in topologies.values():
        for node in topo.own_nodes:
            for step in build_host_plan(topo, node.name, secrets, "lab").steps:
                for value in values:
                    assert value not in step.command, f"{node.name} {step.name} leaks a secret"
                    if not step.secret:
                        assert value not in step.stdin, f"{node.name} {step.name}: secret stdin"
