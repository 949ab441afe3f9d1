"""The controller's state as mailcluster-health checks (``NAME<TAB>ok|fail<TAB>VALUE<TAB>DETAIL``).

- ``replication``: the controller answers; its value is the role (writer, standby, passive).
- per target it pushes to now, ``replication.<node>``: fails while syncs to it fail (the detail
  says "failing for Ns", from which the alert's grace counts), or while a change has waited
  longer than ``max_event_age_s``; its value is the queue's length;
- ``replication.<node>.oldest_s``: the oldest waiting row's age, fails past
  ``max_pending_age_s`` (a sweep or catch-up that does not drain);
- ``replication.<node>.sync_ms``: the 90th percentile of a sync's duration (recent syncs), fails
  past ``max_sync_ms``;
- ``replication.<node>.lag_ms``: the 90th percentile of the time from a change's event to the
  end of the sync that carried it (the part of the recovery point this node adds); a figure,
  judged by ``replication.<node>`` (a change waiting too long fails that).
"""

from __future__ import annotations

from typing import Any

Check = tuple[str, bool, str, str]


def _num(v: Any) -> str:
    return "none" if v is None else f"{v:g}" if isinstance(v, float) else str(v)


def checks(state: dict[str, Any]) -> list[Check]:
    limits = state["limits"]
    role = state["role"] if state.get("role_known") else "starting"
    out: list[Check] = []
    current = {n: t for n, t in state["targets"].items() if t["current"]}
    if not current:
        why = {"passive": "standby data centre: the active one pushes here",
               "starting": "role not known yet"}.get(role, "no target")  # fmt: skip
        return [("replication", True, role, why)]
    out.append(("replication", True, role, f"pushes to {', '.join(current)}"))
    now = state["now"]
    for name, t in current.items():
        success = f"{now - t['last_success']:.0f}s ago" if t["last_success"] else "never"
        summary = (f"queue {t['queue']} ({t['queue_events']} changes), oldest "
                   f"{_num(t['oldest_pending_s'])}s, last success {success}")  # fmt: skip
        event_age = t["oldest_event_s"] or 0.0
        if t["failing_since"] is not None and t["consecutive_failures"]:
            ok, detail = False, (f"failing for {max(0, now - t['failing_since']):.0f}s: "
                                 f"{t['last_error']}; {summary}")  # fmt: skip
        elif event_age > limits["max_event_age_s"]:
            ok, detail = False, (f"a change waits for {event_age:.0f}s (limit "
                                 f"{limits['max_event_age_s']:g}s); {summary}")  # fmt: skip
        else:
            ok, detail = True, summary
        out.append((f"replication.{name}", ok, str(t["queue"]), detail))
        oldest = t["oldest_pending_s"] or 0.0
        out.append((f"replication.{name}.oldest_s", oldest <= limits["max_pending_age_s"],
                    f"{oldest:g}", f"limit {limits['max_pending_age_s']:g}s"))  # fmt: skip
        p90 = t["sync_ms"]["p90"]
        out.append((f"replication.{name}.sync_ms", p90 is None or p90 <= limits["max_sync_ms"],
                    _num(p90), f"90th percentile of {t['sync_ms']['n']} syncs, limit "
                    f"{limits['max_sync_ms']:g} ms"))  # fmt: skip
        lag = t["lag_ms"]
        out.append((f"replication.{name}.lag_ms", True, _num(lag["p90"]),
                    f"change to synced, 90th percentile of {lag['n']}; p99 {_num(lag['p99'])}, "
                    f"max {_num(lag['max'])}"))  # fmt: skip
    return out


def down(reason: str) -> list[Check]:
    return [("replication", False, "down", f"mailcluster-replication does not answer: {reason}")]


def lines(found: list[Check]) -> str:
    def clean(s: str) -> str:
        return s.replace("\t", " ").replace("\n", " ")

    return "".join(f"{clean(n)}\t{'ok' if ok else 'fail'}\t{clean(v)}\t{clean(d)}\n"
                   for n, ok, v, d in found)  # fmt: skip
