"""``status``: every node's own checks (``mailcluster-health``) plus the ones that need the
whole cluster: BIND serials equal to the master's, and one holder per shared IP; the further
mail domains' zones and keys on each node (``mailcluster-domains status``); and each
node's mailbox replication as its controller sees it (``mailcluster-replication status``), and
what rspamd has learned on each node (``mailcluster-bayes status``).

JSON: ``{"ok": bool, "checks": [{"name", "node", "ok", "value", "detail"}],
"replication": {NODE: {"role", "targets": {TARGET: {"queue", "queue_events",
"oldest_pending_s", "oldest_event_s", "last_success_s", "last_failure_s", "last_error",
"failing_s", "sync_ms", "lag_ms"}}} | {"error"}}}``: ``*_s`` are ages in seconds (null: never);
``sync_ms`` and ``lag_ms`` (a change's event to the end of its sync) are p50/p90/p99/max/n of the
recent syncs. Only the targets a node pushes to now are listed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from cluster.ops.target import Target, dc_of
from cluster.services.bayes import SCRIPT as BAYES_SCRIPT
from cluster.services.domains import SCRIPT as DOMAINS_SCRIPT
from cluster.services.health import HEALTH_SCRIPT
from cluster.services.replication import SCRIPT as REPLICATION_SCRIPT
from cluster.services.role import ROLE_SCRIPT

CLUSTER = "cluster"  # the "node" of a check about the whole cluster


@dataclass(frozen=True)
class Check:
    name: str
    node: str
    ok: bool
    value: str
    detail: str


def parse_health(node: str, out: str) -> list[Check]:
    """mailcluster-health's lines (NAME, ok|fail, VALUE, DETAIL, tab-separated)."""
    checks = []
    for line in out.splitlines():
        fields = line.split("\t")
        if len(fields) != 4 or fields[1] not in ("ok", "fail"):
            raise ValueError(f"{node}: unexpected line from {HEALTH_SCRIPT}: {line!r}")
        name, verdict, value, detail = fields
        checks.append(Check(name, node, verdict == "ok", value, detail))
    return checks


def node_checks(target: Target, node: str) -> list[Check]:
    res = target.run(node, [HEALTH_SCRIPT])
    if res.returncode != 0:
        reason = (res.stderr.strip() or res.stdout.strip() or f"exit {res.returncode}")[-300:]
        return [Check("node.reachable", node, False, "no", reason)]
    return [Check("node.reachable", node, True, "yes", ""), *parse_health(node, res.stdout)]


def domains_check(target: Target, node: str) -> Check:
    """The further mail domains on ``node`` (``mailcluster-domains status``): each zone served
    with the database's serial, rspamd naming the key that signs now."""
    res = target.run(node, [DOMAINS_SCRIPT, "status"])
    if res.returncode != 0:
        why = (res.stderr.strip() or res.stdout.strip() or f"exit {res.returncode}")[-300:]
        return Check("domains.current", node, False, "?", why)
    try:
        state = json.loads(res.stdout)
        count, problems = len(state["domains"]), [str(p) for p in state["problems"]]
    except (ValueError, KeyError, TypeError) as e:
        return Check("domains.current", node, False, "?", f"unexpected output: {e!r}")
    detail = "; ".join(problems)[:300] or "zones and DKIM keys as the database says"
    return Check("domains.current", node, not problems, f"{count} domains", detail)


def writer_of(target: Target, nodes: tuple[str, ...]) -> str | None:
    """The writable MariaDB master: the node that serves mail."""
    for node in nodes:
        if target.run(node, [ROLE_SCRIPT, "is-writer"]).returncode == 0:
            return node
    return None


def cluster_checks(checks: list[Check], writer: str | None, nodes: tuple[str, ...]) -> list[Check]:
    out = [
        Check(
            "cluster.writer",
            CLUSTER,
            writer is not None,
            writer or "none",
            "the node that serves mail (writable master)" if writer else "no writable master",
        )
    ]
    # The writer is in the active data centre, whose nodes are BIND's masters. Without a writer
    # there is nothing to compare with (cluster.writer already fails).
    serials = {c.node: c.value for c in checks if c.name == "bind.serial" and c.ok}
    master_serial = serials.get(writer) if writer else None
    for node, serial in sorted(serials.items()):
        if node == writer or writer is None:
            continue
        same = master_serial is not None and serial == master_serial
        detail = f"master {writer} has {master_serial}" if master_serial else "no master serial"
        out.append(Check("bind.serial-matches-master", node, same, serial, detail))
    holders: dict[str, list[str]] = {}
    for c in checks:
        if c.name == "heartbeat" and c.value == "holder":
            holders.setdefault(dc_of(c.node), []).append(c.node)
    for dc in sorted({dc_of(n) for n in nodes}):
        held = holders.get(dc, [])
        out.append(
            Check(
                "heartbeat.one-holder",
                dc,
                len(held) == 1,
                ",".join(held) or "none",
                "exactly one node must hold the data centre's shared IP",
            )
        )
    return out


