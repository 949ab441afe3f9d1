"""Running doveadm: one user's sync with one target, and the list of users.

A sync is ``doveadm sync -u USER -l LOCK -T IO [-f] tcp:HOST:PORT``, a two-way merge with the
target's doveadm server at its mesh address
(https://doc.dovecot.org/2.4.1/core/man/doveadm-sync.1.html), asked of this node's own doveadm
server through its HTTP API on loopback
(https://doc.dovecot.org/2.4.1/core/admin/doveadm.html#doveadm-http-api): a doveadm server
process kept warm runs it, which costs the pushing node a seventh of the CPU of a doveadm
command (dovecot.py has the figures).

- ``-l`` (``lockTimeout``): dsync's own lock on the user at both ends (a sync from the other end
  waits for it);
- ``-T`` (``timeout``): a silent peer ends the sync after that many seconds, not Dovecot's 600;
- ``-f`` (``fullSync``): a full sync, comparing every message. The sweeps, catch-ups and retries
  use it: a folder made on two nodes (two GUIDs) gets one GUID at the first sync (the higher one
  wins, on both sides: dsync-brain-mailbox-tree-sync.c), but when both copies also have the same
  UIDVALIDITY (made in the same second) a normal sync then sees nothing to do and each side
  keeps only its own messages, which a full sync merges (checked with two real Dovecot 2.4.1).

Each sync is also bounded from here: the answer is awaited ``timeout_s`` at most. Exit codes
(doveadm(1), in the API's error answer): 0 done; 2 done, but something changed meanwhile, so run
it again; 67 the user does not exist (a mailbox deleted since it was queued); anything else
failed (the server's log has its message: the API gives only the code).
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

EX_RERUN = 2
EX_NOUSER = 67
EX_TEMPFAIL = 75
# What some exit codes mean, for the state and the logs (sysexits.h, doveadm(1)).
MEANINGS = {
    64: "usage",
    65: "data error",
    67: "no such user",
    68: "no such host",
    69: "unavailable",
    70: "software error",
    73: "cannot create",
    74: "I/O error",
    75: "temporary failure",
    77: "permission denied",
    78: "configuration error",
}


@dataclass(frozen=True)
class Outcome:
    ok: bool
    again: bool = False  # done, but run it once more (exit 2, or a change during the sync)
    gone: bool = False  # the user no longer exists
    error: str = ""
    seconds: float = 0.0


class Runner(Protocol):
    def sync(self, user: str, destination: str, full: bool, timeout_s: float) -> Outcome: ...

    def users(self) -> list[str]: ...


def classify(rc: int | None, error: str, seconds: float) -> Outcome:
    """The outcome of one sync (rc None: no answer in time)."""
    if rc is None:
        return Outcome(False, error=error or f"no answer after {seconds:.0f}s", seconds=seconds)
    if rc == 0:
        return Outcome(True, seconds=seconds)
    if rc == EX_RERUN:
        return Outcome(True, again=True, seconds=seconds)
    meaning = MEANINGS.get(rc, "failed")
    error = f"exit {rc} ({meaning}){': ' + error if error else ''}"
    return Outcome(False, gone=rc == EX_NOUSER, error=error, seconds=seconds)


def exit_code(answer: Any) -> int:
    """The exit code of the doveadm API's answer to one command: 0 for a doveadmResponse,
    the code of an exitCode error; ValueError for anything else."""
    try:
        ((kind, body, _tag),) = answer
    except (TypeError, ValueError) as e:
        raise ValueError(f"not one answer: {str(answer)[:200]}") from e
    if kind == "doveadmResponse":
        return 0
    if kind == "error" and isinstance(body, dict) and isinstance(body.get("exitCode"), int):
        return int(body["exitCode"])
    raise ValueError(f"unexpected answer: {str(answer)[:200]}")


class Doveadm:
    """This node's doveadm: syncs through its HTTP API, the user listing by its command."""

    def __init__(self, command: tuple[str, ...], api: str, secret_file: str,
                 lock_timeout_s: int, io_timeout_s: int) -> None:  # fmt: skip
        self.command = command
        self.api = api
        self.secret_file = secret_file
        self.lock_timeout_s = lock_timeout_s
        self.io_timeout_s = io_timeout_s

    def _authorization(self) -> str:
        # Read at each sync: a changed password needs no restart.
        password = Path(self.secret_file).read_text().strip()
        return "Basic " + base64.b64encode(f"doveadm:{password}".encode()).decode()

    def request(self, user: str, destination: str, full: bool) -> bytes:
        params: dict[str, Any] = {"user": user, "destination": [destination],
                                  "lockTimeout": self.lock_timeout_s,
                                  "timeout": self.io_timeout_s}  # fmt: skip
        if full:
            params["fullSync"] = True
        return json.dumps([["sync", params, "sync"]]).encode()

    def sync(self, user: str, destination: str, full: bool, timeout_s: float) -> Outcome:
        t0 = time.monotonic()
        try:
            req = urllib.request.Request(
                self.api, data=self.request(user, destination, full), method="POST",
                headers={"Content-Type": "application/json",
                         "Authorization": self._authorization()},
            )  # fmt: skip
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                answer = json.loads(resp.read())
            rc: int | None = exit_code(answer)
            error = ""
        except urllib.error.HTTPError as e:
            rc, error = None, f"doveadm API: HTTP {e.code} {e.reason}"
        except TimeoutError:
            rc, error = None, ""
        except (OSError, ValueError) as e:  # URLError is an OSError
            rc, error = None, f"doveadm API: {e}"
        return classify(rc, error, time.monotonic() - t0)

    def users(self) -> list[str]:
        """Every user the userdb lists (Postfix Admin's active mailboxes)."""
        proc = subprocess.run([*self.command, "user", "*"], capture_output=True, text=True,
                              timeout=120, check=False)  # fmt: skip
        if proc.returncode != 0:
            lines = proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"]
            raise RuntimeError(f"doveadm user: {lines[-1][-300:]}")
        return sorted({line.strip() for line in proc.stdout.splitlines() if line.strip()})
