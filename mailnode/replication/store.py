"""The queue on disk: one row per (target, user) still to sync, in SQLite.

A user is at most once in a target's queue: marking it again keeps the row and only raises its
priority (a lower number) or asks for a full sync. A row being synced stays in the table
(``running``) until its sync succeeds, so a restart, a crash or a power cut loses no pending
user: ``open`` puts every running row back in the queue. A mark that arrives while its row runs
sets ``dirty``: the sync that is running may have missed that change, so the row goes back to
the queue when it ends, instead of being deleted.

SQLite in WAL mode with ``synchronous=NORMAL``: a committed mark survives the process being
killed; a power cut may lose the last marks, which the catch-up at boot finds again in the
maildirs (``maildirs.recent_users``). https://www.sqlite.org/wal.html#performance_considerations
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

EVENT = 0  # a change Dovecot reported: first
CATCH_UP = 1  # changed just before a boot or a promote
SWEEP = 2  # everything, now and then
PRIORITIES = {EVENT: "event", CATCH_UP: "catch-up", SWEEP: "sweep"}

SCHEMA = """
CREATE TABLE IF NOT EXISTS pending (
  target TEXT NOT NULL,
  user TEXT NOT NULL,
  priority INTEGER NOT NULL,
  full INTEGER NOT NULL DEFAULT 0,
  enqueued REAL NOT NULL,       -- the oldest change this row stands for
  due REAL NOT NULL,            -- not before (backoff after a failure)
  attempts INTEGER NOT NULL DEFAULT 0,
  running INTEGER NOT NULL DEFAULT 0,
  dirty REAL,                   -- marked again at this time while it ran
  PRIMARY KEY (target, user)
);
CREATE INDEX IF NOT EXISTS pending_order ON pending (target, running, priority, enqueued);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class Row:
    target: str
    user: str
    priority: int
    full: bool
    enqueued: float
    due: float
    attempts: int


@dataclass(frozen=True)
class TargetCounts:
    pending: int  # rows, running ones included
    events: int  # rows at EVENT priority
    running: int
    oldest: float | None  # enqueued of the oldest row
    oldest_event: float | None


