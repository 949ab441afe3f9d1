"""Each host's cgroup (v2): what the host is, for counting its CPU and for cutting its power.

Every process of a host is in its cgroup ``<cgroup2 mount>/CGROUP_NAME/<host>``: the launcher
joins it before it becomes ``systemd-nspawn``, and nspawn splits it into ``supervisor`` (itself)
and ``payload`` (the container, whose systemd makes its slices and scopes below); every command
the lab runs in a host joins ``exec`` (``hosts.nsenter_argv``). So:

- CPU: the kernel charges every CPU nanosecond a task uses to its cgroup and that cgroup's
  ancestors (``cpu.stat`` ``usage_usec``), whether the task still runs, was reaped by its parent,
  or by nobody, and keeps it in the parent when a child cgroup is removed. Summing
  ``/proc/<pid>/stat`` would lose the time of a child whose parent ignores SIGCHLD and of a command
  entered from outside (its reaper is ``nsenter``, not the host). ``cpu.stat`` exists in every
  cgroup v2 directory whether or not the ``cpu`` controller is enabled: the lab enables nothing
  and limits nothing, it only counts.
- A power cut: ``cgroup.kill`` SIGKILLs every process of the cgroup and its descendants in one
  go (Linux 5.14), nspawn and the host's systemd included, so no process of the host outlives
  another by more than the kernel's delivery of one signal.

On a hybrid machine (v1 controllers plus cgroup2 at /sys/fs/cgroup/unified, as here) nspawn also
mirrors the cgroup in the v1 ``name=systemd`` hierarchy; ``clear`` and ``remove_all`` tidy that
mirror too.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from cluster.lab.paths import CGROUP_NAME
from cluster.lab.run import LabError

EXEC_DIR = "exec"  # the leaf of the commands the lab runs in a host


def _mounts() -> tuple[Path | None, Path | None]:
    """This machine's cgroup2 mount (/sys/fs/cgroup, or /sys/fs/cgroup/unified on a hybrid
    machine) and its v1 ``name=systemd`` mount, if any."""
    v2 = v1 = None
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        if fields[2] == "cgroup2" and v2 is None:
            v2 = Path(fields[1])
        elif fields[2] == "cgroup" and "name=systemd" in fields[3].split(","):
            v1 = Path(fields[1])
    return v2, v1


def lab_cgroup() -> Path | None:
    v2, _ = _mounts()
    return v2 / CGROUP_NAME if v2 else None


def ensure(host: str) -> str:
    """The host's cgroup directory, made if needed."""
    root = lab_cgroup()
    if root is None:
        raise LabError(
            "this machine has no cgroup v2 mount: the lab needs one (the hosts' systemd runs on "
            "it, and crash and CPU accounting use it); mount it with "
            "`mount -t cgroup2 none /sys/fs/cgroup/unified` on a v1 machine"
        )
    path = root / host
    path.mkdir(parents=True, exist_ok=True)
    (path / EXEC_DIR).mkdir(exist_ok=True)
    return str(path)


def exec_procs(cgroup: str) -> str:
    """The ``cgroup.procs`` file a command run in the host writes its pid to."""
    return f"{cgroup}/{EXEC_DIR}/cgroup.procs"


def cpu_seconds(cgroup: str) -> float:
    """CPU time (user + system) charged to the cgroup since it was made."""
    if not cgroup:
        raise LabError("the host has no cgroup (it never booted): its CPU is not counted")
    for line in (Path(cgroup) / "cpu.stat").read_text().splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec":
            return int(value) / 1e6
    raise LabError(f"no usage_usec in {cgroup}/cpu.stat")


def populated(cgroup: str) -> bool:
    """Whether any process is in the cgroup or below it."""
    try:
        text = (Path(cgroup) / "cgroup.events").read_text()
    except FileNotFoundError:
        return False
    return "populated 1" in text.splitlines()


