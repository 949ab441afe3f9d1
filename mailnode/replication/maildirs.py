"""What the maildirs on this node say about recent changes, read from the files themselves.

A delivery, a flag change or an expunge creates, renames or unlinks a file in a folder's ``cur/``
or ``new/``, and a new folder makes its own: only those directories count. The maildir's own
directory changes whenever Dovecot rewrites an index, which every sync does, so it would make
every mailbox look changed. Maildirs are ``VMAIL/<domain>/<user>/`` with folders as
``.<Folder>/`` inside (Maildir++), as dovecot.conf lays them out.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


def _newest_changes(vmail: Path) -> Iterator[tuple[str, float]]:
    """(user@domain, mtime) of every ``cur/`` and ``new/`` under ``vmail``."""
    try:
        domains = list(os.scandir(vmail))
    except OSError:
        return
    for domain in domains:
        if not domain.is_dir(follow_symlinks=False):
            continue
        try:
            users = list(os.scandir(domain.path))
        except OSError:
            continue
        for user in users:
            if not user.is_dir(follow_symlinks=False):
                continue
            address = f"{user.name}@{domain.name}"
            folders = [user.path]
            try:
                entries = list(os.scandir(user.path))
            except OSError:
                continue
            folders += [e.path for e in entries
                        if e.name.startswith(".") and e.is_dir(follow_symlinks=False)]  # fmt: skip
            for folder in folders:
                for sub in ("cur", "new"):
                    with contextlib.suppress(OSError):
                        yield address, os.stat(os.path.join(folder, sub)).st_mtime


def newest_by_user(vmail: str | Path) -> dict[str, float]:
    """user@domain -> the newest change of its messages (mtime of its newest cur/ or new/)."""
    out: dict[str, float] = {}
    for user, mtime in _newest_changes(Path(vmail)):
        if mtime > out.get(user, 0.0):
            out[user] = mtime
    return out


def changed_since(vmail: str | Path, since: float) -> list[str]:
    """The users whose messages changed at or after ``since``, sorted."""
    return sorted(u for u, t in newest_by_user(vmail).items() if t >= since)


def recent_users(vmail: str | Path, window_s: float, before: float) -> list[str]:
    """The users whose messages changed in the ``window_s`` seconds before this node's last
    change before ``before`` (a boot: what a crash may have left unreplicated; now: what a node
    just promoted holds that its old master may not have pushed on yet), and any since. Sorted;
    empty when nothing changed before ``before``."""
    newest = newest_by_user(vmail)
    last = max((t for t in newest.values() if t < before), default=None)
    if last is None:
        return []
    return sorted(u for u, t in newest.items() if t >= last - window_s)


def boot_time() -> float | None:
    """When this node booted: the start of its PID 1 (in a container, the container's; the
    kernel's own boot time is the host's there)."""
    try:
        fields = Path("/proc/1/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # starttime, field 22 of proc(5); fields[0] is field 3
        btime = next(
            int(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return btime + ticks / os.sysconf("SC_CLK_TCK")
