"""Backups: restic (Debian) from the node that serves mail to an S3-compatible repository.

Replication copies a deletion or a corruption to every node within seconds; a backup is the
copy that does not follow. ``/usr/local/sbin/mailcluster-backup`` (templates/) does the work:

- What, in one snapshot per run: the maildirs (Dovecot's maildir is crash-consistent: files
  are written in ``tmp/`` and renamed), a ``mariadb-dump --single-transaction --master-data=2
  --gtid`` of each application database (written to a spool directory on the volume first, so
  the snapshot holds dumps and mail of the same moment), the zone data BIND keeps, the Postfix
  Admin and Roundcube configuration and the DKIM keys.
- Where: the repository string and key pair come with the cluster secrets (the
  ``backupRepository`` config, or the stack's Object Storage bucket; in the lab the client's S3
  server, ``cluster/lab/s3server.py``), encrypted with the generated ``backup_password``. They
  reach the node in two 0600 files; restic reads the password with ``RESTIC_PASSWORD_FILE``.
- When: a timer (``mailcluster-backup.timer``) runs it every ``backupIntervalHours`` on every
  node; it does nothing unless ``mailcluster-role is-writer`` (the node that serves mail: follows
  a failover), and ``flock`` keeps it apart from an operator's backup or restore. After each
  backup ``forget --prune`` enforces the retention (``backupKeep*``); a weekly timer
  (``mailcluster-backup-check.timer``) runs ``restic check``.
- The repository is restic's format 2 (restic 0.18, Debian 13): compressed (``auto``) as well as
  deduplicated and encrypted.
- Snapshots carry the host name ``HOST_TAG`` (not the node's), so retention and restic's
  parent snapshot are the cluster's, whichever node ran the backup.
- Stamps for the health checks (``LAST_SUCCESS``, ``LAST_CHECK``): see their comments.
"""

from __future__ import annotations

from cluster.hostcontext import HostContext
from cluster.plan import PACKAGES_STEP, STATE_DIR, Step
from cluster.services import bindpaths, mariadb, replication, rspamd, storage, units
from cluster.services.apache import ROUNDCUBE_CONFIG
from cluster.services.postfixadmin import CONFIG as POSTFIXADMIN_CONFIG
from cluster.services.role import ROLE_SCRIPT, ROLE_SCRIPT_STEP

PACKAGES: tuple[str, ...] = ("restic", "util-linux", "mariadb-client")

BACKUP_SCRIPT = "/usr/local/sbin/mailcluster-backup"
BACKUP_UNIT = "mailcluster-backup"  # .service and .timer: the scheduled backup
CHECK_UNIT = "mailcluster-backup-check"  # .service and .timer: the weekly repository check
ENV_FILE = "/etc/mailcluster/secrets/backup.env"
PASSWORD_FILE = "/etc/mailcluster/secrets/backup.password"
CACHE_DIR = "/var/cache/mailcluster-backup"
STAMP_DIR = f"{STATE_DIR}/backup"
# "<epoch> <snapshot id>": the end of the last backup that saved a snapshot, written by the
# writer only. A health check reads it on every node and takes the newest (after a failover
# the new writer has an old stamp or none until its first run).
LAST_SUCCESS = f"{STAMP_DIR}/last-success"
# "<epoch> ok" or "<epoch> failed <restic's last line>": the last repository check.
LAST_CHECK = f"{STAMP_DIR}/last-check"
MAX_BACKUP_AGE_S = 26 * 3600  # the alert threshold of the issue that asked for backups
# Dumps are written here before each backup (on the volume: as big as the databases).
SPOOL_DIR = f"{storage.NODE_STATE_DIR}/backup-spool"
# Restores unpack here first (on the volume; the mail user must be able to read it).
WORK_DIR = f"{storage.MOUNT_POINT}/backup-work"
HOST_TAG = "mailcluster"
# The accounts, webmail's own data, and the cluster's tables (the further domains' DKIM keys, so
# a restored cluster signs with the keys DNS already publishes).
DATABASES = (mariadb.POSTFIXADMIN_DB, mariadb.ROUNDCUBE_DB, mariadb.CLUSTER_DB)
SCRATCH_DB = "mailcluster_restore"
LOCK_FILE = "/run/lock/mailcluster-backup.lock"
LOCK_WAIT_S = 300  # an operator's backup or restore waits this long for a running one
# Besides the hourly/daily/monthly ones, every snapshot of the last hours stays: an operator's
# `backup run` would otherwise be pruned by the next hourly run of the same hour.
KEEP_WITHIN = "2h"
SYNC_TIMEOUT_S = 1800  # one full push of every mailbox to every node after a cluster restore
BACKUP_MINUTE = 17  # past the hour: away from the top of the hour that other jobs favour
CHECK_CALENDAR = "Sun *-*-* 03:47:00"  # weekly (systemd.time(7))

