"""``switchover``: move the active role to the other node of the active data centre, as planned.

Heartbeat's own planned hand-over does it in the safe order: ``hb_standby all`` on the active
node runs its resources' stop in reverse (``mailcluster-role demote``: the database read-only
first, Postfix drained to its queue; with bgp the route withdrawn, with arp the address
released), and only then does the peer start them (the shared addresses, then promote: it applies
what it replicated and becomes the writable master). Refused connections last well under a
second (drill 6); nothing acknowledged is lost because the old node keeps its queue and delivers
it once it is a replica.

The command checks first that the peer can take the role (Heartbeat running, not fenced, its
database replicating), so a switchover never lands on a broken node.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cluster.ops.target import OpsError, Target, dc_of
from cluster.services.role import ROLE_SCRIPT

HB_STANDBY = "/usr/share/heartbeat/hb_standby"  # Heartbeat's planned hand-over (Debian's path)
TAKE_TIMEOUT_S = 60  # the peer becomes the writable master within this
REJOIN_TIMEOUT_S = 90  # the old node replicates from the new master within this


@dataclass(frozen=True)
class SwitchoverResult:
    old: str
    new: str
    promoted_s: float  # hb_standby -> the peer is the writable master
    rejoined_s: float  # hb_standby -> the old node replicates from it


def role_status(target: Target, node: str) -> dict[str, Any]:
    """``mailcluster-role status`` (JSON) on ``node``, or {} when it cannot answer."""
    res = target.run(node, [ROLE_SCRIPT, "status", "--json"])
    if res.returncode != 0:
        return {}
    try:
        data: dict[str, Any] = json.loads(res.stdout)
    except ValueError:
        return {}
    return data


def _active_node(target: Target) -> str:
    actives = [n for n in target.nodes() if role_status(target, n).get("role") == "active"]
    if len(actives) != 1:
        raise OpsError(f"switchover needs exactly one active node, found {actives or 'none'}: "
                       "see `status`")  # fmt: skip
    return actives[0]


def why_not_ready(peer: str, st: dict[str, Any]) -> str:
    """Why ``peer`` cannot take the role now, or "" when it can."""
    if not st:
        return f"{peer} does not answer"
    if not st.get("heartbeat_running"):
        return f"Heartbeat is not running on {peer}"
    if st.get("fenced"):
        return f"{peer} is fenced (it lost its gateway)"
    repl = st.get("replication") or {}
    if not (st.get("db") or {}).get("running"):
        return f"MariaDB is not running on {peer}"
    if repl.get("io_running") != "Yes" or repl.get("sql_running") != "Yes":
        return (f"{peer}'s database is not replicating (io={repl.get('io_running')}, "
                f"sql={repl.get('sql_running')}): it may lack writes")  # fmt: skip
    return ""


def switchover(target: Target, log: Callable[[str], None]) -> SwitchoverResult:
    old = _active_node(target)
    peers = [n for n in target.nodes() if dc_of(n) == dc_of(old) and n != old]
    if len(peers) != 1:
        raise OpsError(f"{old} has no peer in {dc_of(old)} this target can reach")
    new = peers[0]
    reason = why_not_ready(new, role_status(target, new))
    if reason:
        raise OpsError(f"not switching over: {reason}")
    log(f"switchover: {old} -> {new} (hb_standby on {old})")
    t0 = time.monotonic()
    res = target.run(old, [HB_STANDBY, "all"])
    if res.returncode != 0:
        raise OpsError(f"hb_standby on {old} failed: {res.stderr.strip() or res.stdout.strip()}")
    promoted = _wait(lambda: _is_writable_active(role_status(target, new)), TAKE_TIMEOUT_S,
                     f"{new} to become the writable master")  # fmt: skip
    log(f"  {new} is the writable master after {promoted - t0:.2f} s")
    rejoined = _wait(lambda: _replicates(role_status(target, old)), REJOIN_TIMEOUT_S,
                     f"{old} to replicate from {new}")  # fmt: skip
    log(f"  {old} replicates from {new} after {rejoined - t0:.2f} s")
    return SwitchoverResult(old, new, promoted - t0, rejoined - t0)


def _is_writable_active(st: dict[str, Any]) -> bool:
    return st.get("role") == "active" and (st.get("db") or {}).get("read_only") is False


def _replicates(st: dict[str, Any]) -> bool:
    repl = st.get("replication") or {}
    return (
        st.get("role") == "standby"
        and repl.get("io_running") == "Yes"
        and repl.get("sql_running") == "Yes"
    )


def _wait(ok: Callable[[], bool], timeout: float, what: str) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ok():
            return time.monotonic()
        time.sleep(0.3)
    raise OpsError(f"switchover: timed out after {timeout:.0f} s waiting for {what}; see `status`")
