"""`down` leaves nothing behind: last, because it takes the lab away (and brings it back when the
developer asked to keep it)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from cluster.lab.driver import Lab
from cluster.lab.paths import CGROUP_NAME, CLIENT_NS, NS_PREFIX, lab_dir, netns_etc


def test_down_leaves_nothing(lab: Lab, keep: bool) -> None:
    lab.run("down")
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert NS_PREFIX not in netns
    loops = subprocess.run(
        ["losetup", "-n", "-l", "-O", "BACK-FILE"], capture_output=True, text=True
    ).stdout
    assert str(lab_dir()) not in loops
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(lab_dir()) not in mounts
    assert not lab_dir().exists()
    assert not netns_etc(CLIENT_NS).exists()
    procs = subprocess.run(["pgrep", "-f", f"systemd-nspawn .*--directory={lab_dir()}/"],
                           capture_output=True, text=True)  # fmt: skip
    assert procs.stdout.strip() == ""
    # No cgroup of the lab's, in the cgroup2 hierarchy or in nspawn's v1 name=systemd mirror.
    cgroup_mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()
                     if line.split()[2] in ("cgroup", "cgroup2")]  # fmt: skip
    assert cgroup_mounts
    for mount in cgroup_mounts:
        assert not (Path(mount) / CGROUP_NAME).exists(), mount
    # A second `down` finds nothing to do and says so.
    assert "nothing to remove" in lab.run("down").stdout
    if keep:
        lab.run("up", timeout=1800)
