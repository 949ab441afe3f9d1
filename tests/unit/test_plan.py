"""The plan model: ordering, digests, and the file installer's idempotence (run for real)."""

from __future__ import annotations

import os
import subprocess
import types
from collections.abc import Callable
from pathlib import Path

import pytest

from cluster import hostplan, services
from cluster.hostcontext import HostContext
from cluster.hostplan import all_packages, build_host_plan, build_stack_plans, common_packages
from cluster.material import ClusterSecrets
from cluster.plan import (
    CHANGED_MARK,
    FileSpec,
    HostPlan,
    Step,
    file_step,
    reload_or_start,
    script_step,
    start_at_boot,
)
from cluster.render import TEMPLATES, environment
from cluster.services import heartbeat, mariadb, metrics
from cluster.topology import Topology

ROOT = Path(__file__).resolve().parents[2]


def run(step_command: str, stdin: str) -> str:
    # A node runs the step as root (it chowns to root:root). This layer needs no root: without
    # it, a user namespace makes this user root over its own files.
    argv = ["sh", "-c", step_command]
    if os.geteuid() != 0:
        argv = ["unshare", "--user", "--map-root-user", *argv]
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=True)
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
    assert set(plan.packages) == set(common_packages())
    # The lab's base holds these and what a service installs only when configured (metrics).
    assert set(all_packages()) == set(common_packages()) | set(metrics.OPTIONAL_PACKAGES)


def test_no_secret_in_any_command(topologies: dict[str, Topology], secrets: ClusterSecrets) -> None:
    values = [
        v for k, v in secrets.to_dict().items() if isinstance(v, str) and v and k != "ca_cert_pem"
    ] + [pair.key_pem for pair in secrets.tls.values()]
    values += list(secrets.mesh_keys.values())
    assert values and secrets.mesh_keys
    for topo in topologies.values():
        for node in topo.own_nodes:
            for step in build_host_plan(topo, node.name, secrets, "lab").steps:
                for value in values:
                    assert value not in step.command, f"{node.name} {step.name} leaks a secret"
                    if not step.secret:
                        assert value not in step.stdin, f"{node.name} {step.name}: secret stdin"


def _add_service(
    monkeypatch: pytest.MonkeyPatch, steps: Callable[[HostContext], list[Step]]
) -> None:
    fake = types.SimpleNamespace(PACKAGES=(), steps=steps)
    monkeypatch.setattr(hostplan, "SERVICES", (*services.SERVICES, fake))


def test_a_dangling_reference_fails_when_the_plan_is_built(
    monkeypatch: pytest.MonkeyPatch, topologies: dict[str, Topology], secrets: ClusterSecrets
) -> None:
    _add_service(
        monkeypatch, lambda ctx: [script_step("zz.reload", "true\n", watch=("file:/etc/typo",))]
    )
    with pytest.raises(
        ValueError, match=r"dc1-svr1: step 'zz.reload' needs unknown 'file:/etc/typo'"
    ):
        build_host_plan(topologies["dc1"], "dc1-svr1", secrets, "lab")


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        (
            ("dc1-svr1", "mariadb.usrs"),
            r"step 'zz.wait' waits on unknown 'mariadb.usrs' of dc1-svr1",
        ),
        (
            ("dc9-svr1", mariadb.USERS_STEP),
            r"step 'zz.wait' waits on .* of unknown host 'dc9-svr1'",
        ),
    ],
)
def test_a_dangling_cross_host_reference_fails_when_the_stack_is_built(
    monkeypatch: pytest.MonkeyPatch,
    topologies: dict[str, Topology],
    secrets: ClusterSecrets,
    ref: tuple[str, str],
    message: str,
) -> None:
    _add_service(monkeypatch, lambda ctx: [script_step("zz.wait", "true\n", after_remote=(ref,))])
    with pytest.raises(ValueError, match=message):
        build_stack_plans(topologies["dc1"], secrets, "lab")


@pytest.mark.parametrize("stack", ["dc1", "dc2"])
def test_stack_plans_hold_their_cross_host_references(
    stack: str, topologies: dict[str, Topology], secrets: ClusterSecrets
) -> None:
    topo = topologies[stack]
    plans = build_stack_plans(topo, secrets, "lab")
    assert set(plans) == {n.name for n in topo.own_nodes}
    refs = {ref for p in plans.values() for s in p.steps for ref in s.after_remote}
    # svr2 starts Heartbeat after svr1 (which holds the resources first at a first start).
    first_start = (f"{stack}-svr1", heartbeat.START_STEP)
    assert plans[f"{stack}-svr2"].step(heartbeat.START_STEP).after_remote == (first_start,)
    if stack == topo.active_dc:
        # The active data centre's replica sets up replication after the master's accounts.
        assert refs == {(f"{stack}-svr1", mariadb.USERS_STEP), first_start}
    else:
        assert refs == {first_start}
    for host, name in refs:
        assert host not in plans or plans[host].step(name)


