"""Alerts: every node checks itself every minute and tells the operator (issue 11).

``/usr/local/sbin/mailcluster-alerts`` (``mailnode/alerts.py``) derives conditions from
``mailcluster-health`` and from what only the node knows (a takeover, a fence), and sends each
once when it starts (after its grace period) and again when it clears, to the webhook
(``alertWebhook``) and by mail to ``alertEmail`` (default: the postmaster). Its docstring says
which node owns which condition (the de-duplication across nodes).

Every minute: ``mailcluster-alerts.timer`` (units.periodic), each run stopped after
``RUN_TIMEOUT_S`` so a hung check never delays the next minute's.
"""

from __future__ import annotations

import json
from typing import Any

from cluster.hostcontext import HostContext
from cluster.plan import STATE_DIR, Step
from cluster.services import health, heartbeat, nodepkg, units
from cluster.services.role import RUN_DIR

# python3 runs the script (and posts the webhook: urllib); dig asks each node's BIND for its
# serial.
PACKAGES: tuple[str, ...] = ("python3", "bind9-dnsutils")

ALERTS_SCRIPT = "/usr/local/sbin/mailcluster-alerts"
ALERTS_CONFIG = "/etc/mailcluster/alerts.json"
STATE_FILE = f"{STATE_DIR}/alerts/state.json"
UNIT = "mailcluster-alerts"  # .service and .timer
TIMER = units.unit_path(f"{UNIT}.timer")
SERVICE = units.unit_path(f"{UNIT}.service")
RUN_TIMEOUT_S = 55  # under the timer's minute

CRITICAL = "critical"
WARNING = "warning"
# The grace periods: mailbox replication failing for over 2 min, BIND serials
# disagreeing for over 10 min; everything else alerts at the first check that sees it.
REPLICATION_GRACE_S = 2 * 60
BIND_SERIALS_GRACE_S = 10 * 60
# A zone just added or re-signed reaches a secondary within a catalog or SOA refresh (minutes).
DNSSEC_GRACE_S = 15 * 60
# Heartbeat's resources in "transition": a first start waits initdead and a little (about 25 s
# in the lab), a takeover or standby seconds.
HEARTBEAT_GRACE_S = 60
# Undeliverable messages are retried each minute for this long (a fenced node's report waits
# for its uplink), then dropped.
OUTBOX_MAX_AGE_S = 24 * 3600

# Which mailcluster-health checks alert (by name, or name prefix before a dot), how badly,
# after how long, and which node sends it: "self" (the node the check is about) or "writer"
# (the writable master, once for the cluster). Thresholds are health.py's.
RULES: tuple[dict[str, Any], ...] = (
    {"check": "mariadb.replication", "severity": CRITICAL, "grace_s": 0, "owner": "self"},
    # Heartbeat's idea of what this node holds against what it holds (health: after a lost
    # takeover message nobody held the shared IP). Takeovers pass through "transition" briefly.
    {
        "check": "heartbeat.resources",
        "severity": CRITICAL,
        "grace_s": HEARTBEAT_GRACE_S,
        "owner": "self",
    },
    # Mailbox replication (replication.py): each node reports the targets it pushes to.
    {"check": "replication", "severity": CRITICAL, "grace_s": REPLICATION_GRACE_S, "owner": "self"},
    # rspamd's Bayes store (bayes.py): a replica cut from its source misses what users teach.
    {"check": "bayes", "severity": WARNING, "grace_s": REPLICATION_GRACE_S, "owner": "self"},
    {"check": "postfix.queue", "severity": WARNING, "grace_s": 0, "owner": "self"},
    {"check": "disk", "severity": CRITICAL, "grace_s": 0, "owner": "self"},
    # The certificates are cluster secrets, the same files on every node: one report.
    {"check": "tls", "severity": WARNING, "grace_s": 0, "owner": "writer"},
    {"check": "backup", "severity": WARNING, "grace_s": 0, "owner": "self"},
    # A sender deferred at submissionRateLimitPerHour (issue 10): perhaps a stolen password.
    {"check": "ratelimit", "severity": WARNING, "grace_s": 0, "owner": "self"},
    # Signatures a node serves with less than a week to live (mailnode/dnssec.py): validating
    # resolvers will refuse the domain then. The grace covers a new domain's first transfer.
    {"check": "dnssec", "severity": CRITICAL, "grace_s": DNSSEC_GRACE_S, "owner": "self"},
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


def steps(ctx: HostContext) -> list[Step]:
    conf = ctx.literal_file(
        ALERTS_CONFIG, json.dumps(config(ctx), indent=1) + "\n", mode="0600", secret=True
    )
    script = nodepkg.entry_point(ctx, ALERTS_SCRIPT.rsplit("/", 1)[1], "alerts", after=(conf,))
    timer = units.periodic(
        ctx,
        UNIT,
        f"{ALERTS_SCRIPT} run",
        description="mailcluster alerts: check this node and notify the operator",
        on_calendar="minutely",
        timeout_s=RUN_TIMEOUT_S,
        after=(script,),
    )
    return [conf, script, *timer]
