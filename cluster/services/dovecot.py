"""Dovecot: IMAP for users, LMTP and SASL auth for Postfix, and dsync replication of mailboxes.

Users and passwords come from Postfix Admin's ``mailbox`` table (SHA512-CRYPT); quotas from
``mailbox.quota`` (bytes, 0 = unlimited). Maildirs live on the data volume at
``/srv/mail/vmail/<domain>/<user>``.

Indexes and control files (``dovecot.index*``, ``dovecot-uidlist``, ``dovecot-keywords``, the
subscriptions) are Dovecot's maildir defaults, inside each maildir: ``mail_location`` names no
``INDEX=`` or ``CONTROL=``, so they are on the volume with the mail (a render test holds this).
Its sockets for Postfix are in Postfix's queue directory, which postfix.py keeps on the volume.

Replication topology (dsync replicates only between *pairs*, so two mechanisms):

1. Inside a data centre, the replicator pairs each node with its DC peer over the private
   network (``mail_replica = tcps:<peer private IP>``). The replication plugin notifies it of
   every new message at once (priority high), so the peer has it within moments. Replication is
   asynchronous: ``replication_sync_timeout`` (LMTP waits for the peer) is not set, because in
   Debian 12's Dovecot 2.3.19 every synchronous request crashes the replicator when its sync
   completes ("data stack: Out of memory", an endless loop over a deleted entry in
   ``replicator_queue_handle_sync_lookups``; fixed upstream only by dovecot/core#223, and 2.4 has
   no replicator). A message delivered on a node that crashes before the sync is on that node's
   volume, as a message in its Postfix queue is, and is merged back when it returns.
2. Across data centres, the node that serves mail (holder of the active DC's shared IP) pushes
   the mailboxes that changed to each node of the other DC every ``DSYNC_INTERVAL_S`` seconds,
   one ``doveadm sync -u`` per mailbox and one loop per target, and every mailbox every
   ``DSYNC_FULL_EVERY_MIN`` minutes (``/usr/local/sbin/mailcluster-dsync`` from cron). Losing a
   whole DC loses at most that window of mail; dsync is a two-way merge, so when the lost DC
   returns, anything it took that the other never saw is merged back, nothing is overwritten.

   These pushes go over the WireGuard mesh (mesh.py) to the other nodes' mesh addresses.

Both run over TLS on the doveadm port (12345), which listens on the private and mesh addresses
only, with the shared ``doveadm_password`` and the cluster CA (whose certificates name the mesh
addresses too); every node runs Dovecot so that every node is a replication target.
"""

from __future__ import annotations

from cluster.hostcontext import HostContext
from cluster.plan import Step, pidfile_alive, reload_or_start, script_step
from cluster.services import mariadb, storage, tls

PACKAGES: tuple[str, ...] = ("dovecot-core", "dovecot-imapd", "dovecot-lmtpd", "dovecot-mysql")

# The read-only database user mariadb.py creates for Dovecot.
DB_USER = "dovecot"
DOVEADM_PORT = 12345
SQL_CONF = "/etc/dovecot/dovecot-sql.conf.ext"
SECRETS_CONF = "/etc/dovecot/mailcluster-secrets.conf.ext"
DSYNC_SCRIPT = "/usr/local/sbin/mailcluster-dsync"
DSYNC_CRON = "/etc/cron.d/mailcluster-dsync"
RELOAD_STEP = "dovecot.reload"
DSYNC_INTERVAL_S = 15
# One mailbox's sync to one target in a full round: dsync's -T 30 bounds a silent peer, this a
# sync that hangs anyway (a first sync of a large mailbox resumes where it stopped next time).
DSYNC_USER_TIMEOUT_S = 300
# The same in the rounds every DSYNC_INTERVAL_S, which wait for their slowest mailbox: a sync that
# hangs before dsync's handshake, where -T does not reach (seen in CI: both ends waiting on the
# TLS connection), held every mailbox's push to the other DC for the full 300 s. A mailbox cut
# here stays "changed" and goes on next round, and the full rounds give it the longer bound.
DSYNC_CHANGED_TIMEOUT_S = 60
DSYNC_PARALLEL = 4
DSYNC_FULL_EVERY_MIN = 10
# mailcluster-dsync's record of each cross-DC target (read by mailcluster-health): NODE.ok's
# mtime is the last successful sync to NODE, NODE.failed exists while the last round failed and
# its mtime is when the failing began.
DSYNC_STAMP_DIR = "/var/lib/mailcluster/dsync"
# The auth cache (dovecot.conf). Postfix 3.7's Dovecot SASL client turns every FAIL from Dovecot
# into a permanent "535 authentication failed", a temporary one too: it never reads Dovecot's
# "temp" flag (xsasl_dovecot_handle_reply in src/xsasl/xsasl_dovecot_server.c), and a mail client
# then asks its user for the password again. So while a node's MariaDB is down (the guard's grace
# before the peer takes over, drill 4) a user must not need the database: when a lookup fails
# for an internal reason Dovecot uses the user's cached entry even after its TTL
# ("Falling back to expired data from cache", src/auth/auth-request.c), so a user seen on this
# node since Dovecot started still logs in. The TTL bounds how long a password changed outside
# `ops mailbox passwd` (which flushes every node's cache) keeps its old value; unknown users and
# wrong passwords are never cached (negative TTL 0), so a new mailbox logs in at once.
AUTH_CACHE_SIZE = "10M"
AUTH_CACHE_TTL_S = 60


