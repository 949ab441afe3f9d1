"""The rescue of a lost node's volume onto its DC peer: ``mailcluster-rescue`` on every node.

A node lost for good may hold acknowledged mail its peer never got (its Postfix queue, the
deliveries of the moment before their replication), all on its volume. ``python -m cluster.ops
rescue`` attaches that volume to the peer, which runs this command (``mailnode/rescue``): it
mounts the volume at ``/srv/rescue/<node>``, merges the maildirs into the live mailboxes with
dsync, hands the queue to its own Postfix and unmounts it. The configuration says which node's
volume this one may take (its DC peer's: Linode attaches a volume inside its region only) and
where the volume's directories are (storage.py, postfix.py lay them out).
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

from cluster.hostcontext import HostContext
from cluster.plan import Step
from cluster.services import nodepkg, postfix, storage

PACKAGES: tuple[str, ...] = ()  # mount, doveadm, postsuper come with storage, dovecot, postfix

COMMAND = "mailcluster-rescue"
SCRIPT = f"/usr/local/sbin/{COMMAND}"
CONFIG = "/etc/mailcluster/rescue.json"
MOUNT_ROOT = "/srv/rescue"
# Mailboxes merged at once (a merge is a few doveadm processes, mostly waiting on the disk).
WORKERS = 4
# dsync's lock on the user: a replication sync of the same user may hold it for a while.
LOCK_TIMEOUT_S = 60
# One mailbox's merge: a full sync of a large mailbox copies everything the other side lacks.
SYNC_TIMEOUT_S = 3600
# The attached volume's device appears within this (Linode attaches asynchronously).
DEVICE_WAIT_S = storage.DEVICE_WAIT_S


def config(ctx: HostContext) -> dict[str, Any]:
    peer = ctx.peer
    return {
        "node": ctx.node.name,
        "peer": peer.name,
        "device": storage.device_path(peer),
        "mount_point": f"{MOUNT_ROOT}/{peer.name}",
        "live_mount": storage.MOUNT_POINT,
        "vmail": posixpath.relpath(storage.VMAIL_DIR, storage.MOUNT_POINT),
        "queue": postfix.QUEUE_DIR.name,
        "doveadm": ["doveadm"],
        "workers": WORKERS,
        "lock_timeout_s": LOCK_TIMEOUT_S,
        "sync_timeout_s": SYNC_TIMEOUT_S,
        "device_wait_s": DEVICE_WAIT_S,
    }


def steps(ctx: HostContext) -> list[Step]:
    conf = ctx.literal_file(CONFIG, json.dumps(config(ctx), indent=1) + "\n")
    return [conf, nodepkg.entry_point(ctx, COMMAND, "rescue.cli", after=(conf,))]
