"""Real Dovecot 2.4 servers in the lab's base, for the checkers-layer replication tests.

Each ``Dovecot`` runs the plan's own ``dovecot.conf`` template (rendered with
``dovecot.conf_values`` of a lab node) with only what a test machine needs changed: its paths
under the test's directory, its listeners on loopback with ports of its own, users from a
passwd-file instead of MariaDB, and a test CA's certificate. Everything else (the event exporter
and its filter, the plugins, the doveadm server over plain TCP as on the mesh, the namespaces) is
what the nodes run. Dovecot runs as root in the base (``checkroot``), its mail as uid 5000 as on
a node.
"""

from __future__ import annotations

import contextlib
import functools
import json
import shutil
import smtplib
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from rendertools import base, in_base

from cluster.hostcontext import HostContext
from cluster.lab.checkroot import NsPopen, terminate
from cluster.lab.model import lab_topology
from cluster.material import ClusterSecrets, generate
from cluster.render import render
from cluster.services import dovecot, rspamd

PASSWORD = "secret-pw"
DOVEADM_PASSWORD = "doveadm-test-secret"
DOMAIN = "example.com"

# Users from a passwd-file (PLAIN passwords: a test has no MariaDB); uid, gid and home come from
# the plan's own mail_uid, mail_gid and mail_home.
USERDB = """passdb passwd-file {{
  default_password_scheme = PLAIN
  passwd_file_path = {path}
}}
userdb passwd-file {{
  passwd_file_path = {path}
}}
"""


@functools.cache
def cluster_secrets() -> ClusterSecrets:
    """A cluster CA and a certificate for 127.0.0.1 (the servers' doveadm listeners)."""
    return generate(DOMAIN, ["dc1"], {"dc1": ["127.0.0.1"]})


