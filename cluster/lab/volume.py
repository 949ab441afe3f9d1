"""A host's data volume: a sparse image on a loop device, and its line in the host's /etc/fstab.

Inside the host the volume's node is at the path Linode gives it (``model.volume_path``), bound
in by nspawn. The plan's storage steps make its filesystem, record it in /etc/fstab by UUID and
mount it. At boot a Linode's systemd mounts that line; a container's cannot: its
systemd-fstab-generator ignores device lines while /sys is read-only ("running in a container?"),
and device units, which a device line's fsck needs, are not supported there (systemd's
``device_supported()``). So the lab mounts the volume at power-on as the node's fstab line says,
before the host's systemd starts; inside, systemd finds it mounted (``srv-mail.mount`` active,
from mountinfo) and mounts the rest of /etc/fstab itself (the bind mounts onto the volume), in
its order. The one difference: no fsck of the volume at boot (this machine's e2fsck may be
older than the node's mkfs.ext4); mounting replays ext4's journal, which is what a power cut
needs.

A rescue hot-plugs a crashed host's volume into a running host, as Linode attaches a volume to a
running Linode (``plug``): the same loop device appears at the same Linode path inside the other
host, whose own program mounts it. Each host has a private ``/dev`` (nspawn's tmpfs), so the
device node is made there, from this machine's side of the host's mount namespace.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cluster.lab.paths import VOLUME_SIZE, base_dir, host_dir
from cluster.lab.run import LabError, run
from cluster.lab.state import HostRecord


@dataclass(frozen=True)
class FstabMount:
    """The host's fstab line for its volume: where, which type, which options."""

    point: str
    fstype: str
    options: str


def image(host: str) -> Path:
    return host_dir(host) / "volume.img"


def attach(host: str, rec: HostRecord) -> str:
    """The loop device of the host's volume (attached once; reused after a crash)."""
    img = image(host)
    if not img.exists():
        img.parent.mkdir(parents=True, exist_ok=True)
        with open(img, "wb") as f:
            f.truncate(VOLUME_SIZE)
    if rec.loop and Path(rec.loop).exists():
        back = run(["losetup", "-n", "-O", "BACK-FILE", rec.loop], check=False).stdout.strip()
        if back != str(img):
            rec.loop = ""
    if not rec.loop:
        rec.loop = run(["losetup", "--find", "--show", str(img)]).stdout.strip()
    return rec.loop


def delete(host: str, rec: HostRecord) -> None:
    """Detach and delete the host's data volume (the host must be down): its next boot gets a
    new, empty one, as a new Linode gets a new Volume."""
    if rec.loop:
        run(["losetup", "-d", rec.loop], check=False)
        rec.loop = ""
    image(host).unlink(missing_ok=True)


# Inside a running host (its mount namespace): make the block device MAJ:MIN appear at PATH, or
# find it there already; a different device at PATH is an error, never replaced.
PLUG_SCRIPT = r"""
set -eu
path=$1 major=$2 minor=$3
mkdir -p "$(dirname "$path")"
if [ -e "$path" ]; then
  [ -b "$path" ] && [ "$(stat -c %t:%T "$path")" = "$(printf %x:%x "$major" "$minor")" ] \
    || { echo "$path exists and is not this volume" >&2; exit 1; }
else
  mknod -m 0660 "$path" b "$major" "$minor"
fi
"""


def device_numbers(loop: str) -> tuple[int, int]:
    rdev = os.stat(loop).st_rdev
    return os.major(rdev), os.minor(rdev)


def mounted_in(pid: int, loop: str) -> list[str]:
    """Where the host whose PID 1 is ``pid`` has the filesystem of ``loop`` mounted."""
    major, minor = device_numbers(loop)
    try:
        lines = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
    except OSError:
        return []
    # mountinfo(5): the third field is the filesystem's device, the fifth the mount point.
    return [f[4] for f in (line.split() for line in lines) if f[2] == f"{major}:{minor}"]


def plug(loop: str, pid: int, path: str) -> None:
    """Hot-plug: the block device ``loop`` appears at ``path`` in the running host whose PID 1 is
    ``pid`` (idempotent)."""
    major, minor = device_numbers(loop)
    run(["nsenter", "-t", str(pid), "-m", "--", "sh", "-c", PLUG_SCRIPT, "plug", path,
         str(major), str(minor)])  # fmt: skip


def unplug(loop: str, pid: int, path: str) -> None:
    """Take the device away again; refused while the host has it mounted (Linode would pull it
    from under the filesystem)."""
    points = mounted_in(pid, loop)
    if points:
        raise LabError(f"the volume is still mounted at {', '.join(points)}: unmount it first")
    run(["nsenter", "-t", str(pid), "-m", "--", "rm", "-f", path])


def probe(device: str) -> dict[str, str]:
    """The filesystem's UUID, LABEL and TYPE on ``device`` ({} when it has none): a low-level
    probe that reads the device and writes nothing."""
    out = run(["blkid", "-p", "-o", "export", device], check=False).stdout
    tags = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return {k: v for k, v in tags.items() if k in ("UUID", "LABEL", "TYPE")}


def host_fstab(host: str) -> str:
    """The host's /etc/fstab as its disk holds it (its own layer, else the base's)."""
    for path in (host_dir(host) / "disk" / "upper" / "etc" / "fstab", base_dir() / "etc/fstab"):
        if path.is_file():  # an overlay whiteout (a deleted file) is a character device
            return path.read_text()
        if os.path.lexists(path):
            return ""
    return ""


def fstab_mount(fstab: str, tags: dict[str, str], device_path: str) -> FstabMount | None:
    """The line of ``fstab`` that names the volume (by UUID, LABEL or its device path), if any."""
    names = {device_path}
    if tags.get("UUID"):
        names.add(f"UUID={tags['UUID']}")
    if tags.get("LABEL"):
        names.add(f"LABEL={tags['LABEL']}")
    for line in fstab.splitlines():
        fields = line.split()
        if not fields or fields[0].startswith("#") or fields[0] not in names or len(fields) < 2:
            continue
        options = fields[3] if len(fields) > 3 else "defaults"
        if "noauto" in options.split(","):
            return None
        fstype = fields[2] if len(fields) > 2 else "auto"
        return FstabMount(fields[1], fstype, options)
    return None
