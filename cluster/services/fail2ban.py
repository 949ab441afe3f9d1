"""Brute-force bans: fail2ban from Debian, banning in the host firewall, cluster-wide.

Jails (``JAILS``): Postfix SASL, Dovecot, Roundcube and sshd read the systemd journal (each its
``journalmatch``: fail2ban wakes on a new entry, no log file in between); Postfix Admin's
failures are only in Apache's error log, a file, polled (fail2ban looks at it at most ~0.8 s
apart). Thresholds are the config keys ``banMaxRetry``, ``banFindTimeSeconds`` and
``banTimeSeconds``; ``adminCidrs``, loopback and the cluster's own addresses are never banned
(``ignoreip``, and ``mailcluster-bans`` refuses them too).

A ban holds cluster-wide (after a takeover the new active node blocks the attacker too):
fail2ban's action ``mailcluster`` runs ``mailcluster-bans`` (``mailnode/bans.py``), which adds
the address to this node's nft set (``firewall.BAN_SET4``/``BAN_SET6``, the ban's time as the
element's timeout) and records it in the replicated table ``mailcluster.bans`` on the writer
(the MariaDB master). Every node runs ``mailcluster-bans.service``, which applies the table's
changes from its own replica to its sets every ``POLL_S`` seconds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cluster.hostcontext import HostContext
from cluster.plan import CHANGED_MARK, PACKAGES_STEP, STATE_DIR, Step, reload_or_start, script_step
from cluster.ports import cluster_cidrs
from cluster.services import firewall, mariadb, nodepkg, units
from cluster.services.role import ROLE_SCRIPT, ROLE_SCRIPT_STEP

PACKAGES: tuple[str, ...] = ("fail2ban", "nftables", "mariadb-client", "python3")

COMMAND = "mailcluster-bans"
BANS_SCRIPT = f"/usr/local/sbin/{COMMAND}"
BANS_CONFIG = "/etc/mailcluster/bans.json"
LOADER_UNIT = "mailcluster-bans"
DB = mariadb.CLUSTER_DB
DB_TABLE = "bans"
PENDING = f"{STATE_DIR}/bans.pending"
# The loader's rhythm: a new ban reaches every node's sets within POLL_S plus the replication
# lag (milliseconds); a query on the local socket costs well under a millisecond.
POLL_S = 1.0
# Rows re-read below the watermark: statements that committed out of their time stamps' order
# (fail2ban runs its jails' actions at once), and a small clock step between two writers.
SLACK_S = 10
# Every bans in force missing from the sets is put back this often (a restarted
# nftables.service starts with empty sets).
RESYNC_S = 30.0
PURGE_AFTER_S = 86400  # rows that ended a day ago are deleted by the writer
TABLE_STEP = "fail2ban.table"
SERVICE_STEP = "fail2ban.service"
MAIL_LOG = "/var/log/mail.log"  # rsyslog's mail log (mailcluster-health reads it)
APACHE_ERROR_LOG = "/var/log/apache2/error.log"


@dataclass(frozen=True)
class Jail:
    """A jail reads the journal (``journalmatch``, fail2ban's systemd backend) or one file
    (``logpath``, polled): exactly one of the two."""

    name: str
    doc: str
    filter: str = ""  # default: the jail's own name (Debian's filter.d)
    journalmatch: str = ""
    logpath: str = ""

    @property
    def backend(self) -> str:
        return "systemd" if self.journalmatch else "polling"


JAILS: tuple[Jail, ...] = (
    # Debian 13 runs Postfix as postfix.service itself (its default instance; 12 had it run
    # postfix@-.service). Dovecot's jail counts these failures too: Postfix asks Dovecot's auth.
    Jail("postfix-sasl", "Postfix: failed SASL AUTH on 587/465.", "postfix[mode=auth]",
         journalmatch="_SYSTEMD_UNIT=postfix.service"),
    # Dovecot 2.4's per-attempt line (auth_verbose): one failure each, as it happens. Debian
    # 13's own filter (fail2ban 1.1.0) matches no line of Dovecot 2.4.1.
    Jail("dovecot", "Dovecot: failed IMAP and SASL logins (each attempt).",
         "mailcluster-dovecot", journalmatch="_SYSTEMD_UNIT=dovecot.service"),
    # Roundcube logs through syslog (log_driver = syslog) from inside Apache: its identifier.
    Jail("roundcube-auth", "Roundcube: failed webmail logins.",
         journalmatch="SYSLOG_IDENTIFIER=roundcube"),
    Jail("postfixadmin",
         "Postfix Admin: failed admin and user logins (PHP error_log, Apache's error log).",
         "mailcluster-postfixadmin", logpath=APACHE_ERROR_LOG),
    # OpenSSH 10 logs a connection's failures from sshd-session.
    Jail("sshd", "sshd: failed logins (SSH is open to adminCidrs only).",
         journalmatch="_SYSTEMD_UNIT=ssh.service + _COMM=sshd + _COMM=sshd-session"),
)  # fmt: skip

TABLE_SQL = f"""CREATE DATABASE IF NOT EXISTS {DB};
CREATE TABLE IF NOT EXISTS {DB}.{DB_TABLE} (
  address VARCHAR(45) NOT NULL PRIMARY KEY,
  jail VARCHAR(64) NOT NULL,
  node VARCHAR(64) NOT NULL,
  banned_at DATETIME NOT NULL,
  expires_at DATETIME NOT NULL,
  changed_at DATETIME(6) NOT NULL,
  KEY expires (expires_at),
  KEY changed (changed_at)
);"""


def ignore_addresses(ctx: HostContext) -> list[str]:
    """Never banned: loopback, the admins, every address of the cluster's nodes, and the mesh
    (a node's traffic to another over WireGuard comes from its mesh address: websync's ssh,
    the mailbox syncs; a ban of it, cluster-wide, cut that node off from every other)."""
    v4, v6 = cluster_cidrs(firewall.known_dcs(ctx.topology))
    return list(
        dict.fromkeys(
            ["127.0.0.0/8", "::1", *ctx.config.admin_cidrs, *v4, *v6, ctx.config.mesh_cidr]
        )
    )


def bans_config(ctx: HostContext) -> dict[str, Any]:
    """/etc/mailcluster/bans.json: what mailnode.bans needs (it never imports ``cluster``)."""
    return {
        "node": ctx.node.name,
        "table": firewall.TABLE,
        "set4": firewall.BAN_SET4,
        "set6": firewall.BAN_SET6,
        "db": DB,
        "db_table": DB_TABLE,
        "mysql": ["mariadb", "--protocol=socket", "-uroot"],
        "nft": ["nft"],
        "role_script": ROLE_SCRIPT,
        "pending": PENDING,
        "never_ban": ignore_addresses(ctx),
        "poll_s": POLL_S,
        "slack_s": SLACK_S,
        "resync_s": RESYNC_S,
        "purge_after_s": PURGE_AFTER_S,
    }


def table_step() -> Step:
    return script_step(
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


def steps(ctx: HostContext) -> list[Step]:
    cfg = ctx.config
    conf = ctx.literal_file(BANS_CONFIG, json.dumps(bans_config(ctx), indent=1) + "\n")
    command = nodepkg.entry_point(ctx, COMMAND, "bans", after=(conf, ROLE_SCRIPT_STEP))
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
        ctx.file("/etc/fail2ban/filter.d/mailcluster-dovecot.conf"),
    ]
    out: list[Step] = [conf, command, *files]
    if ctx.topology.initialises_database(ctx.node):
        out.append(table_step())
    out.append(
        script_step(
            SERVICE_STEP,
            # A polled jail's file must exist before fail2ban starts: a missing one fails the
            # whole server (a fresh node may not have logged a web request yet).
            f"""[ -d /var/log/apache2 ] || install -d -m 0750 -g adm /var/log/apache2
[ -e {APACHE_ERROR_LOG} ] || install -m 0640 -o root -g adm /dev/null {APACHE_ERROR_LOG}
"""
            + reload_or_start(
                "fail2ban",
                check="fail2ban-client --test >/dev/null",
                running="fail2ban-client ping >/dev/null 2>&1",
                reload="fail2ban-client reload >/dev/null",
            ),
            watch=files,
            after=(firewall.LOAD_STEP, command),
        )
    )
    out += units.daemon(
        ctx,
        LOADER_UNIT,
        f"{BANS_SCRIPT} loop",
        description="mailcluster: load the cluster's bans into this node's firewall sets",
        watch=(nodepkg.PACKAGE_STEP, conf, command),
        after=(PACKAGES_STEP, firewall.LOAD_STEP, command),
    )
    return out