@contextlib.contextmanager
def home() -> Iterator[Path]:
    """A directory for servers whose mail processes run as uid 5000: under /tmp, passable by
    anyone (pytest's own directories are 0700, and it resets them so while other runs start)."""
    path = Path(tempfile.mkdtemp(prefix="mailcluster-dovecots-", dir="/tmp"))
    path.chmod(0o711)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Dovecot:
    """One Dovecot server with its own directory, ports and users."""

    def __init__(
        self,
        name: str,
        home: Path,
        events_url: str,
        users: list[str],
        sql: str = "",
        fields: dict[str, str] | None = None,
    ) -> None:
        """``sql``: the plan's SQL include, rendered for a test database, instead of the
        passwd-file of ``users``; ``fields``: a user's userdb fields there (``key=value ...``,
        e.g. a quota)."""
        self.name = name
        self.home = home
        self.doveadm_port = free_port()
        self.imap_port = free_port()
        self.http_port = free_port()
        self.sieve_port = free_port()
        self.vmail = home / "vmail"
        self.run_dir = home / "run"
        self.conf = home / "etc" / "dovecot.conf"
        self.log = home / "dovecot.log"
        # Outside base_dir, as Postfix's sockets are on a node.
        self.lmtp_socket = home / "spool" / "lmtp"
        self.proc: NsPopen | None = None
        etc = self.conf.parent
        for d in (etc, self.vmail, self.run_dir, self.lmtp_socket.parent):
            d.mkdir(parents=True, exist_ok=True)
        self.vmail.chmod(0o777)
        for parent in self.vmail.parents:
            if not parent.stat().st_mode & 0o001:
                raise ValueError(f"{parent}: uid 5000 cannot pass (use dovecots.home())")
        secrets = cluster_secrets()
        tls = etc / "tls"
        tls.mkdir(exist_ok=True)
        (tls / "cert.pem").write_text(secrets.tls["dc1"].cert_pem)
        (tls / "key.pem").write_text(secrets.tls["dc1"].key_pem)
        topo = lab_topology("dc1")
        ctx = HostContext(topo, topo.node("dc1-svr1"), secrets, "lab")
        # The plan's spam-to-Junk script, compiled as the plan compiles it.
        self.spam_script = etc / "sieve" / "spam-to-junk.sieve"
        self.spam_script.parent.mkdir(exist_ok=True)
        self.spam_script.write_text(
            render(dovecot.SPAM_SCRIPT, **ctx.common(), spam_header=rspamd.SPAM_HEADER)
        )
        self.report_scripts = {}
        for path in (dovecot.REPORT_SPAM_SCRIPT, dovecot.REPORT_HAM_SCRIPT):
            script = etc / "sieve" / path.rsplit("/", 1)[1]
            script.write_text(render(path, **ctx.common(), learn_program=dovecot.LEARN_COMMAND))
            self.report_scripts[path] = script
        # Instead of the node's learn program: one that records the class and the subject.
        self.learned = home / "learned.log"
        self.learned.touch(mode=0o666)  # the program runs as the mail uid
        self.learned.chmod(0o666)
        pipe_dir = etc / "sieve-pipe"
        pipe_dir.mkdir()
        learn = pipe_dir / dovecot.LEARN_COMMAND
        learn.write_text(
            f'#!/bin/sh\nsubject=$(grep -m1 "^Subject: " | cut -c10-)\n'
            f'echo "$1 $subject" >> {self.learned}\n'
        )
        learn.chmod(0o755)
        # Instead of the node's warning program: one that records its arguments.
        self.quota_warnings = home / "quota-warnings.log"
        warn = etc / "quota-warning"
        warn.write_text(f'#!/bin/sh\necho "$@" >> {self.quota_warnings}\n')
        warn.chmod(0o755)
        values = dovecot.conf_values(ctx) | {
            "base_dir": f"{self.run_dir}/",
            "log_path": str(self.log),
            "cluster_cert": str(tls / "cert.pem"),
            "cluster_key": str(tls / "key.pem"),
            "public_cert": str(tls / "cert.pem"),
            "public_key": str(tls / "key.pem"),
            "vmail_dir": str(self.vmail),
            # The base has no vmail user; root may use the socket too.
            "vmail_user": "root",
            "doveadm_port": self.doveadm_port,
            "doveadm_address": "127.0.0.1",
            "doveadm_http_port": self.http_port,
            "imap_addresses": "127.0.0.1",
            "imap_port": self.imap_port,
            "imaps_port": 0,
            "lmtp_socket": str(self.lmtp_socket),
            "auth_socket": str(self.lmtp_socket.parent / "auth"),
            "quota_status_socket": str(self.lmtp_socket.parent / "quota-status"),
            "managesieve_port": self.sieve_port,
            "spam_script": str(self.spam_script),
            "report_spam_script": str(self.report_scripts[dovecot.REPORT_SPAM_SCRIPT]),
            "report_ham_script": str(self.report_scripts[dovecot.REPORT_HAM_SCRIPT]),
            "sieve_pipe_dir": str(pipe_dir),
            "quota_warning_program": str(warn),
            "events_url": events_url,
            "sql_include": "userdb.conf.ext",
        }
        conf = render(dovecot.CONF, **ctx.common(), **values)
        # The base has no mail user to own the warning's socket (a node's is vmail, 0600): here
        # the mail processes (uid 5000) reach the root-owned socket by its mode.
        listener = "unix_listener quota-warning {\n    mode = 0600"
        assert listener in conf
        self.conf.write_text(conf.replace(listener, listener.replace("0600", "0666")))
        (etc / "userdb.conf.ext").write_text(sql or USERDB.format(path=etc / "users"))
        (etc / "users").write_text(
            "".join(f"{u}:{{PLAIN}}{PASSWORD}::::::{(fields or {}).get(u, '')}\n" for u in users)
        )
        (etc / dovecot.SECRETS_CONF.rsplit("/", 1)[1]).write_text(
            render(dovecot.SECRETS_CONF, doveadm_password=DOVEADM_PASSWORD)
        )
        # The controller's copy of the password (replication.DOVEADM_SECRET on a node).
        self.secret_file = etc / "doveadm.secret"
        self.secret_file.write_text(DOVEADM_PASSWORD + "\n")
        # Compiled as the plan compiles them: with the configuration's Sieve plugins.
        for script in (self.spam_script, *self.report_scripts.values()):
            compiled = in_base("sievec", "-c", str(self.conf), str(script))
            assert compiled.returncode == 0, compiled.stderr

    @property
    def api(self) -> str:
        """This server's doveadm HTTP API (loopback)."""
        return f"http://127.0.0.1:{self.http_port}/doveadm/v1"

    @property
    def target(self) -> str:
        """This server as a dsync destination."""
        return f"tcp:127.0.0.1:{self.doveadm_port}"

    def start(self) -> None:
        self.proc = base().popen(
            ["dovecot", "-F", "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                err = self.proc.stderr.read() if self.proc.stderr else ""
                raise AssertionError(f"{self.name}: dovecot exited: {err}{self.log_text()}")
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.doveadm_port)) == 0 and (
                    self.lmtp_socket.exists()
                )

        wait_for(up, f"{self.name}'s Dovecot")

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc)
            self.proc = None

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def doveadm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = in_base("doveadm", "-c", str(self.conf), *args)
        if check and proc.returncode != 0:
            raise AssertionError(f"{self.name}: doveadm {' '.join(args)}: {proc.stderr}")
        return proc

    def deliver(
        self, user: str, subject: str, *, headers: str = "", body: str = "body\r\n"
    ) -> None:
        """A message for ``user`` over LMTP, as Postfix hands it over (``headers``: more header
        lines, each ending in CRLF, as rspamd's milter would have added them)."""
        with smtplib.LMTP(str(self.lmtp_socket)) as lmtp:
            lmtp.sendmail(
                "sender@example.org",
                [user],
                f"From: sender@example.org\r\nTo: {user}\r\nSubject: {subject}\r\n{headers}"
                f"\r\n{body}",
            )

    def maildir(self, user: str) -> Path:
        local, domain = user.split("@")
        return self.vmail / domain / local

    def subjects(self, user: str, folder: str = "INBOX") -> set[str]:
        """The subjects in ``user``'s folder, read from the maildir's files (never through
        Dovecot, which would create a mailbox that is not there)."""
        box = self.maildir(user) if folder == "INBOX" else self.maildir(user) / f".{folder}"
        out = set()
        for sub in ("cur", "new"):
            for f in (box / sub).glob("*") if (box / sub).is_dir() else ():
                for line in f.read_text(errors="replace").splitlines():
                    if line.startswith("Subject: "):
                        out.add(line.removeprefix("Subject: "))
                        break
        return out


class EventLog:
    """An HTTP server that records what Dovecot's event exporter posts (JSON, one event each)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        log = self.events

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                log.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/events"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
