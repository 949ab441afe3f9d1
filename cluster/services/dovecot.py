"""Dovecot 2.4: IMAP for users, LMTP and SASL auth for Postfix, a doveadm server for dsync, and
an event for every mailbox change, which replication.py's controller turns into syncs.

Users and passwords come from Postfix Admin's ``mailbox`` table (SHA512-CRYPT); quotas from
``mailbox.quota`` (bytes, 0 = unlimited). Maildirs live on the data volume at
``/srv/mail/vmail/<domain>/<user>``.

Indexes and control files (``dovecot.index*``, ``dovecot-uidlist``, ``dovecot-keywords``, the
subscriptions) are Dovecot's maildir defaults, inside each maildir: the configuration names no
``mail_index_path`` or ``mail_control_path``, so they are on the volume with the mail (a render
test holds this). Its sockets for Postfix are in Postfix's queue directory, which postfix.py
keeps on the volume.

Replication (Dovecot 2.4 has no replicator): every node runs Dovecot, whose doveadm server takes
dsync from the other nodes on its mesh address only, with the shared ``doveadm_password``, over
plain TCP: WireGuard already encrypts every packet between two nodes and proves who sent it
(mesh.py), and dsync over Dovecot 2.4.1's TLS hangs for good now and then. Seen in the lab
(about one sync in a hundred under a stream of mail; 23 in 35 minutes): the pushing side waits
for a reply that the target has sent and that neither socket holds any more. That is the bug
upstream fixed in August 2026, after 2.4.4 (dovecot/core c4fab4f95d and 4c82c59844: "That's how
istream-multiplex ended up losing the SSL istream's i_stream_set_input_pending() calls"; the
doveadm protocol multiplexes dsync and its log over the TLS stream). Over plain TCP the data
waits in the socket, where the ioloop sees it. The
``notify`` and ``push_notification`` plugins raise ``push_notification_finished`` for every
committed change in any process, and an event exporter posts it to the node's replication
controller on loopback, which runs its syncs through the doveadm HTTP API on loopback
(replication.py says who pushes to whom).
"""

from __future__ import annotations

from typing import Any

from cluster import ports
from cluster.hostcontext import HostContext
from cluster.plan import (
    CHANGED_MARK,
    Step,
    file_step_name,
    reload_or_start,
    script_step,
)
from cluster.services import mariadb, nodepkg, rspamd, storage, tls

PACKAGES: tuple[str, ...] = (
    "dovecot-core",
    "dovecot-imapd",
    "dovecot-lmtpd",
    "dovecot-mysql",
    # Pigeonhole: Sieve in LMTP and IMAP (imapsieve), and ManageSieve.
    "dovecot-sieve",
    "dovecot-managesieved",
)

