"""MariaDB: one writable master (the active data centre's shared-IP holder), three GTID replicas.

Databases ``postfixadmin`` and ``roundcube``; least-privilege users: ``postfix`` and ``dovecot``
SELECT on postfixadmin.* from 127.0.0.1/localhost, ``postfixadmin`` ALL on postfixadmin.*,
``roundcube`` ALL on roundcube.*, ``repl`` REPLICATION SLAVE from each known node's private
address and every node's mesh address (fixed by place: the other data centre's replicas are
admitted before this stack knows their data centre), REQUIRE SSL; with ``metricsCidrs``,
``exporter`` (the Prometheus mysqld exporter, metrics.py) from localhost with what its
documentation asks and no more: PROCESS, REPLICATION CLIENT, SELECT on performance_schema, and
SLAVE MONITOR (MariaDB 10.5 moved SHOW SLAVE STATUS from REPLICATION CLIENT to it), at most 3
connections (dropped again without it).

MariaDB listens on 127.0.0.1 (the local services), the node's private address (its data-centre
peer replicates over the data centre's VPC subnet) and its mesh address (the other data
centre's nodes replicate over the WireGuard mesh, see mesh.py): never on a public address.

Users and databases are created only on the master, with the binary log on, and reach the
replicas by replication, so all four servers share one GTID history. How a replica gets the
initial data: every server starts empty from the Debian package (nothing of the package's own
setup is in a binary log), binary logs are never expired, and a replica connects with
``MASTER_USE_GTID=slave_pos`` from an empty position, so it replays the master's whole history,
including the CREATE USER/DATABASE and the schema. This needs no dump, no lock and no ordering
beyond "the master exists", and a rebuilt replica catches up the same way. (If the logs are ever
purged by hand, seed a new replica with ``mariadb-dump --gtid --master-data`` first.)

Replication itself is configured by ``mailcluster-role`` (see role.py): the step here runs
``mailcluster-role reconcile-db``, which on the master lifts read_only and on the others runs
``CHANGE MASTER TO ... MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1`` only when not already
replicating from the right source. The replication password is read from a 0600 file; every
other password reaches ``mariadb`` on stdin.
"""

from __future__ import annotations

from cluster.hostcontext import HostContext
from cluster.plan import CHANGED_MARK, PACKAGES_STEP, Step, reload_or_start, script_step
from cluster.services import storage, units
from cluster.services.role import CLUSTER_CONF_STEP, ROLE_SCRIPT, ROLE_SCRIPT_STEP

PACKAGES: tuple[str, ...] = ("mariadb-server", "mariadb-client")

CNF = "/etc/mysql/mariadb.conf.d/60-mailcluster.cnf"
# MariaDB's own copy of the data centre's certificate, owned by mysql (tls.py's is root's).
DB_TLS_DIR = "/etc/mysql/mailcluster"
REPL_SECRET = "/etc/mailcluster/secrets/repl"
SERVICE_STEP = "mariadb.service"
DATA_STEP = "mariadb.data"
# On the volume: the datadir, and the binary and relay logs. The binary logs are the GTID history
# (gtid_binlog_state) that replicas resume from and that a new replica replays from the start;
# without them a rebuilt master would refuse its replicas' positions (gtid_strict_mode). The
# replica's own position (mysql.gtid_slave_pos) and connection (master.info) are in the datadir.
DATA_DIRS = (
    storage.DataDir("mysql", "/var/lib/mysql", "mysql", "mysql", "0755"),
    # Debian's commented default for log_bin, which the package does not create.
    storage.DataDir("mysql-log", "/var/log/mysql", "mysql", "adm", "2750"),
)
USERS_STEP = "mariadb.users"
# Every start of MariaDB renews its clients' connections (Postfix's maps, Dovecot's auth
# workers): see the drop-in.
CLIENTS_DROPIN = "/etc/systemd/system/mariadb.service.d/mailcluster-clients.conf"
CLIENTS_STEP = "mariadb.clients"
# Replicas in the standby data centre follow the active data centre's master: this service runs
# `mailcluster-role follow-loop` (every role.FOLLOW_INTERVAL_S s; idle in the active one).
FOLLOW_UNIT = "mailcluster-dbfollow"
ROLE_STEP = "mariadb.role"
LOCAL_HOSTS = ("127.0.0.1", "localhost")
# The databases created here: Postfix Admin's (domains, mailboxes, aliases) and Roundcube's.
POSTFIXADMIN_DB = "postfixadmin"
ROUNDCUBE_DB = "roundcube"
# The cluster's own tables (bans: fail2ban.py; DKIM keys and zone serials: domains.py).
CLUSTER_DB = "mailcluster"
# The Prometheus mysqld exporter's account (over the local socket: 'localhost').
EXPORTER_USER = "exporter"
EXPORTER_GRANTS = (
    "PROCESS, REPLICATION CLIENT, SLAVE MONITOR ON *.*",
    "SELECT ON performance_schema.*",
)

