"""Brute-force bans: fail2ban from Debian, banning in the host firewall, cluster-wide.

Jails (``JAILS``): Postfix SASL, Dovecot, Roundcube, Postfix Admin and sshd, each reading the
log file rsyslog writes (no journal: the lab has no systemd). Thresholds are the config keys
``banMaxRetry``, ``banFindTimeSeconds`` and ``banTimeSeconds``; ``adminCidrs``, loopback and the
cluster's own addresses are never banned (``ignoreip``).

A ban holds cluster-wide (after a takeover the new active node blocks the attacker too):
fail2ban's action ``mailcluster`` runs ``/usr/local/sbin/mailcluster-bans``, which adds the
address to this node's nft set (``firewall.BAN_SET4``/``BAN_SET6``, with the ban's time as the
element's timeout) and records it in the replicated table ``mailcluster.bans`` on the writer
(the MariaDB master). Every node loads that table from its own replica into its sets every
``SYNC_INTERVAL_S`` seconds (cron runs the loop each minute, as mailcluster-dsync does).
"""

from __future__ import annotations

from dataclasses import dataclass

from cluster.hostcontext import HostContext
from cluster.plan import CHANGED_MARK, PACKAGES_STEP, STATE_DIR, Step, reload_or_start, script_step
from cluster.ports import cluster_cidrs
from cluster.services import firewall, mariadb
from cluster.services.role import ROLE_SCRIPT, ROLE_SCRIPT_STEP

PACKAGES: tuple[str, ...] = ("fail2ban", "nftables", "mariadb-client", "cron")

BANS_SCRIPT = "/usr/local/sbin/mailcluster-bans"
DB = "mailcluster"
DB_TABLE = "bans"
PENDING = f"{STATE_DIR}/bans.pending"
SYNC_INTERVAL_S = 5
TABLE_STEP = "fail2ban.table"
SERVICE_STEP = "fail2ban.service"
MAIL_LOG = "/var/log/mail.log"


@dataclass(frozen=True)
class Jail:
    name: str
    logpath: str
    doc: str
    filter: str = ""  # default: the jail's own name (Debian's filter.d)


JAILS: tuple[Jail, ...] = (
    Jail("postfix-sasl", MAIL_LOG, "Postfix: failed SASL AUTH on 587/465.", "postfix[mode=auth]"),
    Jail("dovecot", MAIL_LOG, "Dovecot: failed IMAP logins (rip= the client)."),
    # Roundcube logs through syslog (log_driver = syslog, facility user): "IMAP Error: Login
    # failed for USER against HOST from CLIENT".
    Jail("roundcube-auth", "/var/log/user.log", "Roundcube: failed webmail logins."),
    Jail("postfixadmin", "/var/log/apache2/error.log",
         "Postfix Admin: failed admin and user logins (PHP error_log, Apache's error log).",
         "mailcluster-postfixadmin"),
    Jail("sshd", "/var/log/auth.log", "sshd: failed logins (SSH is open to adminCidrs only)."),
)  # fmt: skip

TABLE_SQL = f"""CREATE DATABASE IF NOT EXISTS {DB};
CREATE TABLE IF NOT EXISTS {DB}.{DB_TABLE} (
  address VARCHAR(45) NOT NULL PRIMARY KEY,
  jail VARCHAR(64) NOT NULL,
  node VARCHAR(64) NOT NULL,
  banned_at DATETIME NOT NULL,
  expires_at DATETIME NOT NULL,
  KEY expires (expires_at)
);"""


def ignore_addresses(ctx: HostContext) -> list[str]:
    v4, v6 = cluster_cidrs(firewall.known_dcs(ctx.topology))
    return list(dict.fromkeys(["127.0.0.0/8", "::1", *ctx.config.admin_cidrs, *v4, *v6]))


def steps(ctx: HostContext) -> list[Step]:
    cfg = ctx.config
    script = ctx.file(
        BANS_SCRIPT,
        mode="0755",
        after=(PACKAGES_STEP, ROLE_SCRIPT_STEP),
        table=firewall.TABLE,
        set4=firewall.BAN_SET4,
        set6=firewall.BAN_SET6,
        db=DB,
        db_table=DB_TABLE,
        pending=PENDING,
        interval=SYNC_INTERVAL_S,
        role_script=ROLE_SCRIPT,
    )
    files = [
        ctx.file(
            "/etc/fail2ban/jail.d/mailcluster.conf",
            ignoreip=ignore_addresses(ctx),
            max_retry=cfg.ban_max_retry,
            find_time=cfg.ban_find_time_s,
            ban_time=cfg.ban_time_s,
            jails=JAILS,
        ),
        ctx.file(
            "/etc/fail2ban/action.d/mailcluster.conf", script=BANS_SCRIPT, table=firewall.TABLE
        ),
        ctx.file("/etc/fail2ban/filter.d/mailcluster-postfixadmin.conf"),
    ]
    out: list[Step] = [script, *files]
    if ctx.topology.initialises_database(ctx.node):
        out.append(
            script_step(
                TABLE_STEP,
                f"""{ROLE_SCRIPT} is-writer || exit 0
have=$(mysql --protocol=socket -uroot -N -B -e "SHOW TABLES FROM {DB} LIKE '{DB_TABLE}'" \\
  2>/dev/null || true)
[ -n "$have" ] && exit 0
mysql --protocol=socket -uroot
echo "{CHANGED_MARK} {DB}.{DB_TABLE}"
""",
                stdin=TABLE_SQL,
                after=(mariadb.USERS_STEP, ROLE_SCRIPT_STEP),
            )
        )
    out += [
        script_step(
            SERVICE_STEP,
            # The log files must exist before fail2ban starts: a jail whose file is missing
            # fails the whole server (a fresh node may not have logged mail or web yet).
            f"""[ -d /var/log/apache2 ] || install -d -m 0750 -g adm /var/log/apache2
for f in {" ".join(dict.fromkeys(j.logpath for j in JAILS))}; do
  [ -e "$f" ] || install -m 0640 -o root -g adm /dev/null "$f"
done
"""
            + reload_or_start(
                "fail2ban",
                check="fail2ban-client --test >/dev/null",
                running="fail2ban-client ping >/dev/null 2>&1",
                reload="fail2ban-client reload >/dev/null",
            ),
            watch=files,
            after=(firewall.LOAD_STEP, script),
        ),
        ctx.file(
            "/etc/cron.d/mailcluster-bans",
            after=(PACKAGES_STEP, script),
            script=BANS_SCRIPT,
            interval=SYNC_INTERVAL_S,
        ),
    ]
    return out
