"""mailcluster-alerts [run|test]: this node's alerts (a systemd timer, every minute).

run: derive the alert conditions from mailcluster-health and from what only this node knows
(a takeover since the last run, a fence), and send an alert when a condition starts (after its
grace period) and again, with "resolved": true, when it clears. Messages that could not be
delivered wait in an outbox and are retried each run, so a node that was cut off (fenced)
reports once it can.
test: send one test alert now through the same channels; exit 1 if any channel failed.

Channels: a JSON POST to the webhook {"alert","severity","node","detail","time","resolved"},
and a mail to every alert address over SMTP (see deliver_mail).

Who sends what (de-duplication across nodes): every condition has one owner, so one fault is
reported once, not by four nodes.
- A node's own resources (its database replication, its mailbox replication to the nodes it
  pushes to, queue, disks, backups, its fence) are reported by that node: only it sees them,
  and the "node" field names it.
- Facts about the whole cluster (a takeover, BIND serials that disagree, the certificates,
  which are identical cluster secrets on every node) are reported by the writable master, the
  node that serves mail: there is exactly one (the role script and the split-brain guard see to
  it) and it holds the master's zone serial. A condition this node no longer owns (the role
  moved) is dropped without a "resolved": the new owner reports it from now on.
The configuration (/etc/mailcluster/alerts.json, 0600) and the rules come from the plan
(cluster/services/alerts.py); the state lives in /var/lib/mailcluster/alerts/.
"""

from __future__ import annotations

import datetime
import email.message
import email.utils
import fcntl
import json
import os
import re
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any

CONFIG = "/etc/mailcluster/alerts.json"
SELF = "self"
FAILING_FOR = re.compile(r"failing for ([0-9]+)s")
WRITER = "writer"


def load_json(path: str, default: Any) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def save_json(path: str, data: Any) -> None:
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path))
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat(timespec="seconds")


# -- conditions --------------------------------------------------------------------------------


def health_lines(cfg: dict[str, Any]) -> list[tuple[str, bool, str, str]]:
    """mailcluster-health's checks: (name, ok, value, detail)."""
    proc = subprocess.run([cfg["health"]], capture_output=True, text=True, timeout=60,
                          check=False)  # fmt: skip
    out = []
    for line in proc.stdout.splitlines():
        fields = line.split("\t")
        if len(fields) == 4 and fields[1] in ("ok", "fail"):
            out.append((fields[0], fields[1] == "ok", fields[2], fields[3]))
    return out