def _age(now: float, at: Any) -> float | None:
    return round(now - at, 1) if isinstance(at, int | float) else None


def replication_state(target: Target, node: str) -> dict[str, Any]:
    """What ``node`` pushes, to whom, and how it goes (its controller's state, condensed)."""
    res = target.run(node, [REPLICATION_SCRIPT, "status", "--json"])
    if res.returncode != 0:
        return {"error": (res.stderr.strip() or f"exit {res.returncode}")[-300:]}
    try:
        state = json.loads(res.stdout)
        now = state["now"]
        targets = {
            name: {
                "queue": t["queue"],
                "queue_events": t["queue_events"],
                "oldest_pending_s": t["oldest_pending_s"],
                "oldest_event_s": t["oldest_event_s"],
                "last_success_s": _age(now, t["last_success"]),
                "last_failure_s": _age(now, t["last_failure"]),
                "last_error": t["last_error"],
                "failing_s": _age(now, t["failing_since"]) if t["consecutive_failures"] else None,
                "sync_ms": t["sync_ms"],
                "lag_ms": t["lag_ms"],
            }
            for name, t in state["targets"].items()
            if t["current"]
        }
        return {"role": state["role"], "targets": targets}
    except (ValueError, KeyError, TypeError) as e:
        return {"error": f"unexpected output of {REPLICATION_SCRIPT} status --json: {e!r}"}


def bayes_state(target: Target, node: str) -> dict[str, Any]:
    """What rspamd has learned, as the node's Valkey holds it, and where that replicates from."""
    res = target.run(node, [BAYES_SCRIPT, "status", "--json"])
    if res.returncode != 0:
        return {"error": (res.stderr.strip() or f"exit {res.returncode}")[-300:]}
    try:
        state = json.loads(res.stdout)
        return {"learned": {k: int(v) for k, v in state["learned"].items()},
                "role": str(state["role"]), "source": str(state["source"]),
                "link": str(state["link"])}  # fmt: skip
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        return {"error": f"unexpected output of {BAYES_SCRIPT} status --json: {e!r}"}


def collect(target: Target) -> dict[str, Any]:
    nodes = target.nodes()
    checks: list[Check] = []
    for node in nodes:
        checks += node_checks(target, node)
    reachable = tuple(c.node for c in checks if c.name == "node.reachable" and c.ok)
    checks += [domains_check(target, node) for node in reachable]
    checks += cluster_checks(checks, writer_of(target, reachable), nodes)
    return {
        "ok": all(c.ok for c in checks),
        "checks": [asdict(c) for c in checks],
        "replication": {node: replication_state(target, node) for node in reachable},
        "bayes": {node: bayes_state(target, node) for node in reachable},
    }


def _spread(ms: dict[str, Any]) -> str:
    return "/".join("-" if ms.get(k) is None else str(ms[k]) for k in ("p50", "p90", "p99"))


def render_replication(data: dict[str, Any]) -> list[str]:
    lines = [
        "  mailbox replication (queue, oldest waiting, last success; sync and change-to-synced "
        "ms p50/p90/p99):"
    ]
    for node, rep in data.get("replication", {}).items():
        if "error" in rep:
            lines.append(f"    {node:<9} {rep['error']}")
            continue
        if not rep["targets"]:
            lines.append(f"    {node:<9} {rep['role']}: pushes to no node")
        for name, t in rep["targets"].items():
            success = "never" if t["last_success_s"] is None else f"{t['last_success_s']:g}s ago"
            line = (
                f"    {node:<9} -> {name:<9} queue {t['queue']} ({t['queue_events']} "
                f"changes), oldest {t['oldest_pending_s'] or 0:g}s, last success {success}, "
                f"sync {_spread(t['sync_ms'])}, change {_spread(t['lag_ms'])}"
            )
            if t["failing_s"] is not None:
                line += f"; FAILING for {t['failing_s']:g}s: {t['last_error']}"
            lines.append(line)
    return lines


def render_bayes(data: dict[str, Any]) -> list[str]:
    lines = ["  spam learning (rspamd's Bayes: messages learned per class; its Valkey):"]
    for node, b in data.get("bayes", {}).items():
        if "error" in b:
            lines.append(f"    {node:<9} {b['error']}")
            continue
        source = f"replica of {b['source']} (link {b['link']})" if b["source"] else b["role"]
        lines.append(f"    {node:<9} spam {b['learned']['spam']}, ham {b['learned']['ham']}; "
                     f"{source}")  # fmt: skip
    return lines


def render_text(data: dict[str, Any]) -> str:
    lines = [f"{'OK' if data['ok'] else 'FAILING'}: {sum(not c['ok'] for c in data['checks'])} "
             f"of {len(data['checks'])} checks fail"]  # fmt: skip
    for c in data["checks"]:
        mark = "ok  " if c["ok"] else "FAIL"
        lines.append(f"  {mark} {c['node']:<9} {c['name']:<28} {c['value']:<10} {c['detail']}")
    return "\n".join(lines + render_replication(data) + render_bayes(data))