# Fingerprint of accounts, grants and databases: the users step reports a change only when it
# differs before and after. authentication_string is a hash, never the password itself.
_FINGERPRINT = (
    "SELECT User, Host, authentication_string, ssl_type FROM mysql.user ORDER BY 1, 2; "
    # Global privileges (the bitmask only: Priv also holds password_last_changed).
    "SELECT User, Host, JSON_VALUE(Priv, '$.access') FROM mysql.global_priv ORDER BY 1, 2; "
    "SELECT * FROM mysql.db ORDER BY 1, 2, 3; "
    "SELECT * FROM mysql.tables_priv ORDER BY 1, 2, 3, 4; "
    "SHOW DATABASES;"
)


def _user(name: str, host: str, password: str, grants: str, require_ssl: bool = False) -> str:
    ssl = " REQUIRE SSL" if require_ssl else ""
    return (
        f"CREATE USER IF NOT EXISTS '{name}'@'{host}' IDENTIFIED BY '{password}'{ssl};\n"
        f"ALTER USER '{name}'@'{host}' IDENTIFIED BY '{password}'{ssl};\n"
        f"GRANT {grants} TO '{name}'@'{host}';\n"
    )


def repl_hosts(ctx: HostContext) -> tuple[str, ...]:
    """Where replicas connect from: a peer in the same data centre from its private address,
    the other data centre's nodes from their mesh addresses (all four, whether their data
    centre is known yet or not: ``Topology.all_mesh_addresses``)."""
    topo = ctx.topology
    return tuple(
        dict.fromkeys([n.private_ipv4 for n in topo.nodes] + list(topo.all_mesh_addresses))
    )


def bind_addresses(ctx: HostContext) -> list[str]:
    return ["127.0.0.1", ctx.node.private_ipv4, ctx.topology.mesh_address(ctx.node)]


def users_sql(ctx: HostContext) -> str:
    """The SQL run on the master, on stdin (it holds every database password)."""
    s = ctx.secrets
    passwords = (s.db_postfix, s.db_dovecot, s.db_postfixadmin, s.db_roundcube, s.db_replication,
                 s.db_metrics)  # fmt: skip
    for value in passwords:
        if not value.isalnum():
            raise ValueError("database passwords must be letters and digits (they land in SQL)")
    pfa, rc = POSTFIXADMIN_DB, ROUNDCUBE_DB
    sql = [
        f"CREATE DATABASE IF NOT EXISTS {pfa} CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci;\n",
        f"CREATE DATABASE IF NOT EXISTS {rc} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;\n",
    ]
    for host in LOCAL_HOSTS:
        sql.append(_user("postfix", host, s.db_postfix, f"SELECT ON {pfa}.*"))
        sql.append(_user("dovecot", host, s.db_dovecot, f"SELECT ON {pfa}.*"))
        sql.append(_user("postfixadmin", host, s.db_postfixadmin, f"ALL ON {pfa}.*"))
        sql.append(_user("roundcube", host, s.db_roundcube, f"ALL ON {rc}.*"))
    for addr in repl_hosts(ctx):
        sql.append(_user("repl", addr, s.db_replication, "REPLICATION SLAVE ON *.*", True))
    sql.append(_exporter_sql(ctx))
    return "".join(sql)


def _exporter_sql(ctx: HostContext) -> str:
    """The exporter's account while metrics are on; none when they are off."""
    user = f"'{EXPORTER_USER}'@'localhost'"
    if not ctx.config.metrics_cidrs:
        return f"DROP USER IF EXISTS {user};\n"
    grants = "".join(f"GRANT {g} TO {user};\n" for g in EXPORTER_GRANTS)
    password = ctx.secrets.db_metrics
    return (
        f"CREATE USER IF NOT EXISTS {user} IDENTIFIED BY '{password}' "
        "WITH MAX_USER_CONNECTIONS 3;\n"
        f"ALTER USER {user} IDENTIFIED BY '{password}' WITH MAX_USER_CONNECTIONS 3;\n"
        f"{grants}"
    )


