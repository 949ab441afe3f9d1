"""cluster/services/units.py: our programs as systemd units. The files a daemon and a periodic
job get, the schedule's two forms, and the enable step run for real (bash, with a stand-in
systemctl that keeps the units' state in files): it enables and starts once, restarts only the
daemons it is told to, and a second run changes nothing."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from cluster.hostcontext import HostContext
from cluster.material import ClusterSecrets
from cluster.plan import CHANGED_MARK, PACKAGES_STEP, Step, file_step_name
from cluster.services import units
from cluster.topology import Topology


@pytest.fixture
def ctx(topologies: dict[str, Topology], secrets: ClusterSecrets) -> HostContext:
    topo = topologies["dc1"]
    return HostContext(topo, topo.node("dc1-svr1"), secrets, "lab")


def content(step: Step) -> str:
    assert step.file is not None
    return step.file.content


def keys(text: str) -> list[str]:
    """The unit's settings as written, comments and blank lines left out."""
    return [ln for ln in text.splitlines() if ln and not ln.startswith("#")]


def test_daemon_is_a_restarting_service_restarted_when_what_it_watches_changes(
    ctx: HostContext,
) -> None:
    file, enable = units.daemon(ctx, "mailcluster-x", "/usr/local/sbin/x --loop",
                                description="x", watch=("file:/etc/x.conf",),
                                extra="Nice=5")  # fmt: skip
    assert file.name == file_step_name(units.unit_path("mailcluster-x.service"))
    text = keys(content(file))
    assert "ExecStart=/usr/local/sbin/x --loop" in text
    assert "Restart=always" in text and "Nice=5" in text
    assert text.index("[Service]") < text.index("Nice=5") < text.index("[Install]")
    assert "WantedBy=multi-user.target" in text
    assert enable.name == "mailcluster-x.enabled"
    assert set(enable.watch) == {file.name, "file:/etc/x.conf"}
    assert enable.after == (PACKAGES_STEP,)
    assert "for u in mailcluster-x.service; do" in enable.script
    assert 'case " mailcluster-x.service " in' in enable.script


def test_periodic_by_calendar_enables_the_timer_only(ctx: HostContext) -> None:
    job, timer, enable = units.periodic(ctx, "mailcluster-y", "/usr/local/sbin/y run",
                                        description="y", on_calendar="Sun *-*-* 03:47:00",
                                        timeout_s=55)  # fmt: skip
    job_text, timer_text = keys(content(job)), keys(content(timer))
    assert {"Type=oneshot", "ExecStart=/usr/local/sbin/y run", "TimeoutStartSec=55"} <= set(
        job_text
    )
    assert "[Install]" not in job_text  # started by its timer only
    assert "OnCalendar=Sun *-*-* 03:47:00" in timer_text
    assert "Unit=mailcluster-y.service" in timer_text
    assert "WantedBy=timers.target" in timer_text
    assert not [ln for ln in timer_text if ln.startswith(("OnBootSec", "OnUnitInactiveSec"))]
    assert "for u in mailcluster-y.timer; do" in enable.script
    assert set(enable.watch) == {job.name, timer.name}


def test_periodic_by_interval_counts_from_the_end_of_the_last_run(ctx: HostContext) -> None:
    job, timer, _ = units.periodic(ctx, "mailcluster-z", "/bin/z", description="z", every_s=3)
    timer_text = keys(content(timer))
    assert {"OnBootSec=3s", "OnUnitInactiveSec=3s"} <= set(timer_text)
    assert not [ln for ln in timer_text if ln.startswith("OnCalendar")]
    assert not [ln for ln in keys(content(job)) if ln.startswith("TimeoutStartSec")]


@pytest.mark.parametrize("schedule", [{}, {"on_calendar": "minutely", "every_s": 60}])
def test_periodic_wants_exactly_one_schedule(ctx: HostContext, schedule: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="mailcluster-w: give exactly one of"):
        units.periodic(ctx, "mailcluster-w", "/bin/w", description="w", **schedule)  # type: ignore[arg-type]


# systemctl as far as the enable step uses it; each unit's state is a file in $STATE.
FAKE_SYSTEMCTL = """#!/bin/bash
echo "$*" >> "$STATE/calls"
[ "$1" = --quiet ] && shift
case "$1" in
  daemon-reload) ;;
  is-enabled) [ -e "$STATE/$3.enabled" ] ;;
  is-active) [ -e "$STATE/$3.active" ] ;;
  enable) touch "$STATE/$3.enabled" ;;
  start|restart) touch "$STATE/$2.active" ;;
  *) echo "unexpected: $*" >&2; exit 2 ;;
esac
"""


def run(step: Step, tmp_path: Path) -> str:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "systemctl").write_text(FAKE_SYSTEMCTL)
    (bin_dir / "systemctl").chmod(0o755)
    proc = subprocess.run(
        ["bash", "-c", step.command],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "STATE": str(tmp_path)},
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def calls(tmp_path: Path) -> list[str]:
    return (tmp_path / "calls").read_text().splitlines()


def test_the_enable_step_starts_once_and_a_second_run_changes_nothing(tmp_path: Path) -> None:
    step = units.enable_step("x.enabled", ["a.timer", "b.service"])
    first = run(step, tmp_path)
    assert first.splitlines() == [
        f"{CHANGED_MARK} a.timer enabled",
        f"{CHANGED_MARK} a.timer started",
        f"{CHANGED_MARK} b.service enabled",
        f"{CHANGED_MARK} b.service started",
    ]
    assert calls(tmp_path)[0] == "daemon-reload"
    (tmp_path / "calls").unlink()
    assert run(step, tmp_path) == ""
    assert not [c for c in calls(tmp_path) if c.split()[0] in ("enable", "start", "restart")]


def test_the_enable_step_restarts_only_the_daemons_named(tmp_path: Path) -> None:
    step = units.enable_step("x.enabled", ["a.timer", "d.service"], restart=["d.service"])
    run(step, tmp_path)
    (tmp_path / "calls").unlink()
    # Running again (something it watches changed): the daemon restarts, the timer is left.
    assert run(step, tmp_path).splitlines() == [f"{CHANGED_MARK} d.service restarted"]
    assert "restart d.service" in calls(tmp_path)
    assert not [c for c in calls(tmp_path) if c.startswith("restart a.timer")]
