"""Storage: the mail data volume, mounted at /srv/mail, and the vmail owner of every maildir.

The volume is found by its stable path, ``/dev/disk/by-id/scsi-0Linode_Volume_<label>`` (Linode
names it after the volume label; the lab makes the same path point at a loop device). Linode
attaches volumes asynchronously, so the script waits a bounded time for the device. It makes a
filesystem only when ``blkid`` finds none (never reformats a volume that holds mail), mounts it by
UUID from /etc/fstab with ``nofail`` (a missing volume must not stop the node from booting into
a state where Heartbeat and SSH work), and refuses to create the maildir root unless the volume
is really mounted there, so mail never lands on the OS disk.

``vmail`` has a fixed uid/gid, so maildirs replicated by dsync and a volume moved between nodes
have the same owner everywhere.

Everything else that must outlive the OS disk (MariaDB's datadir and binary logs, the Postfix
queue, BIND's dynamic data) is kept on the volume too, each service asking ``data_steps`` for
it: ``/srv/mail/<name>`` is bind-mounted onto the Debian default path by
``/usr/local/sbin/mailcluster-datadir`` (fstab, after the volume's line), which migrates a
running node's data once and lets the volume win on a rebuilt node (the script's header says
how). Bind mounts onto the default paths, not config paths: packages, init scripts, Debian's
AppArmor profiles (named's allows ``/var/lib/bind/**``) and every tool keep their usual paths,
and one mechanism serves all four daemons. Each daemon's unit gets ``RequiresMountsFor=`` its
paths (a drop-in), so systemd refuses to start it without the volume ("Dependency failed");
behind that, the OS-disk directory under each bind mount is empty and immutable, so a daemon
started by other means (by hand, without systemd) fails instead of writing there.

``NODE_STATE_DIR`` on the volume holds what the node must remember across a rebuild (that
Heartbeat has run here) and the owners of the data directories by name.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from cluster.hostcontext import HostContext
from cluster.plan import CHANGED_MARK, Step, StepRef, file_step_name, script_step
from cluster.render import render
from cluster.topology import Node

PACKAGES: tuple[str, ...] = ("e2fsprogs", "util-linux", "mount")

MOUNT_POINT = "/srv/mail"
VMAIL_DIR = f"{MOUNT_POINT}/vmail"
VMAIL_USER = "vmail"
VMAIL_UID = 5000
VMAIL_GID = 5000
VOLUME_SCRIPT = "/usr/local/sbin/mailcluster-volume"
VOLUME_STEP = "storage.volume"
VMAIL_STEP = "storage.vmail"
NODE_STATE_DIR = f"{MOUNT_POINT}/mailcluster"
NODE_STATE_STEP = "storage.node-state"
DATADIR_SCRIPT = "/usr/local/sbin/mailcluster-datadir"
DATADIR_SCRIPT_STEP = file_step_name(DATADIR_SCRIPT)
# One template for every unit's drop-in (the unit is in the target path, not in the template's).
DROPIN_TEMPLATE = "/etc/systemd/system/UNIT.d/mailcluster-volume.conf"
# Linode usually shows the device within seconds of the attach; 5 minutes covers a slow API.
DEVICE_WAIT_S = 300


def volume_label(node_name: str) -> str:
    """The Linode volume label of node ``node_name`` (``dc1-svr1``); the Pulumi layer creates
    the volume with exactly this label. A name, not a ``Node``: Linode resources are declared
    before the addresses a ``Node`` needs exist."""
    return f"{node_name}-mail"


def device_path(node: Node) -> str:
    return f"/dev/disk/by-id/scsi-0Linode_Volume_{volume_label(node.name)}"


@dataclass(frozen=True)
class DataDir:
    """A daemon's directory kept on the volume: ``/srv/mail/<name>`` bound onto ``path``.
    ``owner``, ``group`` and ``mode`` only make it when neither copy exists yet."""

    name: str
    path: str
    owner: str = "root"
    group: str = "root"
    mode: str = "0755"

    @property
    def volume_path(self) -> str:
        return f"{MOUNT_POINT}/{self.name}"

    @property
    def arg(self) -> str:
        return f"{self.name}:{self.path}:{self.owner}:{self.group}:{self.mode}"


def dropin_path(unit: str) -> str:
    return f"/etc/systemd/system/{unit}.d/mailcluster-volume.conf"


def data_steps(
    ctx: HostContext,
    name: str,
    dirs: Sequence[DataDir],
    *,
    services: Sequence[str],
    units: Sequence[str],
    after: Sequence[StepRef] = (),
    fixup: str = "",
) -> list[Step]:
    """The steps that keep a service's ``dirs`` on the volume: a systemd drop-in per unit of
    ``units`` (``RequiresMountsFor=`` the dirs), and the step ``name`` that runs
    mailcluster-datadir, stopping ``services`` (init names) for a switch and starting again
    those that ran. ``after``: what must be in place before a daemon is started again (its
    configuration). The step comes last in the list."""
    paths = " ".join(d.path for d in dirs)
    dropins = [
        ctx.literal_file(dropin_path(unit), render(DROPIN_TEMPLATE, unit=unit, paths=paths))
        for unit in units
    ]
    args = " ".join(shlex.quote(d.arg) for d in dirs)
    fix = f"--fixup {shlex.quote(fixup)} " if fixup else ""
    step = script_step(
        name,
        f"""# systemd reads the drop-ins (and fstab's new lines) only after a daemon-reload.
