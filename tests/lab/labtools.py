"""Helpers for the lab tests: the lab as tests see it, driven through its command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
KEEP = os.environ.get("MAILCLUSTER_LAB_KEEP") == "1"


@dataclass
class Lab:
    """The lab as tests see it: the CLI, plus a few helpers on top of it."""

    up_seconds: float = 0.0
    log: list[str] = field(default_factory=list)

    def run(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 900
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "cluster.lab", "-q", *args],
            cwd=REPO,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"lab {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def exec(self, host: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("exec", host, "--", *cmd, check=check)

    def client(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("client", "--", *cmd, check=check)

    def clientlib(self, *args: str) -> dict[str, Any]:
        proc = self.client("python3", "-m", "cluster.lab.clientlib", *args, check=False)
        try:
            result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError) as e:
            raise AssertionError(f"clientlib {args[0]}: {proc.stdout}\n{proc.stderr}") from e
        return result

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.run("status", "--json").stdout)
        return data

    @property
    def ca(self) -> str:
        lab_dir = Path(os.environ.get("MAILCLUSTER_LAB_DIR", "/var/lib/mailcluster-lab"))
        return str(lab_dir / "ca.pem")

    def wait_for(self, what: str, probe: Any, timeout: float = 60, interval: float = 0.5) -> Any:
        """Poll ``probe()`` until it returns something truthy; fail naming ``what``."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = probe()
            if last:
                return last
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last}")
