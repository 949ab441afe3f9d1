"""The lost node's volume on this node: mounted at the rescue mount point, and unmounted again.

Never twice: the volume is refused when it is this node's own (its device is the one mounted at
``live_mount``) or is mounted anywhere already. The operator's side made sure that its own node
is down (it cannot write to it any more). Mounting replays the ext4 journal of a node that lost
its power (https://docs.kernel.org/filesystems/ext4/journal.html).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path

from mailnode.rescue.run import RescueError, Runner
from mailnode.rescue.settings import Settings

MOUNT_OPTIONS = "nosuid,nodev,noexec"  # mail and a queue: nothing on it runs here


def device_id(path: str) -> str:
    """MAJOR:MINOR of a block device, as findmnt prints it."""
    rdev = os.stat(path).st_rdev
    return f"{os.major(rdev)}:{os.minor(rdev)}"


def mounted_device(runner: Runner, point: str) -> str | None:
    """MAJOR:MINOR of what is mounted at ``point`` (None: nothing)."""
    res = runner(["findmnt", "-rn", "-o", "MAJ:MIN", "--mountpoint", point])
    lines = res.stdout.split() if res.returncode == 0 else []
    return lines[0] if lines else None


def is_mounted(cfg: Settings, runner: Runner) -> bool:
    """The peer's volume is mounted at the rescue mount point (something else there: an error)."""
    there = mounted_device(runner, cfg.mount_point)
    if there is None:
        return False
    if not os.path.exists(cfg.device) or there != device_id(cfg.device):
        raise RescueError(
            f"{cfg.mount_point} holds another filesystem ({there}), not {cfg.peer}'s volume"
        )
    return True


def wait_device(cfg: Settings, sleep: Callable[[float], None] = time.sleep) -> None:
    deadline = time.monotonic() + cfg.device_wait_s
    while not os.path.exists(cfg.device):
        if time.monotonic() >= deadline:
            raise RescueError(
                f"{cfg.peer}'s volume did not appear at {cfg.device} within "
                f"{cfg.device_wait_s:.0f} s: is it attached to {cfg.node}?"
            )
        sleep(0.5)


def mount(cfg: Settings, runner: Runner, log: Callable[[str], None]) -> None:
    if is_mounted(cfg, runner):
        log(f"{cfg.peer}'s volume: already mounted at {cfg.mount_point}")
        return
    wait_device(cfg)
    dev = device_id(cfg.device)
    if mounted_device(runner, cfg.live_mount) == dev:
        raise RescueError(
            f"{cfg.device} is {cfg.node}'s own volume (mounted at "
            f"{cfg.live_mount}), not {cfg.peer}'s"
        )
    elsewhere = runner(["findmnt", "-rn", "-o", "TARGET", "--source", cfg.device]).stdout.split()
    if elsewhere:
        raise RescueError(
            f"{cfg.peer}'s volume is mounted at {', '.join(elsewhere)} already: unmount it first"
        )
    fstype = runner(["blkid", "-p", "-o", "value", "-s", "TYPE", cfg.device]).stdout.strip()
    if fstype != "ext4":
        raise RescueError(
            f"{cfg.device} holds no ext4 filesystem ({fstype or 'none'}): nothing "
            f"of {cfg.peer}'s to rescue"
        )
    Path(cfg.mount_point).mkdir(mode=0o700, parents=True, exist_ok=True)
    res = runner(
        ["mount", "-t", "ext4", "-o", MOUNT_OPTIONS, cfg.device, cfg.mount_point], timeout=600
    )
    if res.returncode != 0:
        raise RescueError(f"mount {cfg.device} {cfg.mount_point}: {res.why()}")
    log(f"{cfg.peer}'s volume: mounted at {cfg.mount_point}")


def umount(cfg: Settings, runner: Runner, log: Callable[[str], None]) -> None:
    if not is_mounted(cfg, runner):
        log(f"{cfg.peer}'s volume: not mounted")
        return
    res = runner(["umount", cfg.mount_point], timeout=600)
    if res.returncode != 0:
        raise RescueError(f"umount {cfg.mount_point}: {res.why()}")
    # Not empty: something was written to the OS disk under it; left there for a look.
    with contextlib.suppress(OSError):
        os.rmdir(cfg.mount_point)
    log(f"{cfg.peer}'s volume: unmounted from {cfg.mount_point}")


def root(cfg: Settings, runner: Runner) -> Path:
    """The mounted volume's root; an error when it is not mounted."""
    if not is_mounted(cfg, runner):
        raise RescueError(
            f"{cfg.peer}'s volume is not mounted at {cfg.mount_point}: "
            f"`mailcluster-rescue mount {cfg.peer}` first"
        )
    return Path(cfg.mount_point)
