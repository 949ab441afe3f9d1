"""Metrics: Debian's Prometheus exporters on every node, and the cluster's own checks as metrics.

Only with ``metricsCidrs`` set; empty (the default) is off: the packages are not installed, and
turning it off again stops the exporters, keeps them from starting at boot and removes their
credentials and the timer. The ports are in the port table (cluster/ports.py, source
``metrics``), so both firewalls admit them from ``metricsCidrs`` alone.

- ``prometheus-node-exporter`` (9100): the machine (CPU, memory, disks, filesystems, network),
  plus the textfile collector's ``/var/lib/prometheus/node-exporter/*.prom`` (Debian's
  default directory): there ``mailcluster-health-metrics``, every minute from its timer, turns
  ``mailcluster-health``'s lines (health.py: ``NAME<TAB>ok|fail<TAB>VALUE<TAB>DETAIL``, the
  only thing read of it) into ``mailcluster_check_*`` series.
- ``prometheus-mysqld-exporter`` (9104): MariaDB (``mysql_up``, status, replication), as the
  ``exporter`` account mariadb.py creates; its password (a cluster secret) is in a 0600 file
  of the exporter's user, never on a command line.
- ``prometheus-postfix-exporter`` (9154): Postfix's queue (its showq socket) and counters from
  /var/log/mail.log. Postfix runs on both nodes of the active data centre and is stopped in the
  standby one (mailcluster-role), and ``activeDc`` moves that in a failover; the exporter runs
  on every node all the same, so it is there, with its log counters, the moment Postfix starts.
  In the standby data centre ``postfix_up`` is therefore 0 by design: alert on it for the
  active data centre's nodes only (label the scrape targets by data centre).

The node and mysqld exporters listen on the node's public addresses only (both families; a
boot before IPv6's duplicate address detection is done binds all the same: ip_nonlocal_bind,
base.py). The
postfix exporter takes a single listen address, so it listens on all (":9154" is both families
in Go); the host firewall admits only ``metricsCidrs`` to it, as to the others.

The default files (the units' EnvironmentFile) are written before the packages are installed:
the packages' postinst starts the daemons at once, and they must start with these arguments.
"""

from __future__ import annotations

from cluster.hostcontext import HostContext
from cluster.plan import (
    CHANGED_MARK,
    Step,
    absent_file_step,
    file_step_name,
    packages_step,
    reload_or_start,
    script_step,
    start_at_boot,
)
from cluster.ports import MYSQLD_EXPORTER_PORT, NODE_EXPORTER_PORT, POSTFIX_EXPORTER_PORT
from cluster.services import health, mariadb, units

PACKAGES: tuple[str, ...] = ()
# Installed by this service's own step, and only with metricsCidrs set; the lab bakes them into
# its base with the rest (hostplan.all_packages).
OPTIONAL_PACKAGES: tuple[str, ...] = (
    "prometheus-node-exporter",
    "prometheus-postfix-exporter",
    "prometheus-mysqld-exporter",
)

NODE_EXPORTER = "prometheus-node-exporter"
MYSQLD_EXPORTER = "prometheus-mysqld-exporter"
POSTFIX_EXPORTER = "prometheus-postfix-exporter"
EXPORTERS = (NODE_EXPORTER, MYSQLD_EXPORTER, POSTFIX_EXPORTER)
EXPORTER_USER = "prometheus"  # the packages' system user
TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"
PROM_FILE = f"{TEXTFILE_DIR}/mailcluster.prom"
HEALTH_METRICS = "/usr/local/sbin/mailcluster-health-metrics"
HEALTH_UNIT = "mailcluster-health-metrics"  # .service and .timer, every minute
HEALTH_SERVICE = units.unit_path(f"{HEALTH_UNIT}.service")
HEALTH_TIMER = units.unit_path(f"{HEALTH_UNIT}.timer")
TIMER_STEP = f"{HEALTH_UNIT}.enabled"  # units.periodic's enable step
MYSQLD_CNF = "/etc/mailcluster/mysqld-exporter.cnf"
MYSQL_SOCKET = "/run/mysqld/mysqld.sock"
# mailcluster-health is stopped after this long: the metrics stay a minute old at most.
HEALTH_TIMEOUT_S = 50
DEFAULTS = {name: f"/etc/default/{name}" for name in EXPORTERS}
# Every file this service writes (and removes again when off).
FILES = (*DEFAULTS.values(), MYSQLD_CNF, HEALTH_METRICS, HEALTH_SERVICE, HEALTH_TIMER)
INSTALL_STEP = "metrics.packages"
FIRST_RUN_STEP = "metrics.health-first-run"


def enabled(ctx: HostContext) -> bool:
    return bool(ctx.config.metrics_cidrs)


def listen_addresses(ctx: HostContext, port: int) -> list[str]:
    """``--web.listen-address`` values: the node's public IPv4 and IPv6 (if it has one)."""
    out = [f"{ctx.node.public_ipv4}:{port}"]
    if ctx.node.public_ipv6:
        out.append(f"[{ctx.node.public_ipv6}]:{port}")
    return out


