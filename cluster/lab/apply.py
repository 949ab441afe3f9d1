"""The lab's applier: the very plan the Pulumi program sends to Linode, run in the lab's hosts.

For one stack, every own node's plan is built with ``build_host_plan`` and its
steps run in one global dependency order across the stack's hosts (``after``/``watch`` inside a
host, ``after_remote`` across hosts). Each step is ``step.command`` run by ``sh -c`` inside the
host with ``step.stdin`` on stdin, as ``remote.Command`` runs it over SSH. A step whose digest
equals the one the host recorded after its last success is skipped, as Pulumi skips a command
whose ``triggers`` did not change.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from cluster.hostplan import build_host_plan
from cluster.lab.hosts import exec_in, run_step
from cluster.lab.run import LabError
from cluster.lab.state import HostRecord, LabState
from cluster.material import ClusterSecrets
from cluster.plan import CHANGED_MARK, STATE_DIR, HostPlan, Step
from cluster.topology import Topology

APPLIED_DIR = f"{STATE_DIR}/applied"
STEP_TIMEOUT = 600.0


@dataclass
class ApplyReport:
    stack: str
    run: int = 0
    skipped: int = 0
    changed: int = 0
    seconds: float = 0.0
    per_host_seconds: dict[str, float] = field(default_factory=dict)
    changes: list[str] = field(default_factory=list)


def marker_name(step_name: str) -> str:
    """A file name for a step's digest record (step names hold '/' and ':')."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", step_name)


def global_order(plans: Mapping[str, HostPlan]) -> list[tuple[str, Step]]:
    """All steps of the stack's hosts in one order that respects every dependency: a host's own
    order, plus each ``after_remote`` (host, step). Ties go round-robin over hosts, so two
    replicas' independent steps interleave as Pulumi would run them."""
    queues = {h: p.ordered() for h, p in plans.items()}
    done: set[tuple[str, str]] = set()
    known = {(h, s.name) for h, p in plans.items() for s in p.steps}
    order: list[tuple[str, Step]] = []
    total = sum(len(q) for q in queues.values())
    while len(order) < total:
        progressed = False
        for host, queue in queues.items():
            while queue:
                step = queue[0]
                waits = [dep for dep in step.after_remote if dep in known and dep not in done]
                if waits:
                    break
                queue.pop(0)
                order.append((host, step))
                done.add((host, step.name))
                progressed = True
                break  # one step per host per round
        if not progressed:
            stuck = {h: q[0].name for h, q in queues.items() if q}
            raise LabError(f"cross-host dependency cycle or unknown step; stuck at {stuck}")
    return order


def _recorded(host: str, rec: HostRecord) -> dict[str, str]:
    proc = exec_in(
        host,
        rec,
        ["sh", "-c", f"cd {APPLIED_DIR} 2>/dev/null && grep -H . -- * 2>/dev/null || true"],
    )
    out: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        name, _, digest = line.partition(":")
        out[name] = digest.strip()
    return out


def _syslog_tail(host: str, rec: HostRecord, lines: int = 25) -> str:
    """The host's last syslog lines: a daemon that failed to start says why there, not on the
    step's stderr."""
    try:
        proc = exec_in(host, rec, ["tail", "-n", str(lines), "/var/log/syslog"], timeout=10)
    except (LabError, OSError):
        return ""
    return (
        f"\n--- last lines of {host}:/var/log/syslog ---\n{proc.stdout.rstrip()}"
        if proc.stdout
        else ""
    )


def _record(host: str, rec: HostRecord, step: Step, digest: str) -> None:
    name = marker_name(step.name)
    script = (
        f"install -d -m 0700 {APPLIED_DIR} && "
        f"printf '%s\\n' {digest} > {APPLIED_DIR}/{name}.tmp && "
        f"mv -f {APPLIED_DIR}/{name}.tmp {APPLIED_DIR}/{name}"
    )
    proc = exec_in(host, rec, ["sh", "-c", script])
    if proc.returncode != 0:
        raise LabError(f"{host}: could not record step {step.name}: {proc.stderr.strip()}")


