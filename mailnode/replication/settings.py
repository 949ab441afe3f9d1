"""The controller's configuration: a JSON file the plan writes (cluster/services/replication.py).

Every key is required; a missing or malformed one is reported by name, all of them at once, with
what is allowed (``SettingsError``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WRITER = "writer"  # holds the active data centre's shared IP: serves mail
STANDBY = "standby"  # the active data centre's other node
PASSIVE = "passive"  # a node of the standby data centre: never pushes
ROLES = (WRITER, STANDBY, PASSIVE)


class SettingsError(ValueError):
    pass


@dataclass(frozen=True)
class Target:
    """A node this one pushes to: its name, dsync destination and doveadm server."""

    name: str
    destination: str  # tcp:HOST:PORT (a mesh address), for doveadm sync
    server: str  # HOST:PORT, for doveadm -S


@dataclass(frozen=True)
class Settings:
    node: str
    # This node's data centre is the active one: only then does it ever push.
    active_dc: bool
    # Targets by role, the DC peer first (its recovery point is the tighter one).
    writer_targets: tuple[Target, ...]
    standby_targets: tuple[Target, ...]
    listen: str
    port: int
    state_dir: str
    run_dir: str
    vmail_dir: str
    doveadm: tuple[str, ...]  # the doveadm command (argv prefix): the user listing
    doveadm_api: str  # the doveadm HTTP API's URL (loopback): the syncs
    doveadm_secret: str  # a file holding the doveadm password
    role_check: tuple[str, ...]  # exits 0 when this node holds its data centre's shared IP
    workers: int
    role_interval_s: float
    sweep_interval_s: float
    probe_interval_s: float  # an idle target gets a sync this often (a failing one fails)
    recent_window_s: float
    lock_timeout_s: int  # doveadm sync -l
    io_timeout_s: int  # doveadm sync -T
    event_sync_timeout_s: float  # a change's sync is killed after this
    full_sync_timeout_s: float  # a full sync's (sweep, catch-up, a retry)
    max_event_age_s: float  # health: the oldest change waiting
    max_pending_age_s: float  # health: the oldest of anything waiting
    max_sync_ms: float  # health: the 90th percentile of a sync's duration

    def targets(self, role: str) -> tuple[Target, ...]:
        if role == WRITER:
            return self.writer_targets
        if role == STANDBY:
            return self.standby_targets
        return ()

    @property
    def all_targets(self) -> tuple[Target, ...]:
        seen: dict[str, Target] = {}
        for t in (*self.writer_targets, *self.standby_targets):
            seen.setdefault(t.name, t)
        return tuple(seen.values())


_NUMBERS = {
    "workers": "a whole number of worker threads per target, 1 or more",
    "role_interval_s": "seconds between role checks, more than 0",
    "sweep_interval_s": "seconds between sweeps, more than 0",
    "probe_interval_s": "seconds, more than 0",
    "recent_window_s": "seconds, more than 0",
    "lock_timeout_s": "whole seconds, more than 0",
    "io_timeout_s": "whole seconds, more than 0",
    "event_sync_timeout_s": "seconds, more than 0",
    "full_sync_timeout_s": "seconds, more than 0",
    "max_event_age_s": "seconds, more than 0",
    "max_pending_age_s": "seconds, more than 0",
    "max_sync_ms": "milliseconds, more than 0",
    "port": "a TCP port, 1 to 65535",
}
_INTEGERS = {"workers", "lock_timeout_s", "io_timeout_s", "port"}
_STRINGS = ("node", "listen", "state_dir", "run_dir", "vmail_dir", "doveadm_api", "doveadm_secret")


def _targets(raw: Any, key: str, errors: list[str]) -> tuple[Target, ...]:
    if not isinstance(raw, list):
        errors.append(f"{key}: a list of {{name, destination, server}} objects")
        return ()
    out = []
    for i, item in enumerate(raw):
        fields = item if isinstance(item, dict) else {}
        if not all(isinstance(fields.get(f), str) and fields[f] for f in Target.__annotations__):
            errors.append(f"{key}[{i}]: needs non-empty strings name, destination, server")
            continue
        # Plain TCP inside the WireGuard mesh: dsync over Dovecot 2.4.1's TLS can hang for good
        # (cluster/services/dovecot.py). tcps: is refused, so that it is not brought back.
        if not fields["destination"].startswith("tcp:"):
            errors.append(f"{key}[{i}].destination: must be tcp:HOST:PORT (a mesh address), not "
                          f"{fields['destination']!r}")  # fmt: skip
            continue
        out.append(Target(fields["name"], fields["destination"], fields["server"]))
    return tuple(out)


def parse(data: Any) -> Settings:
    """Settings from the decoded JSON; ``SettingsError`` lists every bad key."""
    if not isinstance(data, dict):
        raise SettingsError("the configuration must be a JSON object")
    errors: list[str] = []
    for key in _STRINGS:
        if not isinstance(data.get(key), str) or not data[key]:
            errors.append(f"{key}: a non-empty string")
    if not isinstance(data.get("active_dc"), bool):
        errors.append("active_dc: true or false")
    for key in ("doveadm", "role_check"):
        v = data.get(key)
        if not isinstance(v, list) or not v or not all(isinstance(x, str) and x for x in v):
            errors.append(f"{key}: a command, as a non-empty list of strings")
    for key, allowed in _NUMBERS.items():
        v = data.get(key)
        ok = isinstance(v, int | float) and not isinstance(v, bool) and v > 0
        if ok and key in _INTEGERS:
            ok = isinstance(v, int) and (key != "port" or v <= 65535)
        if not ok:
            errors.append(f"{key}: {allowed} (got {v!r})")
    writer = _targets(data.get("writer_targets"), "writer_targets", errors)
    standby = _targets(data.get("standby_targets"), "standby_targets", errors)
    known = {*_STRINGS, *_NUMBERS, "active_dc", "doveadm", "role_check", "writer_targets",
             "standby_targets"}  # fmt: skip
    errors += [f"{key}: unknown key" for key in sorted(set(data) - known)]
    if isinstance(data.get("doveadm_api"), str) and not data["doveadm_api"].startswith("http://"):
        errors.append(f"doveadm_api: an http:// URL (the doveadm server on loopback), not "
                      f"{data['doveadm_api']!r}")  # fmt: skip
    if errors:
        raise SettingsError("; ".join(errors))
    return Settings(
        node=data["node"],
        active_dc=data["active_dc"],
        writer_targets=writer,
        standby_targets=standby,
        listen=data["listen"],
        port=data["port"],
        state_dir=data["state_dir"],
        run_dir=data["run_dir"],
        vmail_dir=data["vmail_dir"],
        doveadm=tuple(data["doveadm"]),
        doveadm_api=data["doveadm_api"],
        doveadm_secret=data["doveadm_secret"],
        role_check=tuple(data["role_check"]),
        workers=data["workers"],
        role_interval_s=float(data["role_interval_s"]),
        sweep_interval_s=float(data["sweep_interval_s"]),
        probe_interval_s=float(data["probe_interval_s"]),
        recent_window_s=float(data["recent_window_s"]),
        lock_timeout_s=data["lock_timeout_s"],
        io_timeout_s=data["io_timeout_s"],
        event_sync_timeout_s=float(data["event_sync_timeout_s"]),
        full_sync_timeout_s=float(data["full_sync_timeout_s"]),
        max_event_age_s=float(data["max_event_age_s"]),
        max_pending_age_s=float(data["max_pending_age_s"]),
        max_sync_ms=float(data["max_sync_ms"]),
    )


def load(path: str | Path) -> Settings:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise SettingsError(f"{path}: {e}") from e
    try:
        return parse(data)
    except SettingsError as e:
        raise SettingsError(f"{path}: {e}") from e
