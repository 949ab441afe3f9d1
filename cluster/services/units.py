"""systemd units of our own programs: the one way a node runs a loop or a schedule.

A node runs systemd as PID 1, on Linode and in the lab alike (the lab boots every host under
``systemd-nspawn``), so there is one code path: a program that loops is a service
(``daemon``), a job that runs on a schedule is a timer and a oneshot service (``periodic``).
Both come from the generic templates ``templates/etc/systemd/system/DAEMON.service.j2``,
``JOB.service.j2`` and ``JOB.timer.j2`` and end in one step, ``enable_step``, that reloads
systemd, enables and starts the units, and restarts a daemon whose program or configuration
changed (the step ``watch``es them, so it runs only then).
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from cluster.hostcontext import HostContext
from cluster.plan import CHANGED_MARK, PACKAGES_STEP, Step, StepRef, script_step
from cluster.render import render

UNIT_DIR = "/etc/systemd/system"
DAEMON_TEMPLATE = f"{UNIT_DIR}/DAEMON.service"
JOB_TEMPLATE = f"{UNIT_DIR}/JOB.service"
TIMER_TEMPLATE = f"{UNIT_DIR}/JOB.timer"


def unit_path(unit: str) -> str:
    return f"{UNIT_DIR}/{unit}"


def enable_step(
    name: str,
    units: Sequence[str],
    *,
    files: Sequence[StepRef] = (),
    restart: Sequence[str] = (),
    watch: Sequence[StepRef] = (),
    after: Sequence[StepRef] = (),
) -> Step:
    """Step ``name``: ``daemon-reload``, then every unit of ``units`` enabled and started
    (a change is reported only for one that was not). ``restart``: units that are restarted
    when the step runs again because something it watches changed (``files``, the unit files,
    and ``watch``, say the program and its configuration). Units not in ``restart`` are left
    running as they are (a timer, or a daemon that re-reads its configuration by itself)."""
    quoted = " ".join(shlex.quote(u) for u in units)
    restarts = " ".join(shlex.quote(u) for u in restart)
    script = f"""systemctl daemon-reload
for u in {quoted}; do
  if ! systemctl is-enabled --quiet "$u" 2>/dev/null; then
    systemctl enable --quiet "$u"
    echo "{CHANGED_MARK} $u enabled"
  fi
  if ! systemctl is-active --quiet "$u"; then
    systemctl start "$u"
    echo "{CHANGED_MARK} $u started"
  elif case " {restarts} " in *" $u "*) true ;; *) false ;; esac; then
    systemctl restart "$u"
    echo "{CHANGED_MARK} $u restarted"
  fi
done
"""
    return script_step(name, script, after=after, watch=(*files, *watch))


def daemon(
    ctx: HostContext,
    unit: str,
    command: str,
    *,
    description: str,
    watch: Sequence[StepRef] = (),
    after: Sequence[StepRef] = (PACKAGES_STEP,),
    unit_after: str = "network-online.target",
    extra: str = "",
) -> list[Step]:
    """A resident program as ``<unit>.service`` (``Restart=always``), enabled, started, and
    restarted when anything of ``watch`` changes. ``extra``: more ``[Service]`` lines."""
    service = f"{unit}.service"
    text = render(
        DAEMON_TEMPLATE,
        description=description,
        command=command,
        unit_after=unit_after,
        extra=extra.strip(),
    )
    file = ctx.literal_file(unit_path(service), text, after=after)
    return [file, enable_step(f"{unit}.enabled", [service], files=[file], restart=[service],
                              watch=watch, after=after)]  # fmt: skip


def periodic(
    ctx: HostContext,
    unit: str,
    command: str,
    *,
    description: str,
    on_calendar: str = "",
    every_s: float = 0,
    timeout_s: int = 0,
    after: Sequence[StepRef] = (PACKAGES_STEP,),
) -> list[Step]:
    """A scheduled job as ``<unit>.service`` (oneshot) plus ``<unit>.timer``: by calendar
    (``on_calendar``, systemd.time(7)) or every ``every_s`` seconds after the last run ended
    (a run never overlaps the next: a oneshot's timer waits for it). ``timeout_s``: the run is
    stopped after that long (0: systemd's default)."""
    if bool(on_calendar) == bool(every_s):
        raise ValueError(f"{unit}: give exactly one of on_calendar and every_s")
    service, timer = f"{unit}.service", f"{unit}.timer"
    job = ctx.literal_file(
        unit_path(service),
        render(JOB_TEMPLATE, description=description, command=command, timeout_s=timeout_s),
        after=after,
    )
    schedule = ctx.literal_file(
        unit_path(timer),
        render(TIMER_TEMPLATE, description=description, on_calendar=on_calendar,
               every_s=every_s, unit=service),
        after=after,
    )  # fmt: skip
    return [job, schedule, enable_step(f"{unit}.enabled", [timer], files=[job, schedule],
                                       after=after)]  # fmt: skip
