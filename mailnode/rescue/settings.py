"""The rescue's configuration: a JSON file the plan writes (cluster/services/rescue.py).

Every key is required; a missing or malformed one is reported by name, all of them at once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONFIG = "/etc/mailcluster/rescue.json"


class SettingsError(ValueError):
    pass


@dataclass(frozen=True)
class Settings:
    node: str  # this node
    peer: str  # the one node whose volume may be rescued here: the DC peer
    device: str  # where the peer's volume appears once attached here
    mount_point: str  # where it is mounted here (never /srv/mail)
    live_mount: str  # this node's own volume: never mounted a second time
    vmail: str  # the maildirs, relative to a volume's root (the live ones: under live_mount)
    queue: str  # the Postfix queue directory, relative to a volume's root
    doveadm: tuple[str, ...]
    workers: int  # mailboxes merged at once
    lock_timeout_s: int  # doveadm sync -l: waits for the replication's sync of the same user
    sync_timeout_s: float  # one mailbox's merge is killed after this
    device_wait_s: float  # the attached volume's device appears within this


_TYPES: dict[str, type] = {
    "node": str,
    "peer": str,
    "device": str,
    "mount_point": str,
    "live_mount": str,
    "vmail": str,
    "queue": str,
    "doveadm": list,
    "workers": int,
    "lock_timeout_s": int,
    "sync_timeout_s": float,
    "device_wait_s": float,
}


def parse(data: Any) -> Settings:
    if not isinstance(data, dict):
        raise SettingsError("the configuration is not a JSON object")
    errors = []
    for key, kind in _TYPES.items():
        value = data.get(key)
        ok = isinstance(value, kind) or (kind is float and isinstance(value, int))
        if value is None or not ok or isinstance(value, bool):
            errors.append(f"{key}: a {kind.__name__} is required, got {value!r}")
    for key in ("device", "mount_point", "live_mount"):
        if isinstance(data.get(key), str) and not data[key].startswith("/"):
            errors.append(f"{key}: an absolute path is required, got {data[key]!r}")
    if isinstance(data.get("mount_point"), str) and data.get("mount_point") == data.get(
        "live_mount"
    ):
        errors.append("mount_point: must differ from live_mount (this node's own volume)")
    if isinstance(data.get("workers"), int) and data["workers"] < 1:
        errors.append(f"workers: at least 1, got {data['workers']}")
    if errors:
        raise SettingsError("; ".join(errors))
    return Settings(
        node=data["node"],
        peer=data["peer"],
        device=data["device"],
        mount_point=data["mount_point"],
        live_mount=data["live_mount"],
        vmail=data["vmail"],
        queue=data["queue"],
        doveadm=tuple(str(a) for a in data["doveadm"]),
        workers=int(data["workers"]),
        lock_timeout_s=int(data["lock_timeout_s"]),
        sync_timeout_s=float(data["sync_timeout_s"]),
        device_wait_s=float(data["device_wait_s"]),
    )


def load(path: str = CONFIG) -> Settings:
    try:
        return parse(json.loads(Path(path).read_text()))
    except OSError as e:
        raise SettingsError(f"{path}: {e.strerror}") from e
    except json.JSONDecodeError as e:
        raise SettingsError(f"{path}: not JSON: {e}") from e
