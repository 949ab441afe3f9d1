"""A long-lived ``mariadb`` client session: many small queries without a process per query.

A program that asks MariaDB something every second (the ban loader) would otherwise start the
client each time (~20 ms of CPU, on every node, for ever). ``Session`` keeps one client running
in batch mode on a pipe and sends each query followed by a marker ``SELECT``; the rows before the
marker are the answer (a query costs well under a millisecond on the local socket).

Any failure ends the client: an SQL error (batch mode stops at the first error, the message on
its stderr), a lost server, no answer within ``timeout_s``. The query then raises ``DbError`` and
the next one starts a new client, so a caller that polls simply retries.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import subprocess
import time
from collections.abc import Sequence

# Batch mode, no column names; flush after every statement so the answer arrives at once.
CLIENT_FLAGS = ("-N", "-B", "--unbuffered", "--connect-timeout=3")
_MARK = "--mailcluster-end-of-answer--"
STOP_WAIT_S = 1.0  # a client whose input is closed ends at once; a hung one is then killed


class DbError(Exception):
    """The database did not answer a query (the message says why)."""


class Session:
    """Queries through one ``mariadb`` client (``argv``: the command and its connection
    options, for instance ``["mariadb", "--protocol=socket", "-uroot"]``)."""

    def __init__(self, argv: Sequence[str], timeout_s: float = 10.0) -> None:
        if not argv:
            raise ValueError("the client command is empty")
        self.argv = (*argv, *CLIENT_FLAGS)
        self.timeout_s = timeout_s
        self._proc: subprocess.Popen[bytes] | None = None

    def query(self, sql: str) -> list[list[str]]:
        """Run ``sql`` (one statement or several separated by ``;``): the rows the statements
        print, each a list of column values as the client prints them (``NULL`` for NULL)."""
        proc = self._proc if self._proc and self._proc.poll() is None else self._start()
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(f"{sql.strip().rstrip(';')};\nSELECT '{_MARK}';\n".encode())
            proc.stdin.flush()
            text = self._read_answer(proc)
        except (OSError, DbError) as e:
            raise DbError(f"{self.argv[0]}: {e}; {self._stop()}".rstrip("; ")) from None
        return [line.split("\t") for line in text.splitlines()]

    def close(self) -> None:
        self._stop()

    def _start(self) -> subprocess.Popen[bytes]:
        self._stop()
        try:
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        except OSError as e:
            raise DbError(f"{self.argv[0]} does not start: {e}") from None
        return self._proc

    def _read_answer(self, proc: subprocess.Popen[bytes]) -> str:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        end = f"{_MARK}\n".encode()
        deadline = time.monotonic() + self.timeout_s
        out = b""
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while not (out == end or out.endswith(b"\n" + end)):
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise DbError(f"no answer within {self.timeout_s:g} s")
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise DbError("the client ended")
                out += chunk
        return out[: -len(end)].decode()

    def _stop(self) -> str:
        """End the client; return what it said on stderr (its error message, if any)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return ""
        if proc.stdin:
            with contextlib.suppress(OSError):  # a client that is gone: its pipe is broken
                proc.stdin.close()
        try:
            proc.wait(timeout=STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()
        # The client echoes the failed statement between dashed lines; its ERROR line says it.
        lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("-----")]
        errors = [ln for ln in lines if ln.startswith("ERROR")]
        return (errors or lines or [""])[-1].strip()