systemctl daemon-reload
{DATADIR_SCRIPT} {fix}{MOUNT_POINT} /etc/fstab {shlex.quote(",".join(services))} {args}
""",
        after=(VOLUME_STEP, NODE_STATE_STEP, *after),
        watch=(DATADIR_SCRIPT_STEP, *dropins),
    )
    return [*dropins, step]


def steps(ctx: HostContext) -> list[Step]:
    script = ctx.file(VOLUME_SCRIPT, mode="0755")
    volume = script_step(
        VOLUME_STEP,
        f"{VOLUME_SCRIPT} {device_path(ctx.node)} {MOUNT_POINT} /etc/fstab {DEVICE_WAIT_S}\n",
        watch=(script,),
    )
    node_state = script_step(
        NODE_STATE_STEP,
        f"""mountpoint -q {MOUNT_POINT}
if [ ! -d {NODE_STATE_DIR} ]; then
  install -d -m 0700 {NODE_STATE_DIR}
  echo "{CHANGED_MARK} {NODE_STATE_DIR}"
fi
""",
        after=(volume,),
    )
    return [
        script,
        volume,
        node_state,
        ctx.file(DATADIR_SCRIPT, mode="0755"),
        script_step(VMAIL_STEP, _vmail_script(), after=(volume,)),
    ]


def _vmail_script() -> str:
    u, uid, gid = VMAIL_USER, VMAIL_UID, VMAIL_GID
    return f"""if ! getent group {u} >/dev/null; then
  groupadd --system --gid {gid} {u}
  echo "{CHANGED_MARK} group {u}"
fi
if ! getent passwd {u} >/dev/null; then
  useradd --system --uid {uid} --gid {gid} --home-dir {VMAIL_DIR} --no-create-home \\
    --shell /usr/sbin/nologin --comment "virtual mail" {u}
  echo "{CHANGED_MARK} user {u}"
fi
if [ "$(id -u {u}):$(id -g {u})" != "{uid}:{gid}" ]; then
  echo "{u} exists with uid:gid $(id -u {u}):$(id -g {u}), expected {uid}:{gid}" >&2
  exit 1
fi
# Never create the maildir root on the OS disk: the volume must be mounted first.
mountpoint -q {MOUNT_POINT}
if [ "$(stat -c %U:%G:%a {VMAIL_DIR} 2>/dev/null)" != "{u}:{u}:770" ]; then
  install -d -o {u} -g {u} -m 0770 {VMAIL_DIR}
  echo "{CHANGED_MARK} {VMAIL_DIR}"
fi
"""
