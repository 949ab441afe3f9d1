"""Running the node's own tools (mount, doveadm, postsuper ...): one function, replaceable by a
fake in the unit tests."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

EX_TIMEOUT = 124  # as timeout(1) reports it


class RescueError(Exception):
    """A refusal or a failure the operator can act on: one line, no traceback."""


@dataclass(frozen=True)
class Completed:
    returncode: int
    stdout: str
    stderr: str

    def why(self) -> str:
        """The last line the command said about its failure."""
        text = (self.stderr.strip() or self.stdout.strip()).splitlines()
        return text[-1] if text else f"exit {self.returncode}"


class Runner(Protocol):
    def __call__(
        self, argv: Sequence[str], *, stdin: str = "", timeout: float = 60
    ) -> Completed: ...


def run(argv: Sequence[str], *, stdin: str = "", timeout: float = 60) -> Completed:
    try:
        proc = subprocess.run(
            list(argv), input=stdin, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return Completed(EX_TIMEOUT, "", f"{argv[0]}: no answer in {timeout:.0f} s")
    except OSError as e:
        return Completed(127, "", f"{argv[0]}: {e.strerror}")
    return Completed(proc.returncode, proc.stdout, proc.stderr)
