"""Where the lab keeps things, and the names of what it creates on this machine.

Every name the lab gives a kernel object starts with ``mclab`` (network namespaces), is
``CGROUP_NAME`` (cgroups) or lives under the lab directory (files, loop device backing images),
so ``down`` can find and undo everything it made even when the state file was lost with a
crashed lab process.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from cluster.config import DC_NAMES
from cluster.topology import SLOTS

HOSTS = tuple(f"{dc}-{slot}" for dc in DC_NAMES for slot in SLOTS)


def _lab_name() -> str:
    """MAILCLUSTER_LAB_NAME: a second lab beside the default one on the same machine (a developer
    testing two branches at once). It goes into every machine-wide name the lab makes."""
    name = os.environ.get("MAILCLUSTER_LAB_NAME", "")
    if not re.fullmatch(r"[a-z0-9]{0,4}", name):
        raise SystemExit(
            f"MAILCLUSTER_LAB_NAME={name!r}: use up to 4 lower-case letters or digits (or unset it)"
        )
    return name


LAB_NAME = _lab_name()
NS_PREFIX = f"mclab{LAB_NAME}-"
SWITCH_NS = f"{NS_PREFIX}switch"
ROUTER_NS = f"{NS_PREFIX}router"
CLIENT_NS = f"{NS_PREFIX}client"
CGROUP_NAME = f"mailcluster-lab{LAB_NAME}"  # one cgroup per host under it (cgroups.py)
INTERNET_BRIDGE = "inet"  # the client side of the router ("the internet")
VOLUME_SIZE = 2 * 1024**3  # a sparse image: costs only what the host writes


def host_ns(host: str) -> str:
    return f"{NS_PREFIX}{host}"


def switch_port(host: str) -> str:
    """The switch-side end of a host's cable (interface names are at most 15 bytes)."""
    return f"p-{host}"


def router_port(net: str) -> str:
    """The switch-side end of the router's cable to bridge ``net`` (dc1, dc2, inet)."""
    return f"r-{net}"


def lab_dir() -> Path:
    default = f"/var/lib/mailcluster-lab{'-' + LAB_NAME if LAB_NAME else ''}"
    return Path(os.environ.get("MAILCLUSTER_LAB_DIR", default))


def cache_dir() -> Path:
    return Path(os.environ.get("MAILCLUSTER_LAB_CACHE", "/var/cache/mailcluster-lab"))


def base_dir() -> Path:
    """The unpacked base root filesystem: the read-only lower layer of every host."""
    return lab_dir() / "base"


def host_dir(host: str) -> Path:
    """A host's "machine": its disk (the overlay's upper layer), volume image and boot log."""
    return lab_dir() / "hosts" / host


def netns_etc(ns: str) -> Path:
    """``ip netns exec`` bind-mounts files from here over /etc (the client's resolv.conf)."""
    return Path("/etc/netns") / ns
