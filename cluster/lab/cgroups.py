"""Each host's CPU time: one cgroup (v2) per host, which every process of the host is in.

The kernel charges every CPU nanosecond a task uses to its cgroup's ``cpu.stat`` (``usage_usec``),
whether the task still runs, was reaped by its parent, or was reaped by nobody. That is why the
lab counts a host's CPU here and not by summing ``/proc/<pid>/stat``: there, a dead process's time
reaches only the ``cutime`` of the parent that waited for it, so the time of a child whose parent
ignores SIGCHLD is lost, and so is that of a command entered from outside (its reaper is
``nsenter``, not the host). ``cpu.stat`` exists in every cgroup v2 directory whether or not the
``cpu`` controller is enabled, so the lab enables nothing and limits nothing: it only counts.

A host joins its cgroup before it unshares (PID 1 and all it forks inherit it), and every
command the lab runs in a host joins it before ``nsenter`` (see ``hosts.nsenter_argv``).
On a machine without a cgroup v2 mount hosts run uncounted; only the CPU figures need it.
"""

from __future__ import annotations

import time
from pathlib import Path

from cluster.lab.paths import CGROUP_NAME
from cluster.lab.run import LabError


def _mount() -> Path | None:
    """Where this machine mounts the cgroup v2 hierarchy (/sys/fs/cgroup, or
    /sys/fs/cgroup/unified on a hybrid v1/v2 machine)."""
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) > 2 and fields[2] == "cgroup2":
            return Path(fields[1])
    return None


def lab_cgroup() -> Path | None:
    mount = _mount()
    return mount / CGROUP_NAME if mount else None


def ensure(host: str) -> str:
    """The host's cgroup directory, made if needed; "" when this machine has no cgroup v2."""
    root = lab_cgroup()
    if root is None:
        return ""
    path = root / host
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def cpu_seconds(cgroup: str) -> float:
    """CPU time (user + system) charged to the cgroup since it was made."""
    if not cgroup:
        raise LabError("this machine has no cgroup v2 mount: the lab cannot count CPU per host")
    for line in (Path(cgroup) / "cpu.stat").read_text().splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec":
            return int(value) / 1e6
    raise LabError(f"no usage_usec in {cgroup}/cpu.stat")


def remove_all(timeout: float = 10) -> list[str]:
    """Remove the lab's cgroups (after its processes are gone: a cgroup with a process in it
    cannot be removed, and the last exits of a killed host take a moment)."""
    root = lab_cgroup()
    if root is None or not root.exists():
        return []
    removed = []
    deadline = time.monotonic() + timeout
    for path in [*sorted(p for p in root.iterdir() if p.is_dir()), root]:
        while True:
            try:
                path.rmdir()
                removed.append(str(path))
                break
            except OSError as e:
                if time.monotonic() > deadline:
                    raise LabError(f"cannot remove cgroup {path}: {e}") from e
                time.sleep(0.05)
    return removed
