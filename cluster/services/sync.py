"""Web docroots: /var/www pushed by rsync from the active node to the three others.

Every node runs the rsync daemon (module ``www`` = /var/www, password in /etc/rsyncd.secrets,
0600, only cluster addresses allowed). Every minute cron runs /usr/local/sbin/mailcluster-websync
on every node; it does nothing unless this node is the active one (``mailcluster-role
is-writer``), and then pushes with ``rsync -a --delete`` to the peer's private address and the
other data centre's public addresses (``WEB_SYNC_TARGETS`` in cluster.conf), the client password
read from /etc/mailcluster/secrets/rsync (0600). Per-node graphs (/var/www/graphs) stay out.
The firewall must admit TCP 873 from cluster addresses.
"""

from __future__ import annotations

from cluster.hostcontext import HostContext
from cluster.plan import PACKAGES_STEP, Step, reload_or_start, script_step
from cluster.services.role import ROLE_SCRIPT_STEP

PACKAGES: tuple[str, ...] = ("rsync", "cron", "util-linux")

WEBSYNC = "/usr/local/sbin/mailcluster-websync"


def steps(ctx: HostContext) -> list[Step]:
    conf = ctx.file("/etc/rsyncd.conf", allow=list(ctx.topology.cluster_addresses))
    secrets = ctx.file("/etc/rsyncd.secrets", mode="0600", secret=True, password=ctx.secrets.rsync)
    default = ctx.file("/etc/default/rsync")
    client = ctx.literal_file(
        "/etc/mailcluster/secrets/rsync", ctx.secrets.rsync + "\n", mode="0600", secret=True
    )
    websync = ctx.file(WEBSYNC, mode="0755", after=(PACKAGES_STEP, ROLE_SCRIPT_STEP))
    return [
        conf,
        secrets,
        default,
        client,
        websync,
        ctx.file("/etc/cron.d/mailcluster-websync", after=(PACKAGES_STEP, websync)),
        # The daemon rereads rsyncd.conf on every connection: only a stopped daemon or a new
        # /etc/default/rsync needs the init script.
        script_step(
            "sync.rsyncd",
            reload_or_start("rsync", restart=True),
            after=(conf, secrets),
            watch=(default,),
        ),
    ]