def steps(ctx: HostContext) -> list[Step]:
    return _on(ctx) if enabled(ctx) else _off()


def _service_step(name: str) -> str:
    return f"metrics.{name}"


def _on(ctx: HostContext) -> list[Step]:
    defaults = {
        NODE_EXPORTER: ctx.file(
            DEFAULTS[NODE_EXPORTER],
            listen=listen_addresses(ctx, NODE_EXPORTER_PORT),
            textfile_dir=TEXTFILE_DIR,
        ),
        MYSQLD_EXPORTER: ctx.file(
            DEFAULTS[MYSQLD_EXPORTER],
            listen=listen_addresses(ctx, MYSQLD_EXPORTER_PORT),
            my_cnf=MYSQLD_CNF,
        ),
        POSTFIX_EXPORTER: ctx.file(DEFAULTS[POSTFIX_EXPORTER], listen=f":{POSTFIX_EXPORTER_PORT}"),
    }
    install = packages_step(OPTIONAL_PACKAGES, INSTALL_STEP, after=list(defaults.values()))
    cnf = ctx.file(
        MYSQLD_CNF,
        mode="0600",
        owner=EXPORTER_USER,
        group=EXPORTER_USER,
        secret=True,
        after=(install,),
        user=mariadb.EXPORTER_USER,
        password=ctx.secrets.db_metrics,
        socket=MYSQL_SOCKET,
    )
    script = ctx.file(
        HEALTH_METRICS,
        mode="0755",
        after=(install,),
        health_script=health.HEALTH_SCRIPT,
        textfile_dir=TEXTFILE_DIR,
        prom_file=PROM_FILE,
        timeout_s=HEALTH_TIMEOUT_S,
    )
    timer = units.periodic(
        ctx,
        HEALTH_UNIT,
        HEALTH_METRICS,
        description="mailcluster health checks as node-exporter metrics",
        on_calendar="minutely",
        after=(install, script),
    )
    first = script_step(
        FIRST_RUN_STEP,
        f"""# The metrics exist from the first apply on, not only after the timer's next minute.
[ -e {PROM_FILE} ] && exit 0
{HEALTH_METRICS}
echo "{CHANGED_MARK} {PROM_FILE} written"
""",
        after=(script, file_step_name(health.HEALTH_SCRIPT)),
    )
    watched = {
        NODE_EXPORTER: (defaults[NODE_EXPORTER],),
        MYSQLD_EXPORTER: (defaults[MYSQLD_EXPORTER], cnf),
        POSTFIX_EXPORTER: (defaults[POSTFIX_EXPORTER],),
    }
    services = [
        script_step(
            _service_step(name),
            start_at_boot(name) + reload_or_start(name, restart=True),
            after=(install,),
            watch=watched[name],
        )
        for name in EXPORTERS
    ]
    return [*defaults.values(), install, cnf, script, *timer, first, *services]


def _off() -> list[Step]:
    """Metrics off: the same step names as ``_on``, undoing what an earlier "on" did (nothing,
    on a node that never had it), so a switch either way changes every step's digest and runs
    it in both appliers. The packages stay, inert: removing them is the operator's choice."""
    install = script_step(INSTALL_STEP, "# metrics off: no exporter packages\n")
    services = [
        script_step(
            _service_step(name),
            # The package's unit: absent where the exporters were never installed.
            f"""[ -e /usr/lib/systemd/system/{name}.service ] || exit 0
{start_at_boot(name, enabled=False)}if systemctl is-active --quiet {name}; then
  systemctl stop {name}
  echo "{CHANGED_MARK} {name} stopped"
fi
""",
        )
        for name in EXPORTERS
    ]
    timer = f"{HEALTH_UNIT}.timer"
    stop = script_step(
        TIMER_STEP,
        f"""if systemctl is-enabled --quiet {timer} 2>/dev/null \\
   || systemctl is-active --quiet {timer}; then
  systemctl disable --now --quiet {timer}
  echo "{CHANGED_MARK} {timer} stopped"
fi
# A run the timer started just before is ended too: stopping the timer leaves it running, and
# it would write {PROM_FILE} again after the step below removed it (seen in CI, 7 December
# 2026). A stop of an inactive unit does nothing.
systemctl stop {HEALTH_UNIT}.service 2>/dev/null || true
""",
    )
    units_gone = [absent_file_step(p, after=(stop,)) for p in (HEALTH_TIMER, HEALTH_SERVICE)]
    # The collector's input goes after the timer can no longer write it again.
    first = script_step(
        FIRST_RUN_STEP,
        f"""systemctl daemon-reload
if [ -e {PROM_FILE} ]; then
  rm -f {PROM_FILE}
  echo "{CHANGED_MARK} {PROM_FILE} removed"
fi
""",
        after=units_gone,
    )
    files = [absent_file_step(p, after=services) for p in (*DEFAULTS.values(), MYSQLD_CNF)]
    return [install, *services, stop, *units_gone, first, *files,
            absent_file_step(HEALTH_METRICS, (first,))]  # fmt: skip
