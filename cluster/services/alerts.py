"""Alerts: every node checks itself every minute and tells the operator (issue 11).

``/usr/local/sbin/mailcluster-alerts`` (Python, stdlib only) derives conditions from
``mailcluster-health`` and from what only the node knows (a takeover, a fence), and sends each
once when it starts (after its grace period) and again when it clears, to the webhook
(``alertWebhook``) and by mail to ``alertEmail`` (default: the postmaster). Its docstring says
which node owns which condition (the de-duplication across nodes).

Every minute: a systemd timer on a systemd host (a Linode), cron where PID 1 is not systemd
(the lab). Both are installed; the cron line does nothing when systemd runs, as Debian's own
certbot and php packages do, so there is one script and one plan for both.
"""

from __future__ import annotations

import json
from typing import Any

from cluster.hostcontext import HostContext
from cluster.plan import CHANGED_MARK, PACKAGES_STEP, STATE_DIR, Step, script_step
from cluster.services import health, heartbeat
from cluster.services.role import RUN_DIR

# python3 runs the script (and posts the webhook: urllib); dig asks each node's BIND for its
# serial.
PACKAGES: tuple[str, ...] = ("python3", "bind9-dnsutils", "cron")

ALERTS_SCRIPT = "/usr/local/sbin/mailcluster-alerts"
ALERTS_CONFIG = "/etc/mailcluster/alerts.json"
STATE_FILE = f"{STATE_DIR}/alerts/state.json"
TIMER = "/etc/systemd/system/mailcluster-alerts.timer"
SERVICE = "/etc/systemd/system/mailcluster-alerts.service"
CRON = "/etc/cron.d/mailcluster-alerts"
TIMER_STEP = "alerts.timer"

CRITICAL = "critical"
WARNING = "warning"
# The grace periods: dsync failing for over 2 min, BIND serials disagreeing for over
# 10 min; everything else alerts at the first check that sees it.
DSYNC_GRACE_S = 2 * 60
BIND_SERIALS_GRACE_S = 10 * 60
# Undeliverable messages are retried each minute for this long (a fenced node's report waits
# for its uplink), then dropped.
OUTBOX_MAX_AGE_S = 24 * 3600

# Which mailcluster-health checks alert (by name, or name prefix before a dot), how badly,
# after how long, and which node sends it: "self" (the node the check is about) or "writer"
# (the writable master, once for the cluster). Thresholds are health.py's.
RULES: tuple[dict[str, Any], ...] = (
    {"check": "mariadb.replication", "severity": CRITICAL, "grace_s": 0, "owner": "self"},
    {"check": "dsync", "severity": CRITICAL, "grace_s": DSYNC_GRACE_S, "owner": "writer"},
    {"check": "postfix.queue", "severity": WARNING, "grace_s": 0, "owner": "self"},
    {"check": "disk", "severity": CRITICAL, "grace_s": 0, "owner": "self"},
    # The certificates are cluster secrets, the same files on every node: one report.
    {"check": "tls", "severity": WARNING, "grace_s": 0, "owner": "writer"},
    {"check": "backup", "severity": WARNING, "grace_s": 0, "owner": "self"},
    # A sender deferred at submissionRateLimitPerHour (issue 10): perhaps a stolen password.
    {"check": "ratelimit", "severity": WARNING, "grace_s": 0, "owner": "self"},
)
EVENTS = {"takeover": CRITICAL, "fenced": CRITICAL}


def alert_emails(ctx: HostContext) -> list[str]:
    return list(ctx.config.alert_emails) or [ctx.config.postmaster]


def config(ctx: HostContext) -> dict[str, Any]:
    """/etc/mailcluster/alerts.json: everything the script needs, from the plan."""
    topo, node = ctx.topology, ctx.node
    fqdn = f"{node.name}.{topo.domain}"
    return {
        "node": node.name,
        "fqdn": fqdn,
        "domain": topo.domain,
        "health": health.HEALTH_SCRIPT,
        "state": STATE_FILE,
        "webhook": ctx.config.alert_webhook or "",
        "emails": alert_emails(ctx),
        "mail_from": f"mailcluster-alerts@{fqdn}",
        # This node's own Postfix first (it runs on the active data centre's nodes), else the
        # active data centre's shared IP as any mail server reaches it.
        "smtp_hosts": ["127.0.0.1", topo.shared_ip(topo.active_dc)],
        # Each node's BIND, over the mesh, for the writer's serial comparison.
        "dns_nodes": {n.name: topo.mesh_address(n) for n in topo.nodes},
        "rules": list(RULES),
        "bind_serials": {"severity": WARNING, "grace_s": BIND_SERIALS_GRACE_S},
        "events": EVENTS,
        "fenced_mark": f"{RUN_DIR}/fenced",
        "fence_stamp": heartbeat.FENCE_STAMP,
        "outbox_max_age_s": OUTBOX_MAX_AGE_S,
    }


# systemd hosts: the timer, enabled and started (daemon-reload when a unit changed). Elsewhere
# (the lab) the cron line runs the script.
TIMER_SCRIPT = f"""if [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  if ! systemctl is-enabled --quiet mailcluster-alerts.timer \\
     || ! systemctl is-active --quiet mailcluster-alerts.timer; then
    systemctl enable --now mailcluster-alerts.timer >/dev/null 2>&1
    echo "{CHANGED_MARK} mailcluster-alerts.timer enabled"
  fi
fi
"""


def steps(ctx: HostContext) -> list[Step]:
    conf = ctx.literal_file(
        ALERTS_CONFIG, json.dumps(config(ctx), indent=1) + "\n", mode="0600", secret=True
    )
    script = ctx.file(ALERTS_SCRIPT, mode="0755", after=(PACKAGES_STEP, conf))
    service = ctx.file(SERVICE, script=ALERTS_SCRIPT)
    timer = ctx.file(TIMER)
    return [
        conf,
        script,
        service,
        timer,
        script_step(TIMER_STEP, TIMER_SCRIPT, after=(script, service, timer)),
        ctx.file(CRON, script=ALERTS_SCRIPT, after=(PACKAGES_STEP, script)),
    ]
