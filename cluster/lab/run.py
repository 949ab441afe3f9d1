"""Running commands on this machine and in the lab's namespaces."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Sequence


class LabError(RuntimeError):
    """A lab operation failed; the message says what and where."""


def run(
    argv: Sequence[str],
    *,
    input: str | bytes | None = None,
    check: bool = True,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run and capture. On failure the error carries stderr, never the input (it may hold
    secrets)."""
    data = input.decode() if isinstance(input, bytes) else input
    proc = subprocess.run(
        list(argv), input=data, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise LabError(
            f"{' '.join(argv[:6])}{' ...' if len(argv) > 6 else ''} failed "
            f"({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}"
        )
    return proc


def ok(argv: Sequence[str]) -> bool:
    return run(argv, check=False).returncode == 0


def in_ns(ns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


class Progress:
    """One line per phase with the time since ``up`` began, so a slow phase is obvious."""

    def __init__(self, quiet: bool = False) -> None:
        self.start = time.monotonic()
        self.quiet = quiet

    def __call__(self, message: str) -> None:
        if not self.quiet:
            print(f"[{time.monotonic() - self.start:6.1f}s] {message}", file=sys.stderr, flush=True)