CONF = "/etc/dovecot/dovecot.conf"
# The read-only database user mariadb.py creates for Dovecot.
DB_USER = "dovecot"
DOVEADM_PORT = ports.DOVEADM_PORT
SQL_CONF = "/etc/dovecot/dovecot-sql.conf.ext"
SECRETS_CONF = "/etc/dovecot/mailcluster-secrets.conf.ext"
RELOAD_STEP = "dovecot.reload"
IMAPS_PORT = ports.IMAPS_PORT
BASE_DIR = "/run/dovecot/"
# Postfix's chroot (its queue directory): the LMTP and SASL sockets it reaches.
LMTP_SOCKET = "/var/spool/postfix/private/dovecot-lmtp"
AUTH_SOCKET = "/var/spool/postfix/private/auth"
SOCKET_DIR = LMTP_SOCKET.rsplit("/", 1)[0]
SOCKET_DIR_SCRIPT = f"[ -d {SOCKET_DIR} ] || install -d -o postfix -g root -m 0700 {SOCKET_DIR}"
# The auth cache (dovecot.conf). Postfix 3.7's Dovecot SASL client turns every FAIL from Dovecot
# into a permanent "535 authentication failed", a temporary one too: it never reads Dovecot's
# "temp" flag (xsasl_dovecot_handle_reply in src/xsasl/xsasl_dovecot_server.c), and a mail client
# then asks its user for the password again. So while a node's MariaDB is down (the guard's grace
# before the peer takes over, drill 4) a user must not need the database: when a lookup fails
# for an internal reason Dovecot uses the user's cached entry even after its TTL
# ("Falling back to expired data from cache", src/auth/auth-request.c, unchanged in 2.4.1), so a
# user seen on this node since Dovecot started still logs in. The TTL bounds how long a password
# changed outside `ops mailbox passwd` (which flushes every node's cache) keeps its old value;
# unknown users and wrong passwords are never cached (negative TTL 0), so a new mailbox logs in
# at once.
AUTH_CACHE_SIZE = "10M"
AUTH_CACHE_TTL_S = 60
# Where Dovecot posts its change events: the replication controller listens there (loopback).
EVENTS_PORT = 12346
EVENTS_URL = f"http://127.0.0.1:{EVENTS_PORT}/events"
# The doveadm HTTP API on loopback, which the controller runs its syncs through: a doveadm
# server process kept warm runs each (6 ms of CPU on the pushing node where a doveadm command
# took 43 ms, and 29 ms instead of 72 ms wall, measured with two Dovecot 2.4.1 in the lab's
# base). https://doc.dovecot.org/2.4.1/core/admin/doveadm.html
DOVEADM_HTTP_PORT = 12347
DOVEADM_API_URL = f"http://127.0.0.1:{DOVEADM_HTTP_PORT}/doveadm/v1"
# A doveadm server process serves this many connections before it is replaced (Dovecot's default
# is 1, "just in case there were any memory leaks. This could be set to some larger value ...
# for higher performance", https://doc.dovecot.org/2.4.1/core/config/service.html#doveadm; our
# mail has one uid, so a process never keeps another user's privileges), and this many wait
# ready: the controller's workers of one target.
DOVEADM_REQUESTS_PER_PROCESS = 100
DOVEADM_WARM_PROCESSES = 4
# The event exporter's bound on one POST, queue time included (Dovecot's default is 250 ms, then
# the event is dropped). The controller answers at once; this covers a burst queued behind one
# connection (the exporter posts one event at a time) and a controller restarting.
EVENTS_TIMEOUT_MS = 5000
EVENTS_CONNECTIONS = 4
# Which events reach the controller: every committed mailbox change (push_notification_finished)
# except the doveadm server's (reason doveadm:cmd_dsync_server): those are other nodes' syncs
# arriving here, which they know of, and which would otherwise echo back. Not the wider
# "NOT category=service:doveadm": that would hide an administrator's doveadm (import, flags,
# expunge: a restore) and what this node's own syncs bring back from a target, which its other
# targets may lack (the controller syncs them on; checked with two real Dovecot 2.4.1: bounded,
# one sync that finds nothing to do). Filter language:
# https://doc.dovecot.org/2.4.1/core/config/events/filter.html
# Room for Sieve (issue 25): ManageSieve edits are no mailbox transaction, so they raise no
# push_notification_finished; "OR event=managesieve_command_finished" here is all they need (the
# controller syncs the user of any event, and dsync carries Sieve scripts as attributes through
# Pigeonhole's doveadm plugin, which the base already has).
EVENTS_FILTER = (
    "(event=push_notification_finished AND NOT reason_code=doveadm:cmd_dsync_server)"
    " OR (event=managesieve_command_finished AND (cmd_name=PUTSCRIPT OR cmd_name=SETACTIVE"
    " OR cmd_name=DELETESCRIPT OR cmd_name=RENAMESCRIPT))"
)
MANAGESIEVE_PORT = ports.MANAGESIEVE_PORT
# A user's Sieve storage: enough for hand-written filters and Roundcube's, bounded so a
# ManageSieve client cannot fill the volume (Pigeonhole's defaults are unlimited).
SIEVE_MAX_SCRIPTS = 20
SIEVE_MAX_STORAGE = "1M"
# The global scripts (compiled by the plan): the before-script that files spam into Junk, and
# imapsieve's two that teach rspamd from the user's moves into and out of Junk.
SIEVE_DIR = "/etc/dovecot/sieve"
SPAM_SCRIPT_NAME = "spam-to-junk"
SPAM_SCRIPT = f"{SIEVE_DIR}/{SPAM_SCRIPT_NAME}.sieve"
REPORT_SPAM_NAME = "report-spam"
REPORT_SPAM_SCRIPT = f"{SIEVE_DIR}/{REPORT_SPAM_NAME}.sieve"
REPORT_HAM_NAME = "report-ham"
REPORT_HAM_SCRIPT = f"{SIEVE_DIR}/{REPORT_HAM_NAME}.sieve"
# The only programs a Sieve pipe may run: mailcluster-learn (mailnode/learn.py) and no other.
SIEVE_PIPE_DIR = "/usr/local/lib/mailcluster/sieve-pipe"
LEARN_COMMAND = "mailcluster-learn"
LEARN_PASSWORD = "/etc/mailcluster/secrets/rspamd-controller"
# Quota warnings by mail, highest first (only the first threshold crossed runs).
QUOTA_WARNING_PERCENTS = (95, 80)
QUOTA_WARNING_COMMAND = "mailcluster-quota-warning"
QUOTA_WARNING_PROGRAM = f"/usr/local/sbin/{QUOTA_WARNING_COMMAND}"
# Postfix's policy client asks here, inside its chroot (postfix.py names it).
QUOTA_STATUS_SOCKET = f"{SOCKET_DIR}/quota-status"
# A temporary refusal: the sender's server retries while the user makes room (RFC 3463 4.2.2
# "mailbox full").
QUOTA_STATUS_OVERQUOTA = "452 4.2.2 Mailbox is full"