def pids(cgroup: str) -> list[int]:
    """Every process in the cgroup and below it."""
    found: list[int] = []
    for procs in Path(cgroup).rglob("cgroup.procs"):
        with contextlib.suppress(OSError):
            found += [int(p) for p in procs.read_text().split()]
    return found


def of(pid: int) -> str | None:
    """The cgroup directory the process is in now (its cgroup2 line), or None if it is gone.

    A membership test needs the process's own line, for two reasons: ``cgroup.procs`` (``pids``)
    leaves out zombies, which /proc lists until their parent reaps them (on this machine's
    kernel a zombie's line still names its cgroup); and a snapshot of ``pids`` misses a process
    born after it."""
    v2, _ = _mounts()
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("0::") and v2 is not None:
            return str(v2) + line[3:]
    return None


def kill(cgroup: str, timeout: float = 10) -> None:
    """SIGKILL every process of the cgroup at once and wait until none is left."""
    if not cgroup or not populated(cgroup):
        return
    kill_file = Path(cgroup) / "cgroup.kill"
    if not kill_file.exists():
        raise LabError(f"{kill_file} is missing: the lab's power cut needs Linux 5.14 or later")
    kill_file.write_text("1")
    deadline = time.monotonic() + timeout
    while populated(cgroup):
        if time.monotonic() > deadline:
            raise LabError(f"processes left in {cgroup} after SIGKILL: {pids(cgroup)}")
        time.sleep(0.01)


def kill_all() -> list[str]:
    """Kill every host of the lab (``kill``); returns the hosts that had processes."""
    root = lab_cgroup()
    if root is None or not root.is_dir():
        return []
    killed = []
    for path in sorted(p for p in root.iterdir() if p.is_dir()):
        if populated(str(path)):
            kill(str(path))
            killed.append(path.name)
    return killed


def _v1_mirror(cgroup: str) -> Path | None:
    v2, v1 = _mounts()
    if v1 is None or v2 is None:
        return None
    return v1 / Path(cgroup).relative_to(v2)


def _rmdir_below(top: Path, deadline: float) -> list[str]:
    """Remove every cgroup below ``top`` (children first); ``top`` stays."""
    removed: list[str] = []
    if not top.is_dir():
        return removed
    below = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts))
    for path in reversed(below):
        while True:
            try:
                path.rmdir()
                removed.append(str(path))
                break
            except FileNotFoundError:
                break
            except OSError as e:
                if time.monotonic() > deadline:
                    raise LabError(f"cannot remove cgroup {path}: {e}") from e
                time.sleep(0.05)
    return removed


def clear(cgroup: str, timeout: float = 10) -> None:
    """Remove what a dead host left below its cgroup (its systemd's slices and scopes), keeping
    the host's own directory and so its CPU count. A new systemd that finds its predecessor's
    cgroups SIGKILLs units of its own boot (seen: systemd-tmpfiles-setup, mariadb), so every
    boot starts from a clean tree. The host must be dead (``kill``)."""
    deadline = time.monotonic() + timeout
    _rmdir_below(Path(cgroup), deadline)
    mirror = _v1_mirror(cgroup)
    if mirror is not None:
        _rmdir_below(mirror, deadline)
    (Path(cgroup) / EXEC_DIR).mkdir(exist_ok=True)


def remove_all(timeout: float = 10) -> list[str]:
    """Remove the lab's cgroups in both hierarchies (after its processes are gone: a cgroup
    with a process in it cannot be removed). Returns the top directories removed."""
    v2, v1 = _mounts()
    removed = []
    deadline = time.monotonic() + timeout
    for mount in (v2, v1):
        if mount is None or not (mount / CGROUP_NAME).is_dir():
            continue
        top = mount / CGROUP_NAME
        _rmdir_below(top, deadline)
        while True:
            try:
                top.rmdir()
                removed.append(str(top))
                break
            except OSError as e:
                if time.monotonic() > deadline:
                    raise LabError(f"cannot remove cgroup {top}: {e}") from e
                time.sleep(0.05)
    return removed
