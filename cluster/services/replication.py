"""Mailbox replication: the controller of ours (``mailnode/replication``) on every node.

Dovecot 2.4 has no replicator. Each node runs ``mailcluster-replication`` (a systemd service),
which Dovecot's event exporter tells of every committed mailbox change (dovecot.py) and which
runs ``doveadm sync`` per user and target inside the WireGuard mesh. Who pushes to whom follows
the role, checked every ``ROLE_INTERVAL_S`` and at once when the role script promotes or demotes:

- the writer (holder of the active data centre's shared IP) pushes to its DC peer and to both
  nodes of the other data centre;
- the active data centre's other node pushes to its peer only: what it delivers itself (its
  Postfix queue, after it came back from a crash);
- the standby data centre's nodes push nothing, and so never create a mailbox (nothing there
  delivers or logs in): only the writer's syncs write there.

A sync is a two-way merge, so what a target holds that the writer lacks comes back too (after a
data-centre failover and failback, say). Events are at most once (Dovecot drops one that is not
answered in time, or while its stats process restarts): the writer also syncs every mailbox to
every target every ``SWEEP_INTERVAL_S``, and a node that boots, is promoted or demoted first
syncs the mailboxes whose messages changed in the ``RECENT_WINDOW_S`` before (those a crash may
have left behind), then every mailbox. The queue is on disk: a restart loses no pending user.
"""

from __future__ import annotations

import json
from typing import Any

from cluster.hostcontext import HostContext
from cluster.plan import STATE_DIR, Step
from cluster.services import dovecot, nodepkg, storage, units
from cluster.services.role import HOOKS_DIR, ROLE_SCRIPT, ROLE_SCRIPT_STEP, RUN_DIR

PACKAGES: tuple[str, ...] = ()  # python3 comes with nodepkg; doveadm with dovecot-core

COMMAND = "mailcluster-replication"
SCRIPT = f"/usr/local/sbin/{COMMAND}"
CONFIG = "/etc/mailcluster/replication.json"
# mailcluster-role's hook: promote and demote tell the controller (role.d runs it).
ROLE_HOOK = f"{HOOKS_DIR}/replication"
ROLE_HOOK_TIMEOUT_S = 5
UNIT = COMMAND
# Dovecot posts its events here (dovecot.EVENTS_URL); the CLI asks for the state here.
LISTEN = "127.0.0.1"
PORT = dovecot.EVENTS_PORT
# The doveadm password, for the doveadm HTTP API the controller's syncs go through.
DOVEADM_SECRET = "/etc/mailcluster/secrets/doveadm"
# Syncs per target at once (one user never has two at a time). A sync of a small mailbox takes
# ~30 ms between two Dovecot 2.4.1 (measured in the lab's base, then over TLS on loopback; more
# over a WAN), so four keep a burst of changes to many users from queueing behind each other.
WORKERS = 4
ROLE_INTERVAL_S = 2.0
# The backstop for lost events: every mailbox to every target, as a full sync. Events carry
# every change at once, so this only bounds how long a change whose event was lost (the stats
# process restarting, a POST past its timeout) or a folder made twice waits. Ten minutes is what
# the cross-DC full rounds of the Dovecot 2.3 setup cost: 1000 mailboxes to three targets is
# five syncs a second, each ~80 ms of two doveadm processes.
SWEEP_INTERVAL_S = 600
# A target without a sync for this long gets one (its last user again, a no-op): one that stopped
# answering then fails within a minute on an idle cluster too, and alerts after its grace.
PROBE_INTERVAL_S = 60
# A catch-up first syncs the mailboxes whose messages changed in this many seconds before the
# node's last change before it went down (or before now, at a promote). Pair replication is
# asynchronous: its lag is a second, and a peer that was unreachable for minutes before a crash
# is covered too.
RECENT_WINDOW_S = 600
LOCK_TIMEOUT_S = 10  # doveadm sync -l: dsync's lock on the user at both ends
IO_TIMEOUT_S = 30  # doveadm sync -T: a silent peer ends the sync (Dovecot's default: 600 s)
# A change's sync is killed after EVENT_SYNC_TIMEOUT_S; a full one (sweep, catch-up, a retry:
# a first sync of a large mailbox) after FULL_SYNC_TIMEOUT_S. -T does not reach a sync stuck
# before dsync's handshake (seen in CI with the 2.3 setup).
EVENT_SYNC_TIMEOUT_S = 60
FULL_SYNC_TIMEOUT_S = 600
# Health (mailcluster-health's replication.<node> checks; alerts.py alerts after its grace).
MAX_EVENT_AGE_S = 60
MAX_PENDING_AGE_S = 2 * SWEEP_INTERVAL_S
MAX_SYNC_MS = 10_000