class Store:
    """The pending rows. Not thread-safe by itself: the controller calls it under its lock."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        # Rows a previous run was syncing when it stopped: pending again.
        self.db.execute("UPDATE pending SET running = 0 WHERE running = 1")

    def close(self) -> None:
        self.db.close()

    def mark(self, targets: Iterable[str], users: Iterable[str], priority: int, full: bool,
             now: float) -> int:  # fmt: skip
        """Each user pending for each target (one transaction); returns the rows touched. A row
        that exists keeps its oldest change and its backoff, and takes the higher priority; a
        running one is marked dirty."""
        rows = [(t, u, priority, int(full), now, now) for t in targets for u in users]
        if not rows:
            return 0
        with self._transaction():
            self.db.executemany(
                """INSERT INTO pending (target, user, priority, full, enqueued, due)
                   VALUES (?, ?, ?, ?, ?, ?)
                   ON CONFLICT (target, user) DO UPDATE SET
                     priority = MIN(priority, excluded.priority),
                     full = MAX(full, excluded.full),
                     dirty = CASE WHEN running = 1 THEN COALESCE(dirty, excluded.enqueued)
                             ELSE dirty END""",
                rows,
            )
        return len(rows)

    def candidates(self, target: str, now: float, limit: int = 64) -> list[Row]:
        """Rows of ``target`` that may start now, best first: priority, then the oldest."""
        cur = self.db.execute(
            """SELECT target, user, priority, full, enqueued, due, attempts FROM pending
               WHERE target = ? AND running = 0 AND due <= ?
               ORDER BY priority, enqueued LIMIT ?""",
            (target, now, limit),
        )
        return [Row(r[0], r[1], r[2], bool(r[3]), r[4], r[5], r[6]) for r in cur]

    def is_ready(self, target: str, user: str, now: float) -> bool:
        """The row (target, user) waits and may start now."""
        cur = self.db.execute(
            "SELECT 1 FROM pending WHERE target = ? AND user = ? AND running = 0 AND due <= ?",
            (target, user, now),
        )
        return cur.fetchone() is not None

    def next_due(self, target: str, after: float | None = None) -> float | None:
        """When the next waiting row of ``target`` may start (``after``: of the rows not due
        by then)."""
        row = self.db.execute(
            "SELECT MIN(due) FROM pending WHERE target = ? AND running = 0 AND due > ?",
            (target, float("-inf") if after is None else after),
        ).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def change_waiting_since(self, target: str, user: str, now: float) -> float | None:
        """When the oldest change of ``user`` for ``target`` was made, if a change (not a
        sweep's row) of it waits and may start now."""
        row = self.db.execute(
            """SELECT enqueued FROM pending WHERE target = ? AND user = ? AND running = 0
               AND due <= ? AND priority = ?""",
            (target, user, now, EVENT),
        ).fetchone()
        return None if row is None else float(row[0])

    def start(self, row: Row) -> None:
        self.db.execute(
            "UPDATE pending SET running = 1, dirty = NULL WHERE target = ? AND user = ?",
            (row.target, row.user),
        )

    def succeeded(self, row: Row, now: float, again: bool = False) -> bool:
        """The row's sync succeeded: it is done, unless it was marked while it ran (or
        ``again``: Dovecot asked for another run), in which case it waits again at once (a
        full sync asked for while a normal one ran is still owed). Returns whether it waits
        again."""
        with self._transaction():
            r = self.db.execute("SELECT dirty FROM pending WHERE target = ? AND user = ?",
                                (row.target, row.user)).fetchone()  # fmt: skip
            if r is None:
                return False
            if r[0] is None and not again:
                self.db.execute("DELETE FROM pending WHERE target = ? AND user = ?",
                                (row.target, row.user))  # fmt: skip
                return False
            since = r[0] if r[0] is not None else now
            self.db.execute(
                """UPDATE pending SET running = 0, dirty = NULL, attempts = 0, due = ?,
                   enqueued = ?, full = full > ? WHERE target = ? AND user = ?""",
                (now, since, int(row.full), row.target, row.user),
            )
            return True

    def failed(self, row: Row, due: float, full: bool) -> None:
        """The row's sync failed: it waits until ``due``, with one more attempt counted."""
        self.db.execute(
            """UPDATE pending SET running = 0, dirty = NULL, attempts = attempts + 1, due = ?,
               full = MAX(full, ?) WHERE target = ? AND user = ?""",
            (due, int(full), row.target, row.user),
        )

    def release(self, target: str, now: float) -> int:
        """Every row of ``target`` waiting out a backoff may start now (the target answers
        again); returns how many."""
        cur = self.db.execute(
            "UPDATE pending SET due = ? WHERE target = ? AND running = 0 AND due > ?",
            (now, target, now),
        )
        return cur.rowcount

    def drop(self, row: Row) -> None:
        self.db.execute("DELETE FROM pending WHERE target = ? AND user = ?",
                        (row.target, row.user))  # fmt: skip

    def drop_targets_except(self, keep: Iterable[str]) -> dict[str, int]:
        """Forget the rows of targets not in ``keep`` (this node no longer pushes there);
        returns how many were dropped, per target."""
        keep = list(keep)
        marks = ",".join("?" * len(keep)) or "NULL"
        cur = self.db.execute(
            f"SELECT target, COUNT(*) FROM pending WHERE target NOT IN ({marks}) GROUP BY target",
            keep,
        )
        dropped = {t: n for t, n in cur}
        if dropped:
            self.db.execute(f"DELETE FROM pending WHERE target NOT IN ({marks})", keep)
        return dropped

    def counts(self, target: str) -> TargetCounts:
        r = self.db.execute(
            """SELECT COUNT(*), COALESCE(SUM(priority = 0), 0), COALESCE(SUM(running), 0),
                      MIN(enqueued), MIN(CASE WHEN priority = 0 THEN enqueued END)
               FROM pending WHERE target = ?""",
            (target,),
        ).fetchone()
        return TargetCounts(r[0], r[1], r[2], r[3], r[4])

    def rows(self, target: str) -> list[Row]:
        cur = self.db.execute(
            """SELECT target, user, priority, full, enqueued, due, attempts FROM pending
               WHERE target = ? ORDER BY priority, enqueued""",
            (target,),
        )
        return [Row(r[0], r[1], r[2], bool(r[3]), r[4], r[5], r[6]) for r in cur]

    def get_meta(self, key: str) -> str | None:
        r = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if r is None else str(r[0])

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO "
                        "UPDATE SET value = excluded.value", (key, value))  # fmt: skip

    def _transaction(self) -> _Transaction:
        return _Transaction(self.db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
