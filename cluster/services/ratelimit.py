"""Sending limit: at most ``submissionRateLimitPerHour`` recipients per hour per authenticated
user on submission (587/465), with Debian's ``policyd-rate-limit`` as Postfix's policy service.

Why this one: Debian packages it (with a systemd unit), it does exactly this job (per SASL
user, a sliding window, a configurable temporary failure) and needs nothing else. rspamd's
ratelimit module needs Redis, one more daemon to run and fail over; postfwd can do it too, but
with a rule language for what is one line here.

Over the limit Postfix answers ``450 4.7.1 ... <LOG_TAG>: N recipients per hour reached``; the
message stays with the client, which retries. Postfix logs the refusal on mail.log with
``LOG_TAG`` in it: the line an alert looks for. If the service is down, Postfix lets mail through
(``smtpd_policy_service_default_action = DUNNO``, SUBMISSION_OPTIONS in postfix.py) and logs a
warning: a broken limiter must not stop all outgoing mail.

The counters are per node (SQLite): a takeover starts the window afresh on the new node.
"""

from __future__ import annotations

from cluster.hostcontext import HostContext
from cluster.plan import Step, reload_or_start, script_step

PACKAGES: tuple[str, ...] = ("policyd-rate-limit",)

CONF = "/etc/policyd-rate-limit.yaml"
HOST = "127.0.0.1"
PORT = 8552
PIDFILE = "/run/policyd-rate-limit/policyd-rate-limit.pid"
# What Postfix's smtpd_data_restrictions name on submission.
POLICY_SERVICE = f"inet:{HOST}:{PORT}"
LOG_TAG = "mailcluster-ratelimit"
SERVICE_STEP = "ratelimit.service"


def steps(ctx: HostContext) -> list[Step]:
    conf = ctx.file(
        CONF,
        mode="0640",
        group="policyd-rate-limit",
        limit=ctx.config.submission_rate_limit_per_hour,
        host=HOST,
        port=PORT,
        pidfile=PIDFILE,
        log_tag=LOG_TAG,
    )
    return [
        conf,
        # It has no reload: restart on a new limit (smtpd lets mail through while it is away).
        script_step(
            SERVICE_STEP,
            reload_or_start("policyd-rate-limit", restart=True),
            watch=(conf,),
        ),
    ]