def _forget_dropped(host: str, rec: HostRecord, plan: HostPlan) -> None:
    """Drop the records of steps the plan no longer has, as Pulumi deletes their Commands: a
    step that comes back later (sharedIpMethod bgp -> arp -> bgp) runs again."""
    keep = " ".join(sorted(marker_name(s.name) for s in plan.steps))
    script = (
        f"cd {APPLIED_DIR} 2>/dev/null || exit 0; keep=' {keep} '; "
        'for f in *; do case "$keep" in *" $f "*) ;; *) rm -f -- "$f" ;; esac; done'
    )
    exec_in(host, rec, ["sh", "-c", script])


def apply_stack(
    state: LabState,
    topo: Topology,
    secrets: ClusterSecrets,
    log: Callable[[str], None],
    *,
    force: bool = False,
) -> ApplyReport:
    """Apply the plans of ``topo``'s own nodes (one stack) to the running hosts."""
    stack = topo.config.dc
    plans = {n.name: build_host_plan(topo, n.name, secrets, platform="lab") for n in topo.own_nodes}
    for host in plans:
        if not state.hosts.get(host) or not state.hosts[host].pid:
            raise LabError(f"{host} is down: `boot {host}` first")
    digests = {h: p.digests() for h, p in plans.items()}
    recorded = {h: ({} if force else _recorded(h, state.hosts[h])) for h in plans}
    report = ApplyReport(stack, per_host_seconds=dict.fromkeys(plans, 0.0))
    order = global_order(plans)  # proves the cross-host dependencies can be met (no cycle)
    known = {(h, s.name) for h, s in order}
    done = {key: threading.Event() for key in known}
    failed = threading.Event()
    lock = threading.Lock()
    errors: list[str] = []

    def run_host(host: str) -> None:
        """One host's steps in its own order, each after the remote steps it waits for; hosts
        run side by side, as Pulumi runs independent commands."""
        rec = state.hosts[host]
        for step in plans[host].ordered():
            for dep in step.after_remote:
                if dep in known:
                    while not done[dep].wait(0.2):
                        if failed.is_set():
                            return
            if failed.is_set():
                return
            digest = digests[host][step.name]
            if recorded[host].get(marker_name(step.name)) == digest:
                with lock:
                    report.skipped += 1
                done[(host, step.name)].set()
                continue
            t0 = time.monotonic()
            try:
                proc = run_step(host, rec, step.command, step.stdin, STEP_TIMEOUT)
            except LabError as e:
                with lock:
                    errors.append(f"step {step.name!r} failed on {host}: {e}")
                failed.set()
                return
            secs = time.monotonic() - t0
            with lock:
                report.per_host_seconds[host] += secs
                report.run += 1
            if proc.returncode != 0:
                # Never the stdin: it may be a secret. The script is in the plan, for all to read.
                detail = (proc.stderr.strip() or proc.stdout.strip())[-4000:]
                detail += _syslog_tail(host, rec)
                with lock:
                    errors.append(
                        f"step {step.name!r} failed on {host} (exit {proc.returncode}):\n{detail}"
                    )
                failed.set()
                return
            with lock:
                for line in proc.stdout.splitlines():
                    if line.startswith(CHANGED_MARK):
                        report.changed += 1
                        report.changes.append(f"{host}: {line}")
            _record(host, rec, step, digest)
            done[(host, step.name)].set()
            log(f"{stack} {host}: {step.name} ({secs:.1f}s)")

    def guarded(host: str) -> None:
        try:
            run_host(host)
        except Exception as e:  # a timeout or a host that died: stop the others, report it
            with lock:
                errors.append(f"{host}: {type(e).__name__}: {e}")
            failed.set()

    t_stack = time.monotonic()
    with ThreadPoolExecutor(len(plans)) as pool:
        list(pool.map(guarded, plans))
    report.seconds = time.monotonic() - t_stack
    if errors:
        raise LabError("\n".join(errors))
    for host, plan in plans.items():
        _forget_dropped(host, state.hosts[host], plan)
    return report
