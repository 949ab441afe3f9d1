"""The running controller: its HTTP endpoint on loopback, its workers and its duties thread.

HTTP (``listen``:``port``, loopback only):

- ``POST /events``: Dovecot's event exporter, one JSON event per request; answered 204 as soon as
  the user is in the queue on disk (Dovecot drops an event not answered in time, and posts a
  few at a time), 400 for what is not an event;
- ``GET /state``: the state as JSON (``Controller.state``);
- ``POST /now`` (check the role at once), ``/catch-up``, ``/sweep``: 202, done at once by the
  duties thread (the role script's promote and demote post ``/catch-up``).

Workers: ``workers`` threads per target, each taking the next sync its target may start
(``Controller.claim``), running it (``doveadm sync``), and reporting it; a worker of a target
that is not current idles.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from mailnode.replication.controller import Controller
from mailnode.replication.dsync import Runner
from mailnode.replication.duties import Duties

log = logging.getLogger("mailcluster-replication")

MAX_EVENT_BYTES = 1 << 20
TICK_S = 1.0
REQUESTS = ("now", "catch-up", "sweep")


class Service:
    def __init__(self, ctl: Controller, duties: Duties, runner: Runner,
                 clock: Callable[[], float] = time.time) -> None:  # fmt: skip
        self.ctl = ctl
        self.duties = duties
        self.runner = runner
        self.clock = clock
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.http = ThreadingHTTPServer((ctl.settings.listen, ctl.settings.port),
                                        self._handler())  # fmt: skip
        self.http.daemon_threads = True

    @property
    def port(self) -> int:
        return int(self.http.server_address[1])

    def start(self) -> None:
        self._spawn("http", self.http.serve_forever)
        self._spawn("duties", self._duties_loop)
        for target in self.ctl.settings.all_targets:
            for i in range(self.ctl.settings.workers):
                self._spawn(f"sync-{target.name}-{i}", self._worker, target.name)

    def stop(self) -> None:
        self.stopping.set()
        self.duties.wake.set()
        with self.ctl.cond:
            self.ctl.cond.notify_all()
        self.http.shutdown()
        self.http.server_close()

    def run_forever(self) -> None:
        """Until SIGTERM or SIGINT (systemd's stop)."""
        done = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: done.set())
        self.start()
        cfg = self.ctl.settings
        log.info("listening on %s:%d; targets by role: writer %s, standby %s", cfg.listen,
                 self.port, [t.name for t in cfg.writer_targets],
                 [t.name for t in cfg.standby_targets])  # fmt: skip
        done.wait()
        log.info("stopping")
        self.stop()

    def _spawn(self, name: str, fn: Callable[..., None], *args: Any) -> None:
        t = threading.Thread(target=fn, args=args, name=name, daemon=True)
        t.start()
        self.threads.append(t)

    def _duties_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                self.duties.tick(self.clock())
            except Exception:  # a duty that failed must not end the controller
                log.exception("duties")
            self.duties.wake.wait(TICK_S)

    def _worker(self, name: str) -> None:
        ctl = self.ctl
        while not self.stopping.is_set():
            # Claim and wait under one hold of the lock (it is reentrant): a mark between the
            # two would otherwise wake nobody, and the change would wait for the timeout.
            with ctl.cond:
                job = ctl.claim(name, self.clock())
                while job is None and not self.stopping.is_set():
                    ctl.cond.wait(ctl.next_wake(name, self.clock()))
                    job = ctl.claim(name, self.clock())
            if job is None:
                return
            outcome = self.runner.sync(job.row.user, job.target.destination, job.full,
                                       job.timeout_s)  # fmt: skip
            ctl.complete(job, outcome, self.clock())

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: Dovecot reuses its connections

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_EVENT_BYTES:
                    self._answer(413, {"error": "too large"})
                    return
                body = self.rfile.read(length)
                path = self.path.split("?", 1)[0]
                if path == "/events":
                    try:
                        service.ctl.event(json.loads(body), service.clock())
                    except ValueError as e:
                        self._answer(400, {"error": str(e)})
                        return
                    self._answer(204)
                elif path.lstrip("/") in REQUESTS:
                    service.duties.request(path.lstrip("/"))
                    self._answer(202, {"requested": path.lstrip("/")})
                else:
                    self._answer(404, {"error": f"no {path}"})

            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] == "/state":
                    self._answer(200, service.ctl.state(service.clock()))
                else:
                    self._answer(404, {"error": f"no {self.path}"})

            def _answer(self, code: int, data: dict[str, Any] | None = None) -> None:
                body = b"" if data is None else json.dumps(data, indent=1).encode() + b"\n"
                self.send_response(code)
                if body:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass  # one line per event would flood the journal

        return Handler
