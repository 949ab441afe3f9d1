"""SMTP AUTH while a node's MariaDB is down, and Dovecot's auth cache that carries it.

Postfix 3.7 answers every failure Dovecot reports, a temporary one too, with a permanent
"535 authentication failed" (dovecot.py, ``AUTH_CACHE_TTL_S``). So a user this node has seen must
still log in while its database is away (drill 4 stops the master's), and the cache must never
keep an old password alive after ``ops mailbox passwd`` (test_ops.py checks that part).
"""

from __future__ import annotations

import json
import time

from cluster.lab.driver import Lab
from cluster.services.dovecot import AUTH_CACHE_TTL_S

# SMTP AUTH against this node's own submission service (Postfix listens on the shared IPs and
# loopback only); the password on stdin. Prints {"ok": bool, "code": int | None}.
AUTH = r"""
import json, smtplib, ssl, sys
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE  # loopback; TLS only because AUTH requires it
with smtplib.SMTP("127.0.0.1", 587, timeout=60) as s:
    s.starttls(context=ctx)
    try:
        s.login(sys.argv[1], sys.stdin.read())
        print(json.dumps({"ok": True, "code": 235}))
    except smtplib.SMTPAuthenticationError as e:
        print(json.dumps({"ok": False, "code": e.smtp_code}))
"""


def smtp_auth(lab: Lab, host: str, user: str, password: str) -> dict[str, object]:
    out = lab.exec(host, "python3", "-c", AUTH, user, input=password).stdout
    result: dict[str, object] = json.loads(out)
    return result


def auth_process(lab: Lab, host: str) -> str:
    """The pid and start time of the node's Dovecot auth process, which holds the cache: a
    Dovecot reload or restart starts a new one with an empty cache."""
    out = lab.exec(host, "ps", "-o", "pid=,lstart=,args=", "-C", "auth", check=False).stdout
    # The workers are "dovecot/auth -w"; the cache is the master's, "dovecot/auth".
    lines = [ln.strip() for ln in out.splitlines() if ln.strip().endswith("dovecot/auth")]
    return "; ".join(lines) or "none"


def test_a_known_user_logs_in_while_the_database_is_down(lab: Lab) -> None:
    # The active DC's standby: it runs Postfix, and its guard leaves its database alone (only
    # the master's stop is a failover).
    host = next(h for h in ("dc1-svr1", "dc1-svr2") if lab.role(h)["role"] != "active")

    def replicating() -> bool:
        repl = lab.role(host)["replication"]
        return bool(repl["io_running"] == repl["sql_running"] == "Yes")

    # A settled standby first (a takeover just before leaves it demoting for a few seconds).
    lab.wait_for(f"{host} replicating", replicating, 90)
    user, password = lab.new_mailbox("example.com", "ac")
    lab.wait_for(f"{user} to log in on {host}", lambda: smtp_auth(lab, host, user, password)["ok"])
    # Past the TTL: what carries the login now is Dovecot's fallback to an expired entry, the
    # case of a user who last logged in minutes ago.
    cache_holder = auth_process(lab, host)
    t_filled = time.time()
    time.sleep(AUTH_CACHE_TTL_S + 5)
    lab.exec(host, "service", "mariadb", "stop")
    try:
        assert lab.exec(host, "mysqladmin", "ping", check=False).returncode != 0
        got = smtp_auth(lab, host, user, password)
        if got != {"ok": True, "code": 235}:
            # Said, not guessed, next time (a 454 was seen twice after test_alerts.py): whether
            # the process that held the cache is gone, and what Dovecot logged meanwhile.
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t_filled - 1))
            log = lab.exec(host, "journalctl", "-u", "dovecot", "--since", f"{since} UTC",
                           "--no-pager", "-q", check=False).stdout  # fmt: skip
            raise AssertionError(
                f"{got} (expected 235); auth process before the sleep {cache_holder}, now "
                f"{auth_process(lab, host)}; role {lab.role(host)['role']}; Dovecot's log "
                f"since:\n{log[-4000:]}"
            )
        # The cached entry holds the password's hash, not a pass: a wrong one is still refused.
        assert smtp_auth(lab, host, user, password + "x") == {"ok": False, "code": 535}
    finally:
        lab.exec(host, "service", "mariadb", "start")
    lab.wait_for(f"{host} replicating again", replicating, 60)