def conf_values(ctx: HostContext) -> dict[str, Any]:
    """The values of dovecot.conf for this node (the checkers' tests change paths and ports)."""
    topo, node = ctx.topology, ctx.node
    vip = topo.shared_ip(node.dc)
    vip6 = topo.shared_ipv6(node.dc)
    return {
        "protocols": "imap lmtp sieve",
        "base_dir": BASE_DIR,
        "log_path": "syslog",
        "cluster_cert": tls.CLUSTER_CHAIN,
        "cluster_key": tls.CLUSTER_KEY,
        "public_cert": tls.CHAIN,
        "public_key": tls.KEY,
        "tls_ciphers": tls.MOZILLA_INTERMEDIATE_CIPHERS,
        "vmail_dir": storage.VMAIL_DIR,
        "vmail_uid": storage.VMAIL_UID,
        "vmail_gid": storage.VMAIL_GID,
        "vmail_user": storage.VMAIL_USER,
        "auth_cache_size": AUTH_CACHE_SIZE,
        "auth_cache_ttl_s": AUTH_CACHE_TTL_S,
        "doveadm_port": DOVEADM_PORT,
        # Other nodes' syncs arrive over the mesh only: never on a public or VPC address.
        "doveadm_address": topo.mesh_address(node),
        "events_url": EVENTS_URL,
        "doveadm_http_port": DOVEADM_HTTP_PORT,
        "doveadm_requests_per_process": DOVEADM_REQUESTS_PER_PROCESS,
        "doveadm_warm_processes": DOVEADM_WARM_PROCESSES,
        "events_timeout_ms": EVENTS_TIMEOUT_MS,
        "events_connections": EVENTS_CONNECTIONS,
        "events_filter": EVENTS_FILTER,
        # IMAP for users on the shared IPs of both families (ip_nonlocal_bind: bound before
        # this node holds them) and loopback (Roundcube).
        "imap_addresses": " ".join(a for a in (vip, vip6, "127.0.0.1") if a),
        "imap_port": ports.IMAP_PLAINTEXT_PORT if ctx.config.imap_plaintext else 0,
        "imaps_port": IMAPS_PORT,
        "lmtp_socket": LMTP_SOCKET,
        "auth_socket": AUTH_SOCKET,
        "postmaster": ctx.config.postmaster,
        "managesieve_port": MANAGESIEVE_PORT,
        "sieve_max_scripts": SIEVE_MAX_SCRIPTS,
        "sieve_max_storage": SIEVE_MAX_STORAGE,
        "spam_script_name": SPAM_SCRIPT_NAME,
        "spam_script": SPAM_SCRIPT,
        "report_spam_name": REPORT_SPAM_NAME,
        "report_spam_script": REPORT_SPAM_SCRIPT,
        "report_ham_name": REPORT_HAM_NAME,
        "report_ham_script": REPORT_HAM_SCRIPT,
        "sieve_pipe_dir": SIEVE_PIPE_DIR,
        "quota_warnings": QUOTA_WARNING_PERCENTS,
        "quota_warning_program": QUOTA_WARNING_PROGRAM,
        "quota_status_socket": QUOTA_STATUS_SOCKET,
        "quota_status_overquota": QUOTA_STATUS_OVERQUOTA,
        # Relative: resolved beside dovecot.conf, so a checker can load a rendered copy.
        "sql_include": SQL_CONF.rsplit("/", 1)[1],
        "secrets_include": SECRETS_CONF.rsplit("/", 1)[1],
    }