PATHS = (
    storage.VMAIL_DIR,
    SPOOL_DIR,
    bindpaths.ZONE_DIR,
    "/etc/bind/mailcluster",
    POSTFIXADMIN_CONFIG.rsplit("/", 1)[0],
    ROUNDCUBE_CONFIG.rsplit("/", 1)[0],
    rspamd.DKIM_DIR,
)

# Left out of every snapshot (restic --exclude): Dovecot's lock files, which live for
# milliseconds, and the maildirs' tmp/, which holds mail still being written (never a message
# yet: a delivery is one only once renamed into new/). The tmp/ directories themselves stay.
EXCLUDES = (
    f"{storage.VMAIL_DIR}/**/dovecot*.lock",
    f"{storage.VMAIL_DIR}/**/tmp/*",
)


def keep_args(hourly: int, daily: int, monthly: int) -> str:
    """restic forget's retention options (a zero keeps none of that kind)."""
    pairs = (("hourly", hourly), ("daily", daily), ("monthly", monthly))
    return " ".join([f"--keep-within {KEEP_WITHIN}",
                     *(f"--keep-{kind} {n}" for kind, n in pairs if n > 0)])  # fmt: skip


def backup_calendar(interval_hours: int) -> str:
    """When the backup timer fires (systemd.time(7)): at BACKUP_MINUTE past every
    ``interval_hours``-th hour of the day, counted from midnight."""
    hours = "*" if interval_hours == 1 else f"00/{interval_hours}"
    return f"*-*-* {hours}:{BACKUP_MINUTE:02d}:00"


def env_file(repository: str, access_key: str, secret_key: str) -> str:
    """The repository and its key pair for restic (empty values: the script refuses to run,
    naming what is missing)."""
    # Values single-quoted for the shell that sources it; none may hold a quote or a newline.
    for name, value in (("repository", repository), ("access key", access_key),
                        ("secret key", secret_key)):  # fmt: skip
        if "'" in value or "\n" in value:
            raise ValueError(f"backup {name}: must be on one line, without quotes")
    return (
        "# managed by mailcluster; edits are overwritten\n"
        f"RESTIC_REPOSITORY='{repository}'\n"
        f"AWS_ACCESS_KEY_ID='{access_key}'\n"
        f"AWS_SECRET_ACCESS_KEY='{secret_key}'\n"
    )


def steps(ctx: HostContext) -> list[Step]:
    cfg, s = ctx.config, ctx.secrets
    if not s.backup_password:
        raise ValueError("the cluster secrets hold no backup_password (restic's repository key)")
    env = ctx.literal_file(
        ENV_FILE,
        env_file(s.backup_repository, s.backup_access_key, s.backup_secret_key),
        mode="0600",
        secret=True,
    )
    password = ctx.literal_file(PASSWORD_FILE, s.backup_password + "\n", mode="0600", secret=True)
    script = ctx.file(
        BACKUP_SCRIPT,
        mode="0755",
        after=(PACKAGES_STEP, ROLE_SCRIPT_STEP, env, password),
        env_file=ENV_FILE,
        password_file=PASSWORD_FILE,
        cache_dir=CACHE_DIR,
        lock_file=LOCK_FILE,
        lock_wait_s=LOCK_WAIT_S,
        stamp_dir=STAMP_DIR,
        last_success_name=LAST_SUCCESS.rsplit("/", 1)[1],
        last_check_name=LAST_CHECK.rsplit("/", 1)[1],
        spool_dir=SPOOL_DIR,
        work_dir=WORK_DIR,
        vmail_dir=storage.VMAIL_DIR,
        vmail_user=storage.VMAIL_USER,
        host_tag=HOST_TAG,
        role_script=ROLE_SCRIPT,
        databases=DATABASES,
        pfa_db=mariadb.POSTFIXADMIN_DB,
        scratch_db=SCRATCH_DB,
        replication_command=replication.SCRIPT,
        sync_timeout_s=SYNC_TIMEOUT_S,
        paths=PATHS,
        excludes=EXCLUDES,
        keep_args=keep_args(cfg.backup_keep_hourly, cfg.backup_keep_daily,
                            cfg.backup_keep_monthly),
    )  # fmt: skip
    scheduled = units.periodic(
        ctx,
        BACKUP_UNIT,
        f"{BACKUP_SCRIPT} scheduled",
        description="mailcluster backup (on the node that serves mail)",
        on_calendar=backup_calendar(cfg.backup_interval_hours),
        after=(script,),
    )
    check = units.periodic(
        ctx,
        CHECK_UNIT,
        f"{BACKUP_SCRIPT} check-scheduled",
        description="mailcluster backup: the weekly repository check",
        on_calendar=CHECK_CALENDAR,
        after=(script,),
    )
    return [env, password, script, *scheduled, *check]
