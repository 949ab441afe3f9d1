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
"""

from __future__ import annotations

from cluster.hostcontext import HostContext
from cluster.plan import CHANGED_MARK, Step, script_step
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
# Linode usually shows the device within seconds of the attach; 5 minutes covers a slow API.
DEVICE_WAIT_S = 300


def volume_label(node_name: str) -> str:
    """The Linode volume label of node ``node_name`` (``dc1-svr1``); the Pulumi layer creates
    the volume with exactly this label. A name, not a ``Node``: Linode resources are declared
    before the addresses a ``Node`` needs exist."""
    return f"{node_name}-mail"


def device_path(node: Node) -> str:
    return f"/dev/disk/by-id/scsi-0Linode_Volume_{volume_label(node.name)}"


def steps(ctx: HostContext) -> list[Step]:
    script = ctx.file(VOLUME_SCRIPT, mode="0755")
    volume = script_step(
        VOLUME_STEP,
        f"{VOLUME_SCRIPT} {device_path(ctx.node)} {MOUNT_POINT} /etc/fstab {DEVICE_WAIT_S}\n",
        watch=(script,),
    )
    return [script, volume, script_step(VMAIL_STEP, _vmail_script(), after=(volume,))]


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
