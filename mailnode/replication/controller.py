"""The controller's logic: which user to sync with which target next, and what happened.

Single-threaded at heart: every public method takes the controller's lock, and the caller gives
the time (``now``), so the unit tests drive it with a fake clock and a fake runner. ``service``
runs it with real threads, a real clock and ``doveadm``.

- ``mark``: users pending for every current target (a change: priority EVENT; the recent
  mailboxes of a catch-up: CATCH_UP; everything: SWEEP, as full syncs).
- ``claim``: the next row a worker of a target may sync: the best waiting row whose user no
  other worker syncs right now (one sync per user at a time, across all targets). A change that
  waits for the DC peer too goes to the peer first (the tighter recovery point), unless the peer
  is failing; but once the other data centre's row has waited PEER_FIRST_MAX_S, the user's
  syncs alternate: peer, far, peer, far (``_turn``). A target that failed twice in a row gets
  one worker at a time and a pause that doubles with each failure (1 s, 2 s, ... 60 s); a row
  that failed waits 1 s, 2 s, ... 60 s.
- ``complete``: the outcome of a sync, into the queue (done, again, or retried later) and the
  target's figures.
- ``set_role``: the targets follow the role; rows of targets that no longer are go.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from mailnode.replication import store as queue
from mailnode.replication.dsync import Outcome
from mailnode.replication.settings import PASSIVE, STANDBY, Settings, Target

log = logging.getLogger("mailcluster-replication")

# A failed sync waits 1 s, then 2, 4, ... at most a minute: the idle probe's interval, so a
# target that was down (every row of it in backoff, so no probe) is tried again within a
# minute of its return, as an idle one would be. When one sync to it succeeds again, every row
# waiting out a backoff may start at once (Store.release).
ROW_BACKOFF_S = 1.0
ROW_BACKOFF_MAX_S = 60.0
TARGET_PAUSE_S = 1.0
TARGET_PAUSE_MAX_S = 60.0
# A change waits for the DC peer first (its recovery point is 1 s, the other DC's 2 s). Under a
# steady stream the peer's row is ready again after each of its syncs, so "always the peer
# first" kept the other DC waiting until the stream paused: p99 6.7-7.3 s, measured 7 December
# 2026 (bench/replication.py). A far row that has waited this long takes the turn after the
# peer's next sync, and the peer yields it once: the peer waits at most one far sync (lab:
# 0.15 s median, 0.5 s p90), a far node at most this, two peer syncs and two far ones.
PEER_FIRST_MAX_S = 0.5
# A worker whose target has rows due that it may not take yet (their user is being synced to
# another target, or it is the peer's turn) sleeps until a completion or a mark wakes it, or
# this long: the time rule above is the one change no wake-up announces. (Waiting 0 s here
# spun every such worker on the queue: 40 % of a core under a 5 messages/s stream.)
BLOCKED_RECHECK_S = 0.25
# Recent syncs kept for the figures (durations, and how long a change waited until synced).
FIGURES_KEPT = 200
# The reason code of the doveadm server's writes: other nodes' syncs arriving here. Dovecot's
# filter leaves them out already (dovecot.conf); ignored here too, should one come.
INCOMING_SYNC = "doveadm:cmd_dsync_server"


@dataclass(frozen=True)
class Job:
    row: queue.Row
    target: Target
    full: bool
    timeout_s: float


@dataclass
class TargetFigures:
    syncs: int = 0
    failures: int = 0
    last_success: float | None = None
    last_failure: float | None = None
    last_error: str = ""
    failing_since: float | None = None
    consecutive_failures: int = 0
    last_attempt: float | None = None
    last_user: str = ""  # the last user synced: the probe of an idle target syncs it again
    paused_until: float = 0.0
    durations: deque[float] = field(default_factory=lambda: deque(maxlen=FIGURES_KEPT))
    # Seconds from a change's event to the end of the sync that carried it.
    lags: deque[float] = field(default_factory=lambda: deque(maxlen=FIGURES_KEPT))

    def to_meta(self) -> dict[str, Any]:
        keys = ("last_success", "last_failure", "last_error", "failing_since",
                "consecutive_failures", "last_attempt", "last_user")  # fmt: skip
        return {k: getattr(self, k) for k in keys}


def percentile(values: Iterable[float], q: float) -> float | None:
    data = sorted(values)
    if not data:
        return None
    return data[min(len(data) - 1, int(q * len(data)))]


def ms(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1000)


class Controller:
    def __init__(self, settings: Settings, store: queue.Store, now: float) -> None:
        self.settings = settings
        self.store = store
        self.cond = threading.Condition()
        # Until the first role check nothing is pushed, and nothing queued is dropped (a
        # writer's rows for the other data centre survive its restart).
        self.role = PASSIVE if not settings.active_dc else STANDBY
        self.role_known = False
        self.targets: dict[str, Target] = {}
        self.in_flight: dict[str, str] = {}  # user -> target name
        self.last_to: dict[str, str] = {}  # user -> the target of its last sync started
        self.running: dict[str, int] = {t.name: 0 for t in settings.all_targets}
        self.figures = {t.name: self._load_figures(t.name) for t in settings.all_targets}
        self.started = now
        self.events: dict[str, Any] = {"received": 0, "ignored": 0, "pulled": 0, "last": None}
        self.activity: dict[str, Any] = {"sweep": None, "catch_up": None, "scan": None}

    # -- role and targets -------------------------------------------------------------------

    def set_role(self, role: str, now: float) -> bool:
        """This node's role now; returns whether it changed (its targets follow)."""
        with self.cond:
            if self.role_known and role == self.role:
                return False
            log.info("role %s -> %s", self.role if self.role_known else "unknown", role)
            self.role_known = True
            self.role = role
            self._set_targets(self.settings.targets(role))
            self.cond.notify_all()
            return True

    def _set_targets(self, targets: tuple[Target, ...]) -> None:
        self.targets = {t.name: t for t in targets}
        for name, n in self.store.drop_targets_except(self.targets).items():
            log.info("%s is no longer a target: %d waiting users dropped (the new role's "
                     "catch-up syncs every mailbox)", name, n)  # fmt: skip

    @property
    def first_target(self) -> str | None:
        return next(iter(self.targets), None)

    # -- marking ----------------------------------------------------------------------------

    def mark(self, users: Iterable[str], priority: int, full: bool, now: float) -> int:
        """Each user pending for every current target; returns the rows marked."""
        users = list(users)
        with self.cond:
            n = self.store.mark(list(self.targets), users, priority, full, now)
            if n:
                self.cond.notify_all()
            return n

    def event(self, payload: Any, now: float) -> bool:
        """One event from Dovecot's exporter (JSON, decoded): its user is marked. Returns
        whether it counted; raises ValueError for a malformed one."""
        if not isinstance(payload, dict) or not isinstance(payload.get("fields"), dict):
            raise ValueError("not an exported event: no 'fields'")
        fields = payload["fields"]
        user = fields.get("user")
        reasons = fields.get("reason_code") or []
        if isinstance(reasons, str):
            reasons = [reasons]
        with self.cond:
            self.events["received"] += 1
            self.events["last"] = now
            if not isinstance(user, str) or not user or INCOMING_SYNC in reasons:
                self.events["ignored"] += 1
                return False
            if "doveadm:cmd_sync" in reasons:
                # What one of this node's own syncs brought in from a target: the other targets
                # may lack it (and the one it came from gets a sync that finds nothing to do).
                self.events["pulled"] += 1
            self.mark([user], queue.EVENT, False, now)
            return True

    def probe_idle(self, now: float, interval_s: float, fallback_user: str) -> list[str]:
        """Every current target without a sync for ``interval_s`` and nothing waiting gets one:
        its last user again (a no-op), or ``fallback_user``. So a target that stopped answering
        fails, and alerts, on an idle cluster too. Returns the targets probed."""
        probed = []
        with self.cond:
            for name in self.targets:
                fig = self.figures[name]
                user = fig.last_user or fallback_user
                idle = fig.last_attempt is None or now - fig.last_attempt >= interval_s
                if user and idle and self.store.counts(name).pending == 0:
                    self.store.mark([name], [user], queue.SWEEP, False, now)
                    probed.append(name)
            if probed:
                self.cond.notify_all()
        return probed

    # -- dispatching ------------------------------------------------------------------------

    def _may_start(self, name: str, now: float) -> bool:
        fig = self.figures[name]
        if now < fig.paused_until:
            return False
        return fig.consecutive_failures < 2 or self.running[name] == 0

    def claim(self, name: str, now: float) -> Job | None:
        """The next sync for a worker of target ``name`` (None: nothing may start now)."""
        with self.cond:
            target = self.targets.get(name)
            if target is None or not self._may_start(name, now):
                return None
            first = self.first_target
            peer_ok = (
                first is not None
                and self._may_start(first, now)
                and self.figures[first].consecutive_failures == 0
            )
            for row in self.store.candidates(name, now):
                if row.user in self.in_flight:
                    continue
                # A change goes to the DC peer first (in turns, see _turn); a sweep's rows go
                # wherever a worker is free.
                if (peer_ok and first is not None and row.priority == queue.EVENT
                        and not self._turn(name, first, row, now)):  # fmt: skip
                    continue
                self.store.start(row)
                self.in_flight[row.user] = name
                self.last_to[row.user] = name
                self.running[name] += 1
                full = row.full
                quick = row.priority == queue.EVENT and not full and row.attempts == 0
                timeout = (self.settings.event_sync_timeout_s if quick
                           else self.settings.full_sync_timeout_s)  # fmt: skip
                return Job(row, target, full, timeout)
            return None

    def _turn(self, name: str, first: str, row: queue.Row, now: float) -> bool:
        """Whether target ``name`` may sync ``row``'s change now, when the DC peer (``first``,
        answering) may want the same user: the peer goes first, unless it had the user's last
        sync and a far row has waited PEER_FIRST_MAX_S (see there)."""
        user, peers_last = row.user, self.last_to.get(row.user) == first
        # The other far targets that could take this user now, with their oldest change.
        far = []
        for f in self.targets:
            if f in (first, name) or not self._may_start(f, now) \
                    or self.running[f] >= self.settings.workers:  # fmt: skip
                continue
            since = self.store.change_waiting_since(f, user, now)
            if since is not None:
                far.append((since, f))
        if name != first:
            if self.store.is_ready(first, user, now) and not (
                peers_last and now - row.enqueued >= PEER_FIRST_MAX_S
            ):
                return False
            # Between the far nodes, the longest wait goes first (the target order on a tie):
            # otherwise the worker that asks first would always win and the other starve.
            order = list(self.targets)
            return not any((since, order.index(f)) < (row.enqueued, order.index(name))
                           for since, f in far)  # fmt: skip
        # The peer yields once, after its own sync, to a far change that waited that long (its
        # worker takes it; the peer's next sync follows).
        return not (peers_last and any(now - since >= PEER_FIRST_MAX_S for since, _ in far))

    def next_wake(self, name: str, now: float, longest: float = 1.0) -> float:
        """Seconds a worker of ``name`` may sleep before something may start (at most
        ``longest``: marks and completions wake it earlier). Called after ``claim`` found
        nothing: rows already due are blocked, and only a wake-up or BLOCKED_RECHECK_S frees
        them."""
        with self.cond:
            if name not in self.targets:
                return longest
            due = self.store.next_due(name)
            fig = self.figures[name]
            if due is not None and due <= now:
                due = min(
                    now + BLOCKED_RECHECK_S, self.store.next_due(name, after=now) or now + longest
                )
            wake = max(due if due is not None else now + longest, fig.paused_until)
            return max(0.0, min(longest, wake - now))

    def complete(self, job: Job, outcome: Outcome, now: float) -> None:
        name, row = job.target.name, job.row
        with self.cond:
            self.in_flight.pop(row.user, None)
            self.running[name] -= 1
            fig = self.figures[name]
            fig.last_attempt = now
            if outcome.ok:
                fig.last_user = row.user
                fig.syncs += 1
                fig.durations.append(outcome.seconds)
                if row.priority == queue.EVENT:
                    fig.lags.append(now - row.enqueued)
                fig.last_success = now
                if fig.consecutive_failures:
                    released = self.store.release(name, now)
                    log.info("%s: syncs succeed again (failing since %.0f s); %d waiting syncs "
                             "may start now", name, now - (fig.failing_since or now),
                             released)  # fmt: skip
                fig.consecutive_failures = 0
                fig.failing_since = None
                fig.paused_until = 0.0
                self.store.succeeded(row, now, again=outcome.again)
            elif outcome.gone:
                log.info("%s: %s no longer exists: dropped (%s)", name, row.user, outcome.error)
                self.store.drop(row)
            else:
                fig.failures += 1
                fig.last_failure = now
                fig.last_error = f"{row.user}: {outcome.error}"
                fig.failing_since = fig.failing_since or now
                fig.consecutive_failures += 1
                if fig.consecutive_failures >= 2:
                    pause = TARGET_PAUSE_S * 2 ** (fig.consecutive_failures - 2)
                    fig.paused_until = now + min(pause, TARGET_PAUSE_MAX_S)
                delay = min(ROW_BACKOFF_S * 2**row.attempts, ROW_BACKOFF_MAX_S)
                log.warning("%s: sync of %s failed (attempt %d, again in %.0f s, full): %s",
                            name, row.user, row.attempts + 1, delay, outcome.error)  # fmt: skip
                # Retried as a full sync: what failed may be a folder that changed its GUID
                # under the sync ("Remote lost mailbox GUID"), which only a full one repairs,
                # and the API says no more than the exit code.
                self.store.failed(row, now + delay, full=True)
            self.store.set_meta(f"figures:{name}", _dumps(fig.to_meta()))
            self.cond.notify_all()

    def _load_figures(self, name: str) -> TargetFigures:
        fig = TargetFigures()
        raw = self.store.get_meta(f"figures:{name}")
        data = _loads(raw) if raw else {}
        for key, value in data.items():
            if hasattr(fig, key):
                setattr(fig, key, value)
        return fig

    def get_meta(self, key: str) -> str | None:
        with self.cond:
            return self.store.get_meta(key)

    def set_meta(self, key: str, value: str) -> None:
        with self.cond:
            self.store.set_meta(key, value)

    # -- state ------------------------------------------------------------------------------

    def state(self, now: float) -> dict[str, Any]:
        """Everything an operator, the health check and the metrics read (JSON-ready)."""
        s = self.settings
        with self.cond:
            targets = {}
            for t in s.all_targets:
                counts = self.store.counts(t.name)
                fig = self.figures[t.name]
                targets[t.name] = {
                    "destination": t.destination,
                    "current": t.name in self.targets,
                    "queue": counts.pending,
                    "queue_events": counts.events,
                    "running": counts.running,
                    "oldest_pending_s": _age(now, counts.oldest),
                    "oldest_event_s": _age(now, counts.oldest_event),
                    "last_success": fig.last_success,
                    "last_failure": fig.last_failure,
                    "last_error": fig.last_error,
                    "failing_since": fig.failing_since,
                    "consecutive_failures": fig.consecutive_failures,
                    "paused_s": max(0.0, round(fig.paused_until - now, 1)),
                    "syncs": fig.syncs,
                    "failures": fig.failures,
                    "sync_ms": _spread(fig.durations),
                    "lag_ms": _spread(fig.lags),
                }
            return {
                "node": s.node,
                "role": self.role,
                "role_known": self.role_known,
                "now": now,
                "started": self.started,
                "targets": targets,
                "events": dict(self.events),
                "activity": dict(self.activity),
                "limits": {
                    "max_event_age_s": s.max_event_age_s,
                    "max_pending_age_s": s.max_pending_age_s,
                    "max_sync_ms": s.max_sync_ms,
                    "sweep_interval_s": s.sweep_interval_s,
                },
            }


def _age(now: float, since: float | None) -> float | None:
    return None if since is None else round(max(0.0, now - since), 1)


def _spread(values: deque[float]) -> dict[str, int | None]:
    return {"p50": ms(percentile(values, 0.5)), "p90": ms(percentile(values, 0.9)),
            "p99": ms(percentile(values, 0.99)), "max": ms(max(values, default=None)),
            "n": len(values)}  # fmt: skip


def _dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, sort_keys=True)


def _loads(raw: str) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
