"""Health: ``mailcluster-health``, each node's read-only checks of itself.

The operator CLI (``python -m cluster.ops status``) runs it on every node and adds what needs
more than one node. The thresholds are the alert thresholds of the issue that asked for them
(replication lag 30 s, queue 100 messages or 30 min, disks 85 %, certificates 14 days, the last
backup 26 h), named here once so the CLI, the node script, the alerts and the README say the
same numbers.
"""

from __future__ import annotations

from cluster.hostcontext import HostContext
from cluster.plan import PACKAGES_STEP, Step
from cluster.services import (
    backup,
    bayes,
    domains,
    fail2ban,
    ratelimit,
    replication,
    role,
    storage,
    sync,
    tls,
)
from cluster.services.role import CLUSTER_CONF, ROLE_SCRIPT, ROLE_SCRIPT_STEP

# cl_status is Heartbeat's; rndc BIND's; mariadb MariaDB's: all there already. These are the
# script's own tools.
PACKAGES: tuple[str, ...] = ("openssl", "procps")

HEALTH_SCRIPT = "/usr/local/sbin/mailcluster-health"
MAX_REPLICATION_LAG_S = 30
MAX_QUEUE = 100
MAX_QUEUE_AGE_S = 30 * 60
MAX_DISK_PCT = 85
MIN_CERT_DAYS = 14
# mailcluster-websync pushes each minute.
MAX_WEBSYNC_AGE_S = 5 * 60
# mailcluster-backup's stamps: the last successful backup (its mtime; no file: no backup ran
# here, which the check says, ok) and the last repository check ("<epoch> ok|failed <why>").
BACKUP_STAMP = backup.LAST_SUCCESS
BACKUP_CHECK_STAMP = backup.LAST_CHECK
MAX_BACKUP_AGE_S = 26 * 3600
# A sender deferred at the sending limit within this window fails the "ratelimit" check: two
# of the alerts' one-minute runs see each deferral, and the check clears soon after it stops.
RATELIMIT_WINDOW_MIN = 2
# The certificates users see and the one peers verify each other with.
CERTIFICATES = (("users", tls.CHAIN), ("cluster", tls.CLUSTER_CHAIN))


def steps(ctx: HostContext) -> list[Step]:
    return [
        ctx.file(
            HEALTH_SCRIPT,
            mode="0755",
            after=(PACKAGES_STEP, ROLE_SCRIPT_STEP),
            cluster_conf=CLUSTER_CONF,
            role_script=ROLE_SCRIPT,
            role_lock=role.ROLE_LOCK,
            promote_failed_mark=role.PROMOTE_FAILED_MARK,
            volume_mount=storage.MOUNT_POINT,
            certificates=CERTIFICATES,
            max_lag_s=MAX_REPLICATION_LAG_S,
            max_queue=MAX_QUEUE,
            max_queue_age_s=MAX_QUEUE_AGE_S,
            max_disk_pct=MAX_DISK_PCT,
            min_cert_days=MIN_CERT_DAYS,
            replication_command=replication.SCRIPT,
            bayes_command=bayes.SCRIPT,
            domains_command=domains.SCRIPT,
            websync_stamp=sync.WEBSYNC_STAMP,
            max_websync_age_s=MAX_WEBSYNC_AGE_S,
            backup_stamp=BACKUP_STAMP,
            backup_check_stamp=BACKUP_CHECK_STAMP,
            max_backup_age_s=MAX_BACKUP_AGE_S,
            ratelimit_window_min=RATELIMIT_WINDOW_MIN,
            ratelimit_tag=ratelimit.LOG_TAG,
            mail_log=fail2ban.MAIL_LOG,
        )
    ]