def sql_values(ctx: HostContext) -> dict[str, Any]:
    """The values of the SQL include (the database password among them)."""
    return {
        "db_host": "127.0.0.1",
        "db_port": ports.MARIADB_PORT,
        "db_name": mariadb.POSTFIXADMIN_DB,
        "db_user": DB_USER,
        "db_password": ctx.secrets.db_dovecot,
    }


def sieve_steps(ctx: HostContext) -> list[Step]:
    """The global Sieve scripts and their compiled forms (deliveries and IMAP run as the mail
    uid and could not write a binary beside a script in /etc), and the learn program the
    report scripts pipe to, with the controller's password for the mail uid alone."""
    scripts = [
        ctx.file(SPAM_SCRIPT, spam_header=rspamd.SPAM_HEADER),
        ctx.file(REPORT_SPAM_SCRIPT, learn_program=LEARN_COMMAND),
        ctx.file(REPORT_HAM_SCRIPT, learn_program=LEARN_COMMAND),
    ]
    compile_lines = "\n".join(
        f"""if [ ! {path.removesuffix(".sieve")}.svbin -nt {path} ]; then
  sievec -c {CONF} {path}
  echo "{CHANGED_MARK} {path.removesuffix(".sieve")}.svbin compiled"
fi"""
        for path in (SPAM_SCRIPT, REPORT_SPAM_SCRIPT, REPORT_HAM_SCRIPT)
    )
    # With dovecot.conf's Sieve plugins (imapsieve, the pipe): after it is in place.
    conf_files = tuple(map(file_step_name, (CONF, SQL_CONF, SECRETS_CONF)))
    compiled = script_step("dovecot.sieve-compiled", compile_lines, watch=scripts, after=conf_files)
    learn = nodepkg.entry_point(ctx, LEARN_COMMAND, "learn")
    pipe = ctx.literal_file(
        f"{SIEVE_PIPE_DIR}/{LEARN_COMMAND}",
        "#!/bin/sh\n# managed by mailcluster; edits are overwritten\n"
        f'exec /usr/local/sbin/{LEARN_COMMAND} "$@"\n',
        mode="0755",
        after=(learn,),
    )
    password = ctx.literal_file(
        LEARN_PASSWORD,
        ctx.secrets.rspamd_controller + "\n",
        mode="0600",
        owner=storage.VMAIL_USER,
        group=storage.VMAIL_USER,
        secret=True,
        after=(storage.VMAIL_STEP,),
    )
    return [*scripts, compiled, learn, pipe, password]


def steps(ctx: HostContext) -> list[Step]:
    sieve = sieve_steps(ctx)
    quota_warning = nodepkg.entry_point(ctx, QUOTA_WARNING_COMMAND, "quota_warning")
    files = [
        ctx.file(CONF, **conf_values(ctx)),
        ctx.file(SQL_CONF, mode="0600", secret=True, **sql_values(ctx)),
        ctx.file(SECRETS_CONF, mode="0600", secret=True, doveadm_password=ctx.secrets.doveadm),
    ]
    reload = script_step(
        RELOAD_STEP,
        # A restart, not a reload: Dovecot 2.4.1's master (trixie's 1:2.4.1-4) dies of SIGSEGV
        # at the second SIGHUP (`doveadm reload`, `systemctl reload`) since it started (3 times of
        # 3 in the lab, 7 December 2026): a second settings change would leave the node with
        # no IMAP, LMTP or SASL. IMAP clients reconnect after a restart; Postfix retries LMTP.
        reload_or_start(
            "dovecot",
            restart=True,
            check=f"""doveconf -n >/dev/null
# The LMTP and SASL sockets are in Postfix's queue directory, whose private/ Postfix makes only
# when it first starts: a listener Dovecot cannot bind fails its start, and a reload panics its
# master (2.4.1: "assertion failed ... service_pids"). Postfix's own layout: postfix, 0700.
{SOCKET_DIR_SCRIPT}
# Dovecot runs on every node (each is a replication target): restart it, or start it.""",
        ),
        watch=(*files, *tls.public_pair_steps(ctx), *tls.cluster_pair_steps()),
        after=(storage.VMAIL_STEP, *sieve, quota_warning),
    )
    return [*sieve, quota_warning, *files, reload]
