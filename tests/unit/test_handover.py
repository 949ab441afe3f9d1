"""The handover script against stand-ins for Heartbeat: it takes over only when a disruptive
change is pending, never merely because its Command is new (a first `up`, or a running cluster
meeting this program)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from cluster.pulumi import handover


def _run(tmp: Path, pending: str) -> str:
    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    tools = {
        "role": f'#!/bin/sh\n[ "$1" = is-holder ] && [ -e {tmp}/holder ]\n',
        "takeover": f"#!/bin/sh\ntouch {tmp}/holder {tmp}/took-over\n",
        "cl_status": "#!/bin/sh\nexit 0\n",
    }
    for name, text in tools.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    script = (
        handover.script(pending)
        .replace(handover.STATE, str(tmp / "state"))
        .replace(handover.ROLE, str(bin_dir / "role"))
        .replace(handover.HB_TAKEOVER, str(bin_dir / "takeover"))
    )
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    out = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True,
                         check=True)  # fmt: skip
    return out.stdout


def test_new_command_records_and_does_nothing(tmp_path: Path) -> None:
    assert _run(tmp_path, "g6-standard-2") == ""
    assert (tmp_path / "state").read_text() == "g6-standard-2\n"
    assert not (tmp_path / "took-over").exists()
    assert _run(tmp_path, "g6-standard-2") == ""  # nothing pending


def test_pending_resize_takes_over_once(tmp_path: Path) -> None:
    _run(tmp_path, "g6-standard-2")
    assert "took the shared IP and the role over" in _run(tmp_path, "g6-standard-4")
    assert (tmp_path / "took-over").exists()
    assert (tmp_path / "state").read_text() == "g6-standard-4\n"
    (tmp_path / "took-over").unlink()
    assert _run(tmp_path, "g6-standard-4") == ""
    assert not (tmp_path / "took-over").exists()
