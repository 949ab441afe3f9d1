"""mailcluster-replication: the mailbox replication controller and its client.

    mailcluster-replication run            the controller (mailcluster-replication.service)
    mailcluster-replication status [--json]
                                           its state: the role, and per target the queue, the
                                           oldest waiting change, the last success and failure,
                                           the timings
    mailcluster-replication health         the state as mailcluster-health's checks
    mailcluster-replication now            check the role at once (the role script, after a change)
    mailcluster-replication catch-up       the recent mailboxes first, then every mailbox
    mailcluster-replication sweep [--wait SECONDS]
                                           every mailbox to every target now; --wait: until the
                                           queues are empty (exit 1 if they are not in time)

Options: ``--config PATH`` (default /etc/mailcluster/replication.json). The client commands talk
to the controller on its loopback port and never wait long for it (a promote must not).
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from mailnode.replication import health, maildirs, settings
from mailnode.replication.controller import Controller
from mailnode.replication.dsync import Doveadm
from mailnode.replication.duties import Duties
from mailnode.replication.service import Service
from mailnode.replication.store import Store

CONFIG = "/etc/mailcluster/replication.json"
CLIENT_TIMEOUT_S = 5.0


def request(cfg: settings.Settings, method: str, path: str) -> dict[str, Any]:
    req = urllib.request.Request(f"http://{cfg.listen}:{cfg.port}{path}", method=method,
                                 data=b"" if method == "POST" else None)  # fmt: skip
    with urllib.request.urlopen(req, timeout=CLIENT_TIMEOUT_S) as resp:
        body = resp.read()
    data = json.loads(body) if body else {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a JSON object")
    return data


def is_holder(cfg: settings.Settings) -> bool:
    rc = subprocess.run(list(cfg.role_check), stdin=subprocess.DEVNULL, capture_output=True,
                        timeout=30, check=False).returncode  # fmt: skip
    if rc not in (0, 1):
        raise RuntimeError(f"{' '.join(cfg.role_check)}: exit {rc}")
    return rc == 0


def run(cfg: settings.Settings) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    now = time.time()
    store = Store(f"{cfg.state_dir}/queue.sqlite")
    ctl = Controller(cfg, store, now)
    runner = Doveadm(cfg.doveadm, cfg.doveadm_api, cfg.doveadm_secret, cfg.lock_timeout_s,
                     cfg.io_timeout_s)  # fmt: skip
    duties = Duties(ctl, runner, lambda: is_holder(cfg), maildirs.boot_time())
    Service(ctl, duties, runner).run_forever()
    return 0


def fmt_age(now: float, at: float | None) -> str:
    return "never" if at is None else f"{now - at:.0f}s ago"


def render(state: dict[str, Any]) -> str:
    now = state["now"]
    lines = [f"{state['node']}: {state['role'] if state['role_known'] else 'starting'}; events "
             f"{state['events']['received']} ({state['events']['ignored']} ignored)"]  # fmt: skip
    for name, t in state["targets"].items():
        mark = "->" if t["current"] else "  "
        lines.append(
            f" {mark} {name:<10} queue {t['queue']:>5} (changes {t['queue_events']}, running "
            f"{t['running']}), oldest {t['oldest_pending_s'] or 0:g}s; last success "
            f"{fmt_age(now, t['last_success'])}; sync p50/p90 {t['sync_ms']['p50']}/"
            f"{t['sync_ms']['p90']} ms; change to synced p50/p90/p99 {t['lag_ms']['p50']}/"
            f"{t['lag_ms']['p90']}/{t['lag_ms']['p99']} ms"
        )
        if t["last_failure"]:
            lines.append(f"      last failure {fmt_age(now, t['last_failure'])}: {t['last_error']}")
    return "\n".join(lines)


def last_sweep(cfg: settings.Settings) -> float | None:
    sweep = request(cfg, "GET", "/state")["activity"].get("sweep") or {}
    at = sweep.get("at")
    return float(at) if isinstance(at, int | float) else None


def wait_drained(cfg: settings.Settings, before: float | None, seconds: float) -> bool:
    """Until the sweep asked after ``before`` was marked and every current target's queue is
    empty (True), or ``seconds`` passed (False)."""
    deadline = time.monotonic() + seconds
    while True:
        state = request(cfg, "GET", "/state")
        at = (state["activity"].get("sweep") or {}).get("at")
        if (
            at is not None
            and at != before
            and all(t["queue"] == 0 for t in state["targets"].values() if t["current"])
        ):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mailcluster-replication", description=__doc__.split("\n")[0])
    p.add_argument("--config", default=CONFIG)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("run")
    status = sub.add_parser("status")
    status.add_argument("--json", action="store_true")
    sub.add_parser("health")
    sub.add_parser("now")
    sub.add_parser("catch-up")
    sweep = sub.add_parser("sweep")
    sweep.add_argument("--wait", type=float, default=0.0, metavar="SECONDS")
    a = p.parse_args(argv)
    try:
        cfg = settings.load(a.config)
    except settings.SettingsError as e:
        print(f"mailcluster-replication: {e}", file=sys.stderr)
        return 2
    if a.command == "run":
        return run(cfg)
    try:
        if a.command == "health":
            try:
                found = health.checks(request(cfg, "GET", "/state"))
            except (OSError, ValueError) as e:
                found = health.down(str(e))
            sys.stdout.write(health.lines(found))
            return 0
        if a.command == "status":
            state = request(cfg, "GET", "/state")
            print(json.dumps(state, indent=1) if a.json else render(state))
            return 0
        before = last_sweep(cfg) if a.command == "sweep" else None
        request(cfg, "POST", f"/{a.command}")
        if a.command == "sweep" and a.wait > 0 and not wait_drained(cfg, before, a.wait):
            print(f"mailcluster-replication: the queues did not drain in {a.wait:g}s",
                  file=sys.stderr)  # fmt: skip
            return 1
        return 0
    except (OSError, ValueError) as e:  # URLError is an OSError
        print(f"mailcluster-replication: {cfg.listen}:{cfg.port}: {e}", file=sys.stderr)
        return 1