def rule_of(rules: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    """The first rule whose prefix the check's name starts with (None: no alert for it)."""
    for rule in rules:
        if name == rule["check"] or name.startswith(rule["check"] + "."):
            return rule
    return None


def health_conditions(
    cfg: dict[str, Any], checks: list[tuple[str, bool, str, str]], writer: bool
) -> dict[str, dict[str, Any]]:
    """The failing checks this node owns, as conditions: key -> severity, grace, detail."""
    out = {}
    for name, ok, value, detail in checks:
        rule = rule_of(cfg["rules"], name)
        if rule is None or ok or (rule["owner"] == WRITER and not writer):
            continue
        out[name] = {"severity": rule["severity"], "grace_s": rule["grace_s"],
                     "detail": f"{value}: {detail}".strip()}  # fmt: skip
        # A check that knows how long it has been failing says "failing for Ns" (the mailbox
        # replication's): the grace counts from then, not from this script's first sight of it.
        lasted = FAILING_FOR.search(detail)
        if lasted:
            out[name]["lasted_s"] = int(lasted.group(1))
    return out


def bind_serials(cfg: dict[str, Any]) -> dict[str, str]:
    """Each node's serial of the zone, asked of its own BIND (over the mesh)."""
    out = {}
    for node, address in cfg["dns_nodes"].items():
        proc = subprocess.run(
            ["dig", "+short", "+norec", "+time=2", "+tries=1", f"@{address}", cfg["domain"], "SOA"],
            capture_output=True, text=True, timeout=15, check=False,
        )  # fmt: skip
        fields = proc.stdout.split()
        out[node] = fields[2] if proc.returncode == 0 and len(fields) >= 3 else "none"
    return out


def serial_condition(cfg: dict[str, Any], serials: dict[str, str]) -> dict[str, dict[str, Any]]:
    """BIND serials that differ from this node's (the writer's, the master's) own."""
    mine = serials.get(cfg["node"], "none")
    differ = {n: s for n, s in serials.items() if s != mine}
    if not differ:
        return {}
    listed = ", ".join(f"{n} {s}" for n, s in sorted(differ.items()))
    rule = cfg["bind_serials"]
    return {"bind.serials": {"severity": rule["severity"], "grace_s": rule["grace_s"],
                             "detail": f"master {cfg['node']} has {mine}; {listed}"}}  # fmt: skip


def event_conditions(
    cfg: dict[str, Any], state: dict[str, Any], writer: bool, now: float
) -> dict[str, dict[str, Any]]:
    """What only this node knows: it took over since the last run; it is, or was, fenced."""
    out = {}
    ev = cfg["events"]
    if writer and state.get("was_writer") is False:
        out["takeover"] = {
            "severity": ev["takeover"],
            "grace_s": 0,
            "detail": f"{cfg['node']} became the writable master (serves mail)",
        }
    fence_at = stamp(cfg["fence_stamp"])
    fenced_now = os.path.exists(cfg["fenced_mark"])
    if fenced_now or (fence_at is not None and fence_at > state.get("last_run", now)):
        when = iso(fence_at) if fence_at else "unknown"
        out["fenced"] = {"severity": ev["fenced"], "grace_s": 0,
                         "detail": f"fenced at {when} (lost peer and uplink)"
                         + ("" if fenced_now else "; rejoined since")}  # fmt: skip
    return out


def stamp(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


def transitions(
    active: dict[str, dict[str, Any]], known: dict[str, dict[str, Any]], now: float
) -> tuple[dict[str, dict[str, Any]], list[tuple[str, dict[str, Any], bool]]]:
    """The new per-condition state, and the messages to send: (key, condition, resolved).

    A condition fires once it has lasted its grace period, and is resolved when it clears
    after firing; one that clears before firing is forgotten quietly."""
    new: dict[str, dict[str, Any]] = {}
    send: list[tuple[str, dict[str, Any], bool]] = []
    for key, cond in active.items():
        prev = known.get(key, {})
        since = prev.get("since", now - cond.get("lasted_s", 0))
        fired = bool(prev.get("fired"))
        if not fired and now - since >= cond["grace_s"]:
            fired = True
            send.append((key, cond, False))
        new[key] = {**cond, "since": since, "fired": fired}
    for key, prev in known.items():
        if key not in active and prev.get("fired"):
            send.append((key, {**prev, "detail": "cleared; was: " + prev.get("detail", "")}, True))
    return new, send


# -- delivery ----------------------------------------------------------------------------------


def message(cfg: dict[str, Any], key: str, cond: dict[str, Any], resolved: bool,
            now: float) -> dict[str, Any]:  # fmt: skip
    return {"alert": key, "severity": cond["severity"], "node": cfg["node"],
            "detail": cond["detail"], "time": iso(now), "resolved": resolved}  # fmt: skip


def deliver_webhook(cfg: dict[str, Any], msg: dict[str, Any]) -> str | None:
    """POST the message; None when the webhook took it (2xx), else why not. (urllib: the URL,
    which may hold a token, stays off every command line.)"""
    if not cfg["webhook"]:
        return None
    req = urllib.request.Request(
        cfg["webhook"], data=json.dumps(msg).encode(), method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "mailcluster-alerts"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            resp.read()
        return None
    except (OSError, ValueError) as e:  # URLError and HTTPError are OSErrors
        return f"webhook: {e}"


def deliver_mail(cfg: dict[str, Any], msg: dict[str, Any]) -> str | None:
    """Mail the message to every alert address: through this node's own Postfix when it runs
    (the active data centre's nodes: loopback may relay), else to the active data centre's
    shared IP on port 25 like any mail server (the standby data centre's nodes run no Postfix;
    that reaches the cluster's own domains, the postmaster's among them)."""
    if not cfg["emails"]:
        return None
    mail = email.message.EmailMessage()
    state = "RESOLVED" if msg["resolved"] else msg["severity"].upper()
    mail["Subject"] = f"[mailcluster {state}] {msg['alert']} on {msg['node']}"
    mail["From"] = cfg["mail_from"]
    mail["To"] = ", ".join(cfg["emails"])
    mail["Date"] = email.utils.formatdate(localtime=False)
    mail["Message-ID"] = email.utils.make_msgid(domain=cfg["fqdn"])
    mail.set_content(f"{msg['detail']}\n\n{json.dumps(msg, indent=1)}\n")
    errors = []
    for host in cfg["smtp_hosts"]:
        try:
            with smtplib.SMTP(host, 25, local_hostname=cfg["fqdn"], timeout=20) as s:
                s.send_message(mail, from_addr=cfg["mail_from"], to_addrs=cfg["emails"])
            return None
        except (OSError, smtplib.SMTPException) as e:
            errors.append(f"{host}: {e}")
    return "mail: " + "; ".join(errors)[:300]


CHANNELS = {"webhook": deliver_webhook, "email": deliver_mail}


def flush(cfg: dict[str, Any], outbox: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Try every waiting message on every channel it still needs; keep what failed, in order
    (a message that waited longer than outbox_max_age_s is dropped with a log line)."""
    left = []
    for entry in outbox:
        pending = []
        for channel in entry["pending"]:
            err = CHANNELS[channel](cfg, entry["message"])
            if err:
                pending.append(channel)
                print(f"{entry['message']['alert']}: {err}", file=sys.stderr)
        age = time.time() - entry.get("queued", time.time())
        if pending and age < cfg["outbox_max_age_s"]:
            left.append({**entry, "pending": pending})
    return left


def run(cfg: dict[str, Any]) -> int:
    now = time.time()
    state = load_json(cfg["state"], {})
    checks = health_lines(cfg)
    # The health script's own verdict: "master" is what the writable master says of itself.
    writer = any(n == "mariadb.replication" and v == "master" for n, _, v, _ in checks)
    active = health_conditions(cfg, checks, writer)
    active.update(event_conditions(cfg, state, writer, now))
    if writer:
        active.update(serial_condition(cfg, bind_serials(cfg)))
    known = {k: v for k, v in state.get("conditions", {}).items()
             if k in active or rule_owned(cfg, k, writer)}  # fmt: skip
    conditions, send = transitions(active, known, now)
    outbox = state.get("outbox", [])
    channels = [c for c in CHANNELS if (cfg["webhook"] if c == "webhook" else cfg["emails"])]
    for key, cond, resolved in send:
        print(f"{'resolved' if resolved else 'alert'} {key}: {cond['detail']}")
        outbox.append({"message": message(cfg, key, cond, resolved, now), "pending": channels,
                       "queued": now})  # fmt: skip
    outbox = flush(cfg, outbox)
    save_json(cfg["state"], {"conditions": conditions, "outbox": outbox, "last_run": now,
                             "was_writer": writer})  # fmt: skip
    return 0


def rule_owned(cfg: dict[str, Any], key: str, writer: bool) -> bool:
    """Whether this node still owns a known condition (else it is dropped without a
    "resolved": the owner changed, see the module's docstring)."""
    if key in ("takeover", "fenced"):
        return True
    if key == "bind.serials":
        return writer
    rule = rule_of(cfg["rules"], key)
    return rule is not None and (rule["owner"] == SELF or writer)


def test(cfg: dict[str, Any]) -> int:
    now = time.time()
    cond = {"severity": "info", "detail": f"test alert from {cfg['node']} at {iso(now)}"}
    msg = message(cfg, "test", cond, False, now)
    failed = 0
    for channel, deliver in CHANNELS.items():
        if not (cfg["webhook"] if channel == "webhook" else cfg["emails"]):
            print(f"{channel}: not configured")
            continue
        err = deliver(cfg, msg)
        print(err or f"{channel}: sent")
        failed += err is not None
    print(json.dumps(msg))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    socket.setdefaulttimeout(30)
    cfg = load_json(os.environ.get("MAILCLUSTER_ALERTS_CONFIG", CONFIG), None)
    if cfg is None:
        print(f"mailcluster-alerts: cannot read {CONFIG}", file=sys.stderr)
        return 2
    cmd = args[0] if args else "run"
    if cmd == "test":
        return test(cfg)
    if cmd != "run":
        print("usage: mailcluster-alerts [run|test]", file=sys.stderr)
        return 2
    os.makedirs(os.path.dirname(cfg["state"]), mode=0o700, exist_ok=True)
    with open(cfg["state"] + ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return 0  # the previous minute's run is still going
        return run(cfg)