def steps(ctx: HostContext) -> list[Step]:
    topo, node, secrets = ctx.topology, ctx.node, ctx.secrets
    tls = secrets.tls[node.dc]
    tls_files = [
        ctx.literal_file(f"{DB_TLS_DIR}/cert.pem", tls.cert_pem, owner="mysql", group="mysql"),
        ctx.literal_file(
            f"{DB_TLS_DIR}/key.pem", tls.key_pem, mode="0600", owner="mysql", group="mysql",
            secret=True,
        ),
        ctx.literal_file(f"{DB_TLS_DIR}/ca.pem", secrets.ca_cert_pem, owner="mysql",
                         group="mysql"),
    ]  # fmt: skip
    cnf = ctx.file(CNF, after=(PACKAGES_STEP, *tls_files), bind_addresses=bind_addresses(ctx))
    repl_secret = ctx.literal_file(
        REPL_SECRET, secrets.db_replication + "\n", mode="0600", secret=True
    )
    clients = ctx.file(CLIENTS_DROPIN, role_script=ROLE_SCRIPT)
    out: list[Step] = [
        cnf,
        *tls_files,
        repl_secret,
        clients,
        # systemd reads the drop-in only after a daemon-reload; the next start runs it.
        script_step(CLIENTS_STEP, "systemctl daemon-reload\n", watch=(clients,)),
        # Started again after a switch with this configuration (binary logs on, read-only).
        *storage.data_steps(
            ctx,
            DATA_STEP,
            DATA_DIRS,
            services=("mariadb",),
            units=("mariadb.service",),
            after=(cnf, *tls_files, repl_secret),
        ),
        # MariaDB cannot reload its configuration: restart, but only when a file it reads changed
        # (a restart is a database outage and brings read_only back until the role step).
        script_step(
            SERVICE_STEP,
            reload_or_start(
                "mariadb",
                running="mariadb-admin --protocol=socket -uroot ping >/dev/null 2>&1",
                restart=True,
            )
            + """for _ in $(seq 1 300); do
  mariadb-admin --protocol=socket -uroot ping >/dev/null 2>&1 && exit 0
  sleep 0.1
done
echo "mariadb does not answer after 30 s" >&2
exit 1
""",
            after=(DATA_STEP, CLIENTS_STEP),
            watch=(cnf, *tls_files),
        ),
    ]
    addrs = " ".join(f"'{a}'" for a in repl_hosts(ctx))
    if topo.initialises_database(node):
        # Declared on every node that can be the master; which one is decided on the host (the
        # shared-IP holder, or svr1 before Heartbeat ever ran).
        out.append(
            script_step(
                USERS_STEP,
                f"""if ! {ROLE_SCRIPT} is-writer </dev/null; then
  echo "not the master: accounts arrive by replication" >&2
  exit 0
fi
q() {{ mariadb --protocol=socket -uroot -N -B "$@"; }}
fp() {{ q -e "{_FINGERPRINT}" | sha256sum; }}
before=$(fp)
q
# repl accounts of addresses that left the cluster
keep=({addrs})
for h in $(q -e "SELECT Host FROM mysql.user WHERE User='repl'"); do
  case " ${{keep[*]}} " in *" $h "*) ;; *) q -e "DROP USER 'repl'@'$h'" ;; esac
done
if [ "$(fp)" != "$before" ]; then
  echo "{CHANGED_MARK} mariadb accounts"
fi
""",
                stdin=users_sql(ctx),
                secret=True,
                # After the role step: on a data-centre failover the new master is writable
                # (replication from the lost master removed) before it writes anything.
                after=(ROLE_STEP, ROLE_SCRIPT_STEP),
            )
        )
    remote: tuple[tuple[str, str], ...] = ()
    master_candidate = f"{topo.active_dc}-svr1"
    if node.dc == topo.active_dc and node.name != master_candidate:
        # Within the active stack, replicas are set up after the master's accounts exist.
        remote = ((master_candidate, USERS_STEP),)
    # Replicas in the standby data centre follow the active data centre's master (role.py); a
    # changed cluster.conf (activeDc) or role script restarts the loop.
    out += units.daemon(
        ctx,
        FOLLOW_UNIT,
        f"{ROLE_SCRIPT} follow-loop",
        description="mailcluster: standby replicas follow the active data centre's master",
        watch=(CLUSTER_CONF_STEP, ROLE_SCRIPT_STEP),
        after=(PACKAGES_STEP, ROLE_SCRIPT_STEP),
        unit_after="mariadb.service",
    )
    out.append(
        script_step(
            ROLE_STEP,
            f"{ROLE_SCRIPT} reconcile-db\n",
            after=(SERVICE_STEP, repl_secret),
            watch=(CLUSTER_CONF_STEP, ROLE_SCRIPT_STEP, SERVICE_STEP),
            after_remote=remote,
        )
    )
    return out