def replica_targets(ctx: HostContext) -> list[tuple[str, str]]:
    """(comment, mail_replica) for the replicator: the DC peer over the private network."""
    peer = ctx.peer
    return [(f"DC peer {peer.name}", f"tcps:{peer.private_ipv4}:{DOVEADM_PORT}")]


def cross_dc_targets(ctx: HostContext) -> list[tuple[str, str]]:
    """(node name, dsync destination) in the other data centre: each node's mesh address."""
    topo = ctx.topology
    other = [n for n in topo.nodes if n.dc != ctx.node.dc]
    return [(n.name, f"tcps:{topo.mesh_address(n)}:{DOVEADM_PORT}") for n in other]


def doveadm_servers(ctx: HostContext) -> list[str]:
    """Every other node's doveadm server (host:port), for commands on a node's own mailboxes
    (mailcluster-dsync's GUID repair): the DC peer first, then the other data centre."""
    other = [target.removeprefix("tcps:") for _, target in cross_dc_targets(ctx)]
    return [f"{ctx.peer.private_ipv4}:{DOVEADM_PORT}", *other]


def steps(ctx: HostContext) -> list[Step]:
    topo, node = ctx.topology, ctx.node
    vip = topo.shared_ip(node.dc)
    vip6 = topo.shared_ipv6(node.dc)
    files = [
        ctx.file(
            "/etc/dovecot/dovecot.conf",
            protocols="imap lmtp",
            cluster_cert=tls.CLUSTER_CHAIN,
            cluster_key=tls.CLUSTER_KEY,
            public_cert=tls.CHAIN,
            public_key=tls.KEY,
            ca_file=tls.CA,
            tls_ciphers=tls.MOZILLA_INTERMEDIATE_CIPHERS,
            vmail_dir=storage.VMAIL_DIR,
            vmail_uid=storage.VMAIL_UID,
            vmail_gid=storage.VMAIL_GID,
            sql_conf=SQL_CONF,
            auth_cache_size=AUTH_CACHE_SIZE,
            auth_cache_ttl_s=AUTH_CACHE_TTL_S,
            replicas=replica_targets(ctx),
            doveadm_port=DOVEADM_PORT,
            # The peer replicates over the private network, the other data centre over the
            # mesh: never a public address.
            doveadm_addresses=f"{node.private_ipv4}, {topo.mesh_address(node)}",
            # IMAP for users on the shared IPs of both families (ip_nonlocal_bind: bound before
            # this node holds them) and loopback (Roundcube).
            imap_addresses=", ".join(a for a in (vip, vip6, "127.0.0.1") if a),
            imap_port=143 if ctx.config.imap_plaintext else 0,
            postmaster=ctx.config.postmaster,
            # Relative: resolved beside dovecot.conf, so a checker can load a rendered copy.
            secrets_include=SECRETS_CONF.rsplit("/", 1)[1],
        ),
        ctx.file(
            SQL_CONF,
            mode="0600",
            secret=True,
            db_name=mariadb.POSTFIXADMIN_DB,
            db_user=DB_USER,
            db_password=ctx.secrets.db_dovecot,
        ),
        ctx.file(SECRETS_CONF, mode="0600", secret=True, doveadm_password=ctx.secrets.doveadm),
    ]
    dsync = ctx.file(
        DSYNC_SCRIPT,
        mode="0755",
        is_active_dc=node.dc == topo.active_dc,
        vip=vip,
        targets=cross_dc_targets(ctx),
        servers=doveadm_servers(ctx),
        interval=DSYNC_INTERVAL_S,
        user_timeout=DSYNC_USER_TIMEOUT_S,
        changed_timeout=DSYNC_CHANGED_TIMEOUT_S,
        parallel=DSYNC_PARALLEL,
        full_every_min=DSYNC_FULL_EVERY_MIN,
        vmail_dir=storage.VMAIL_DIR,
        stamp_dir=DSYNC_STAMP_DIR,
    )
    cron = ctx.file(DSYNC_CRON, after=(dsync,), full_every_min=DSYNC_FULL_EVERY_MIN)
    reload = script_step(
        RELOAD_STEP,
        reload_or_start(
            "dovecot",
            check="""doveconf -n >/dev/null
# Dovecot runs on every node (each is a replication target): reload it, or start it.""",
            running=pidfile_alive("/run/dovecot/master.pid"),
            reload="doveadm reload",
        ),
        watch=(*files, *tls.public_pair_steps(ctx), *tls.cluster_pair_steps()),
        after=(storage.VMAIL_STEP,),
    )
    return [*files, dsync, cron, reload]
