"""`down` leaves nothing behind: last, because it takes the lab away (and brings it back when the
developer asked to keep it)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from cluster.lab.driver import Lab


def _lab_dir() -> Path:
    return Path(os.environ.get("MAILCLUSTER_LAB_DIR", "/var/lib/mailcluster-lab"))


def test_down_leaves_nothing(lab: Lab, keep: bool) -> None:
    lab.run("down")
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "mclab-" not in netns
    loops = subprocess.run(
        ["losetup", "-n", "-l", "-O", "BACK-FILE"], capture_output=True, text=True
    ).stdout
    assert str(_lab_dir()) not in loops
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(_lab_dir()) not in mounts
    assert not _lab_dir().exists()
    assert not Path("/etc/netns/mclab-client").exists()
    procs = subprocess.run(["pgrep", "-f", "mailcluster-lab-init"], capture_output=True, text=True)
    assert procs.stdout.strip() == ""
    # A second `down` finds nothing to do and says so.
    assert "nothing to remove" in lab.run("down").stdout
    if keep:
        lab.run("up", timeout=1800)
