"""What the controller does on its own: role checks, the catch-ups and the sweeps.

One thread runs ``tick`` every second or so (and at once when asked: ``request``):

- the role, every ``role_interval_s`` and on request (the role script's promote and demote ask):
  the holder of the active data centre's shared IP is the writer; a change of role is followed by
  a catch-up;
- at the first tick after this node booted, a catch-up of what changed before the boot (the
  mailboxes whose messages changed in the ``recent_window_s`` seconds before its last change
  before the boot: a crash may have left those unreplicated); after a restart of the controller
  alone, the mailboxes changed since it was last alive (Dovecot dropped their events meanwhile);
- a catch-up: those recent mailboxes first (priority CATCH_UP), then every mailbox (SWEEP), as
  full syncs (``dsync``);
- on the writer, every ``sweep_interval_s``, every mailbox to every target (events are at most
  once: this is the backstop), as full syncs;
- a target without a sync for ``probe_interval_s`` gets one (its last user again: a no-op), so
  that one which stopped answering fails, and alerts, on an idle cluster too.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from mailnode.replication import maildirs
from mailnode.replication import store as queue
from mailnode.replication.controller import Controller
from mailnode.replication.dsync import Runner
from mailnode.replication.settings import PASSIVE, STANDBY, WRITER, Settings

log = logging.getLogger("mailcluster-replication")

ALIVE_EVERY_S = 5.0
# After a restart: the changes since this long before the controller was last seen alive.
ALIVE_MARGIN_S = 10.0
# A catch-up or sweep whose user listing failed (MariaDB down) is tried again after this.
RETRY_LISTING_S = 30.0
BOOT_MARK = "booted"  # in run_dir (a tmpfs): absent after a boot


class Duties:
    def __init__(
        self,
        ctl: Controller,
        runner: Runner,
        is_holder: Callable[[], bool],
        boot_time: float | None,
    ) -> None:
        self.ctl = ctl
        self.settings: Settings = ctl.settings
        self.runner = runner
        self.is_holder = is_holder
        self.boot_time = boot_time
        self.next_role_check = 0.0
        self.next_alive = 0.0
        self.started = False
        self.pending_listing: str | None = None  # a catch-up or sweep owed its full listing
        self.next_listing = 0.0
        self.requests: set[str] = set()
        self.some_user = ""  # from the last listing: what a probe syncs before any sync ran
        self.wake = threading.Event()
        self.lock = threading.Lock()

    # -- requests (HTTP handlers, other threads) --------------------------------------------

    def request(self, what: str) -> None:
        """``now`` (check the role at once), ``catch-up`` or ``sweep``: done at the next tick."""
        with self.lock:
            self.requests.add(what)
        self.wake.set()

    def _take_requests(self) -> set[str]:
        with self.lock:
            taken, self.requests = self.requests, set()
        self.wake.clear()
        return taken

    # -- the tick ---------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        asked = self._take_requests()
        changed = False
        if now >= self.next_role_check or asked & {"now", "catch-up"}:
            changed = self._check_role(now)
        if not self.ctl.role_known:
            return
        if not self.started:
            self._start(now)
        elif changed or "catch-up" in asked:
            self.catch_up(now, boot=False, reason="catch-up asked" if not changed
                          else f"became {self.ctl.role}")  # fmt: skip
        if "sweep" in asked or (self.ctl.role == WRITER and now >= self._next_sweep()):
            self.sweep(now)
        if self.pending_listing and now >= self.next_listing:
            self._mark_everything(now, self.pending_listing)
        self.ctl.probe_idle(now, self.settings.probe_interval_s, self.some_user)
        if now >= self.next_alive:
            self.ctl.set_meta("alive", repr(now))
            self.next_alive = now + ALIVE_EVERY_S

    def _check_role(self, now: float) -> bool:
        self.next_role_check = now + self.settings.role_interval_s
        if not self.settings.active_dc:
            role = PASSIVE
        else:
            try:
                role = WRITER if self.is_holder() else STANDBY
            except Exception as e:  # the role script failed: keep what we know
                log.warning("role check failed: %s", e)
                return False
        first = not self.ctl.role_known
        return self.ctl.set_role(role, now) and not first

    def _start(self, now: float) -> None:
        """The first tick with a known role: make up for the time this controller was down."""
        self.started = True
        mark = Path(self.settings.run_dir) / BOOT_MARK
        alive = self.ctl.get_meta("alive")
        if not mark.exists():
            mark.parent.mkdir(parents=True, exist_ok=True)
            mark.touch()
            self.catch_up(now, boot=True, reason="boot")
        elif alive is not None:
            since = float(alive) - ALIVE_MARGIN_S
            users = maildirs.changed_since(self.settings.vmail_dir, since)
            self.ctl.mark(users, queue.EVENT, False, now)
            self.ctl.activity["scan"] = {"at": now, "since": since, "users": len(users)}
            log.info("restart: %d mailboxes changed since %.0f s before the last sign of life",
                     len(users), now - since)  # fmt: skip

    # -- catch-up and sweep -----------------------------------------------------------------

    def catch_up(self, now: float, boot: bool, reason: str) -> None:
        before = (self.boot_time or now) if boot else now
        recent = maildirs.recent_users(self.settings.vmail_dir, self.settings.recent_window_s,
                                       before)  # fmt: skip
        self.ctl.mark(recent, queue.CATCH_UP, True, now)
        log.info("catch-up (%s): %d mailboxes changed recently go first, to %s", reason,
                 len(recent), ", ".join(self.ctl.targets) or "no target")  # fmt: skip
        self.ctl.activity["catch_up"] = {"at": now, "reason": reason, "recent": len(recent)}
        self._mark_everything(now, "catch-up")

    def sweep(self, now: float) -> None:
        self.ctl.set_meta("last_sweep", repr(now))
        self._mark_everything(now, "sweep")

    def _next_sweep(self) -> float:
        last = self.ctl.get_meta("last_sweep")
        if last is None:
            # The first sweep of a new node: one interval after its start.
            last = repr(self.ctl.started)
            self.ctl.set_meta("last_sweep", last)
        return float(last) + self.settings.sweep_interval_s

    def _mark_everything(self, now: float, why: str) -> None:
        """Every user, pending for every current target as a full sync (SWEEP)."""
        if not self.ctl.targets:
            self.pending_listing = None
            return
        try:
            users = self.runner.users()
        except Exception as e:  # MariaDB down, Dovecot restarting: try again soon
            log.warning("%s: listing the mailboxes failed, again in %.0f s: %s", why,
                        RETRY_LISTING_S, e)  # fmt: skip
            self.pending_listing = why
            self.next_listing = now + RETRY_LISTING_S
            return
        self.pending_listing = None
        self.some_user = users[0] if users else self.some_user
        n = self.ctl.mark(users, queue.SWEEP, True, now)
        key = "sweep" if why == "sweep" else "catch_up"
        entry = dict(self.ctl.activity.get(key) or {})
        entry.update({"at": now, "mailboxes": len(users), "rows": n})
        self.ctl.activity[key] = entry
        log.info("%s: %d mailboxes to %s", why, len(users), ", ".join(self.ctl.targets))