def target(name: str, address: str) -> dict[str, str]:
    """A node's doveadm server at its mesh ``address``, over plain TCP: dovecot.py says why not
    TLS (a hang in Dovecot 2.4.1) and why the mesh is as good."""
    return {"name": name, "destination": f"tcp:{address}:{dovecot.DOVEADM_PORT}",
            "server": f"{address}:{dovecot.DOVEADM_PORT}"}  # fmt: skip


def config(ctx: HostContext) -> dict[str, Any]:
    """/etc/mailcluster/replication.json: what the controller needs (no secret: the doveadm
    password is in its own 0600 file)."""
    topo, node, peer = ctx.topology, ctx.node, ctx.peer
    # Every target over the mesh (Dovecot's doveadm server listens there only); the DC peer
    # first: its recovery point is the tighter one.
    pair = [target(peer.name, topo.mesh_address(peer))]
    other_dc = [target(n.name, topo.mesh_address(n)) for n in topo.nodes if n.dc != node.dc]
    active = node.dc == topo.active_dc
    return {
        "node": node.name,
        "active_dc": active,
        "writer_targets": [*pair, *other_dc] if active else [],
        "standby_targets": pair if active else [],
        "listen": LISTEN,
        "port": PORT,
        "state_dir": f"{STATE_DIR}/replication",
        "run_dir": f"{RUN_DIR}/replication",
        "vmail_dir": storage.VMAIL_DIR,
        "doveadm": ["doveadm"],
        "doveadm_api": dovecot.DOVEADM_API_URL,
        "doveadm_secret": DOVEADM_SECRET,
        "role_check": [ROLE_SCRIPT, "is-holder"],
        "workers": WORKERS,
        "role_interval_s": ROLE_INTERVAL_S,
        "sweep_interval_s": SWEEP_INTERVAL_S,
        "probe_interval_s": PROBE_INTERVAL_S,
        "recent_window_s": RECENT_WINDOW_S,
        "lock_timeout_s": LOCK_TIMEOUT_S,
        "io_timeout_s": IO_TIMEOUT_S,
        "event_sync_timeout_s": EVENT_SYNC_TIMEOUT_S,
        "full_sync_timeout_s": FULL_SYNC_TIMEOUT_S,
        "max_event_age_s": MAX_EVENT_AGE_S,
        "max_pending_age_s": MAX_PENDING_AGE_S,
        "max_sync_ms": MAX_SYNC_MS,
    }


def steps(ctx: HostContext) -> list[Step]:
    conf = ctx.literal_file(CONFIG, json.dumps(config(ctx), indent=1) + "\n")
    secret = ctx.literal_file(DOVEADM_SECRET, ctx.secrets.doveadm + "\n", mode="0600",
                              secret=True)  # fmt: skip
    command = nodepkg.entry_point(ctx, COMMAND, "replication.cli")
    hook = ctx.file(ROLE_HOOK, mode="0755", after=(command,), command=SCRIPT,
                    timeout_s=ROLE_HOOK_TIMEOUT_S)  # fmt: skip
    return [
        conf,
        secret,
        command,
        hook,
        *units.daemon(
            ctx,
            UNIT,
            f"{SCRIPT} run",
            description="mailcluster mailbox replication (doveadm sync on Dovecot's events)",
            watch=(conf, secret, command, nodepkg.PACKAGE_STEP),
            after=(command, ROLE_SCRIPT_STEP, dovecot.RELOAD_STEP),
            unit_after="dovecot.service",
        ),
    ]