def _bash(script: str, enabled: str = "disabled") -> subprocess.CompletedProcess[str]:
    # A stand-in for systemd: systemctl says what it was asked on stderr; `is-enabled` answers
    # ``enabled`` (and exits 1 unless it is "enabled", as systemctl does).
    shim = (
        'systemctl() { if [ "$1" = is-enabled ]; then echo ' + enabled + "; "
        f'[ {enabled} = enabled ]; return; fi; echo "systemctl $*" >&2; }}\n'
    )
    return subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + shim + script], capture_output=True, text=True
    )


def test_reload_or_start_checks_then_reloads_or_starts() -> None:
    up = _bash(reload_or_start("d", running="true"))
    assert (up.stdout, up.stderr) == (f"{CHANGED_MARK} d reloaded\n", "systemctl reload d\n")
    down = _bash(reload_or_start("d", running="false"))
    assert (down.stdout, down.stderr) == (f"{CHANGED_MARK} d started\n", "systemctl start d\n")
    again = _bash(reload_or_start("d", running="true", restart=True))
    assert (again.stdout, again.stderr) == (
        f"{CHANGED_MARK} d restarted\n",
        "systemctl restart d\n",
    )
    custom = _bash(reload_or_start("d", running="true", reload="echo own >&2"))
    assert (custom.stdout, custom.stderr) == (f"{CHANGED_MARK} d reloaded\n", "own\n")
    # A failing check stops the step before anything is reloaded.
    bad = _bash(reload_or_start("d", check="false", running="true"))
    assert bad.returncode != 0 and bad.stdout == "" and bad.stderr == ""
    # start=False: a stopped daemon stays stopped, and nothing is reported.
    never = _bash(reload_or_start("d", running="false", start=False))
    assert never.returncode == 0 and never.stdout == "" and never.stderr == ""
    # By default the unit's own state says whether it runs.
    default = _bash(reload_or_start("d"))
    assert default.stderr == "systemctl is-active --quiet d\nsystemctl reload d\n"


def test_start_at_boot_enables_and_disables_once() -> None:
    on = _bash(start_at_boot("d"), enabled="disabled")
    assert (on.stdout, on.stderr) == (f"{CHANGED_MARK} d started at boot\n",
                                      "systemctl enable --quiet d\n")  # fmt: skip
    for state in ("static", "masked", "not-found"):  # only "enabled" starts at boot
        assert _bash(start_at_boot("d"), enabled=state).stderr == "systemctl enable --quiet d\n"
    again = _bash(start_at_boot("d"), enabled="enabled")
    assert again.returncode == 0 and (again.stdout, again.stderr) == ("", "")
    off = _bash(start_at_boot("d", enabled=False), enabled="enabled")
    assert (off.stdout, off.stderr) == (f"{CHANGED_MARK} d not started at boot\n",
                                        "systemctl disable --quiet d\n")  # fmt: skip
    off_again = _bash(start_at_boot("d", enabled=False), enabled="disabled")
    assert off_again.returncode == 0 and (off_again.stdout, off_again.stderr) == ("", "")


def test_no_init_system_branches_in_the_plan_helpers() -> None:
    """One code path: the helpers every service uses speak systemd only (issue 23)."""
    for text in (reload_or_start("d"), start_at_boot("d"), start_at_boot("d", enabled=False)):
        assert "/run/systemd/system" not in text and "update-rc.d" not in text
        assert "service " not in text


def test_one_spelling_of_the_changed_mark() -> None:
    """Python says CHANGED_MARK, templates say {{ changed_mark }}: the literal lives in plan.py."""
    assert environment().globals["changed_mark"] == CHANGED_MARK
    spelled = [
        str(path.relative_to(ROOT))
        for path in [*(ROOT / "cluster").rglob("*.py"), *TEMPLATES.rglob("*.j2")]
        if CHANGED_MARK in path.read_text()
    ]
    assert spelled == ["cluster/plan.py"]


def test_every_service_module_is_planned() -> None:
    """A module under cluster/services with steps that SERVICES forgot would never run."""
    listed = {m.__name__.rsplit(".", 1)[1] for m in services.SERVICES}
    found = {
        p.stem
        for p in (ROOT / "cluster" / "services").glob("*.py")
        if "\ndef steps(" in p.read_text()
    }
    assert found == listed
