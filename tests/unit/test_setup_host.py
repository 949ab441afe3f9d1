"""The set-up script installs what the lab's own check would otherwise install at `up`."""

from __future__ import annotations

import re
from pathlib import Path

from cluster.lab.base import HOST_TOOLS

SETUP = Path(__file__).resolve().parents[2] / "scripts" / "setup-host.sh"


def test_setup_installs_every_host_tool_the_lab_needs() -> None:
    debs = re.search(r"^debs=\((.*?)\)", SETUP.read_text(), re.S | re.M)
    assert debs, "setup-host.sh has no debs=(...) list"
    listed = set(debs.group(1).split())
    assert set(HOST_TOOLS.values()) <= listed, set(HOST_TOOLS.values()) - listed
