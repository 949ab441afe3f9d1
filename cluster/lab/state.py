"""The lab's record of what it made, kept on disk so ``down`` can undo it after any crash.

Every mutation happens under an exclusive lock, and an entry is written *before* the thing it
records is created, so the record is never behind the machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cluster.lab.paths import lab_dir


def state_file() -> Path:
    return lab_dir() / "state.json"


@dataclass
class HostRecord:
    launcher_pid: int = 0  # the host's systemd-nspawn, on this machine's side
    pid: int = 0  # the host's PID 1 (its systemd), as this machine sees it
    start_ticks: str = ""  # /proc/<pid>/stat starttime: tells a reused pid from ours
    loop: str = ""  # the loop device of the data volume
    cgroup: str = ""  # the host's cgroup directory (CPU accounting, crash)
    # The running host this host's volume is hot-plugged into (a rescue: `volume attach`), ""
    # while it is the host's own: a volume attaches to one machine at a time.
    volume_on: str = ""


@dataclass
class LabState:
    hosts: dict[str, HostRecord] = field(default_factory=dict)
    cut: list[str] = field(default_factory=list)  # hosts and dcs whose cable is pulled
    sets: dict[str, dict[str, Any]] = field(default_factory=dict)  # stack -> config overrides
    base: str = ""
    active_dc: str = ""  # the activeDc of the stack applied last: the latest failover intent
    # stack -> the data centres its last apply knew (its own, and the other once that one was
    # applied): what a stack's outputs and its StackReference give a `pulumi up` (stacks.py).
    applied: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def load(cls) -> LabState:
        try:
            data = json.loads(state_file().read_text())
        except FileNotFoundError:
            return cls()
        hosts = {h: HostRecord(**r) for h, r in data.get("hosts", {}).items()}
        return cls(
            hosts,
            list(data.get("cut", [])),
            dict(data.get("sets", {})),
            data.get("base", ""),
            data.get("active_dc", ""),
            dict(data.get("applied", {})),
        )

    def save(self) -> None:
        lab_dir().mkdir(parents=True, exist_ok=True)
        tmp = state_file().with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")
        os.replace(tmp, state_file())


@contextlib.contextmanager
def locked() -> Iterator[LabState]:
    """Load, hand out, and save the state while holding the lab's lock."""
    lab_dir().mkdir(parents=True, exist_ok=True)
    with open(lab_dir() / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = LabState.load()
        try:
            yield state
        finally:
            state.save()
