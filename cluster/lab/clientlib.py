"""What users and foreign mail servers do, run in the lab's client namespace with this machine's
python3: `python -m cluster.lab client -- python3 -m cluster.lab.clientlib COMMAND ...`.

Each command prints one JSON object (``{"ok": true, ...}`` or ``{"ok": false, "error": ...}``) so
tests and the benchmark read results without parsing prose. TLS is verified against the lab's
cluster CA (``--ca``): a test that passes proves the certificate a user would see is right.
"""

from __future__ import annotations

import argparse
import collections
import email.message
import email.utils
import imaplib
import json
import os
import smtplib
import socket
import ssl
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any


def _ctx(ca: str | None) -> ssl.SSLContext:
    if ca == "none":  # the benchmark's baseline server: TLS cost without a CA-signed name
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    return ssl.create_default_context(cafile=ca) if ca else ssl.create_default_context()


def _message(
    sender: str, to: str, subject: str, headers: list[str] | None = None, body_bytes: int = 0
) -> email.message.EmailMessage:
    """A plain message; ``headers``: more "Name: value" lines; ``body_bytes``: a body padded to
    about that size (lines of 76 characters, as mail programs write)."""
    msg = email.message.EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, subject
    # As every mail program writes them (rspamd scores their absence: 3.5 points).
    msg["Date"] = email.utils.formatdate()
    msg["Message-ID"] = email.utils.make_msgid(domain=sender.rpartition("@")[2] or None)
    for header in headers or ():
        name, value = header.split(":", 1)
        msg[name.strip()] = value.strip()
    body = f"mailcluster lab test: {subject}\n"
    if body_bytes > len(body):
        body += ("x" * 76 + "\n") * ((body_bytes - len(body)) // 77)
    msg.set_content(body)
    return msg


def _smtp_session(a: argparse.Namespace, timeout: float) -> smtplib.SMTP:
    """An SMTP session as a foreign server (port 25) or a user (587: STARTTLS, then AUTH)."""
    s = smtplib.SMTP(a.host, a.port, local_hostname="client.example.net", timeout=timeout)
    try:
        s.ehlo()
        if a.starttls:
            # Verified against the address we connected to: the certificate names the shared IP.
            s.starttls(context=_ctx(a.ca))
            s.ehlo()
        if a.user:
            s.login(a.user, a.password)
    except BaseException:
        s.close()
        raise
    return s


def send(a: argparse.Namespace) -> dict[str, Any]:
    """One message over SMTP: port 25 as a foreign server, or 587 with STARTTLS and AUTH."""
    t0 = time.monotonic()
    if a.raw:  # a message exactly as written (a spam sample): only the envelope is ours
        with open(a.raw, "rb") as f:
            raw: bytes | email.message.EmailMessage = f.read()
    else:
        raw = _message(a.sender, a.to, a.subject, a.header, a.body_bytes)
    with _smtp_session(a, timeout=30) as s:
        if isinstance(raw, bytes):
            refused = s.sendmail(a.sender, [a.to], raw)
        else:
            refused = s.send_message(raw, a.sender, [a.to])
    return {"ok": not refused, "refused": {k: list(v) for k, v in refused.items()},
            "seconds": time.monotonic() - t0}  # fmt: skip


def _imap(a: argparse.Namespace, timeout: float = 30) -> imaplib.IMAP4_SSL:
    conn = imaplib.IMAP4_SSL(a.host, a.port, ssl_context=_ctx(a.ca), timeout=timeout)
    conn.login(a.user, a.password)
    return conn


def _headers(
    conn: imaplib.IMAP4_SSL, prefix: str, folder: str = "INBOX", fields: str = "SUBJECT"
) -> list[email.message.Message]:
    """The header ``fields`` (IMAP's HEADER.FIELDS list; "" for all) of every message in
    ``folder`` whose subject matches ``prefix``, one per message: a message delivered twice is
    there twice."""
    typ, _ = conn.select(f'"{folder}"', readonly=True)
    if typ != "OK":
        return []
    typ, data = conn.search(None, "SUBJECT", f'"{prefix}"')
    ids = data[0].split() if typ == "OK" and data and data[0] else []
    if not ids:
        return []
    part = f"HEADER.FIELDS ({fields})" if fields else "HEADER"
    typ, fetched = conn.fetch(b",".join(ids).decode(), f"(BODY.PEEK[{part}])")
    return [email.message_from_bytes(item[1]) for item in fetched if isinstance(item, tuple)]


def _subjects(conn: imaplib.IMAP4_SSL, prefix: str, folder: str = "INBOX") -> list[str]:
    """The subject of every message in ``folder`` matching ``prefix``, one per message."""
    return [str(m.get("Subject", "")).strip() for m in _headers(conn, prefix, folder)]


def move(a: argparse.Namespace) -> dict[str, Any]:
    """What a user's mail program does to file mail by hand: UID MOVE (RFC 6851) of every
    message in ``folder`` whose subject matches ``subject`` into ``to``."""
    conn = _imap(a)
    try:
        typ, _ = conn.select(f'"{a.folder}"')
        if typ != "OK":
            return {"ok": False, "error": f"no folder {a.folder}"}
        typ, data = conn.uid("SEARCH", "SUBJECT", f'"{a.subject}"')
        uids = data[0].split() if typ == "OK" and data and data[0] else []
        if uids:
            typ, answer = conn.uid("MOVE", b",".join(uids).decode(), f'"{a.to}"')
            if typ != "OK":
                return {"ok": False, "error": f"MOVE: {answer!r}"}
    finally:
        conn.logout()
    return {"ok": bool(uids), "moved": len(uids)}


def headers(a: argparse.Namespace) -> dict[str, Any]:
    """Every header of the messages in ``folder`` whose subject matches ``subject``, once at
    least ``count`` are there (or timeout): ``messages`` is a list of {name: [values]}."""
    t0 = time.monotonic()
    found: list[email.message.Message] = []
    last = ""
    while True:
        try:
            conn = _imap(a)
            try:
                found = _headers(conn, a.subject, a.folder, fields="")
            finally:
                conn.logout()
            if len(found) >= a.count:
                break
        except (OSError, imaplib.IMAP4.error) as e:
            last = f"{type(e).__name__}: {e}"
        if time.monotonic() - t0 > a.timeout:
            break
        time.sleep(a.interval)
    messages = [{k: [str(v) for v in m.get_all(k, [])] for k in dict.fromkeys(m.keys())}
                for m in found]  # fmt: skip
    return {"ok": len(found) >= a.count, "messages": messages, "error": last,
            "seconds": time.monotonic() - t0}  # fmt: skip


def expunge(a: argparse.Namespace) -> dict[str, Any]:
    """What a user's mail program does to delete for good: flag \\Deleted, then EXPUNGE, the
    INBOX messages whose subject contains ``subject``."""
    conn = _imap(a)
    try:
        conn.select("INBOX")
        typ, data = conn.search(None, "SUBJECT", f'"{a.subject}"')
        ids = data[0].split() if typ == "OK" and data and data[0] else []
        if ids:
            conn.store(b",".join(ids).decode(), "+FLAGS.SILENT", "(\\Deleted)")
            conn.expunge()
    finally:
        conn.logout()
    return {"ok": bool(ids), "expunged": len(ids)}


def wait_imap(a: argparse.Namespace) -> dict[str, Any]:
    """Poll IMAPS until ``count`` messages whose subject starts with ``subject`` are there."""
    got = subjects(a)
    out = {"ok": got["ok"], "found": len(got["subjects"]), "seconds": got["seconds"]}
    if not got["ok"]:
        out["error"] = got["error"] or f"{len(got['subjects'])} of {a.count} found"
    return out


def login(a: argparse.Namespace) -> dict[str, Any]:
    """Poll until an IMAPS login works (a new mailbox): the time it took."""
    t0 = time.monotonic()
    last = ""
    while time.monotonic() - t0 <= a.timeout:
        try:
            _imap(a).logout()
            return {"ok": True, "seconds": time.monotonic() - t0}
        except (OSError, imaplib.IMAP4.error) as e:
            last = f"{type(e).__name__}: {e}"
        time.sleep(a.interval)
    return {"ok": False, "error": last, "seconds": time.monotonic() - t0}


def http(a: argparse.Namespace) -> dict[str, Any]:
    req = urllib.request.Request(a.url, headers={"Host": a.host_header} if a.host_header else {})
    try:
        with urllib.request.urlopen(req, context=_ctx(a.ca), timeout=30) as resp:
            body = resp.read(200_000).decode(errors="replace")
            return {"ok": True, "status": resp.status, "url": resp.geturl(), "body": body}
    except urllib.error.HTTPError as e:
        return {"ok": False, "status": e.code, "error": str(e),
                "body": e.read(200_000).decode(errors="replace")}  # fmt: skip


def bulk(a: argparse.Namespace) -> dict[str, Any]:
    """``count`` messages over submission from ``parallel`` sessions at once, spread round-robin
    over the ``--to`` mailboxes, then wait until each mailbox shows all of its own over IMAPS
    (logging in as that mailbox with ``--imap-password``). Reports messages per second end to
    end."""
    recipients: list[str] = a.to
    jobs = [(recipients[i % len(recipients)], f"{a.subject} {i:05d}") for i in range(a.count)]
    chunks = [jobs[i :: a.parallel] for i in range(a.parallel)]

    def session(chunk: list[tuple[str, str]]) -> int:
        sent = 0
        with _smtp_session(a, timeout=60) as s:
            for to, subject in chunk:
                s.send_message(_message(a.sender, to, subject), a.sender, [to])
                sent += 1
        return sent

    t0 = time.monotonic()
    with ThreadPoolExecutor(a.parallel) as pool:
        sent = sum(pool.map(session, chunks))
    t_sent = time.monotonic() - t0
    # One mailbox at a time: while the first is incomplete the others are too (round-robin), so
    # this polls about as often as one mailbox would, and the IMAP logins of the check cost the
    # servers little of the CPU the benchmark counts.
    seen: dict[str, Any] = {"ok": True, "found": 0}
    for to in recipients:
        own = sum(1 for r, _ in jobs if r == to)
        check = argparse.Namespace(**{**vars(a), "user": to, "password": a.imap_password or
                                      a.password, "host": a.imap_host or a.host,
                                      "port": a.imap_port, "count": own})  # fmt: skip
        got = wait_imap(check)
        seen["found"] += got["found"]
        if not got["ok"]:
            seen = {**got, "ok": False, "mailbox": to, "found": seen["found"]}
            break
    total = time.monotonic() - t0
    return {"ok": seen["ok"], "sent": sent, "mailboxes": len(recipients),
            "submit_seconds": t_sent, "total_seconds": total, "per_second": sent / total,
            "imap": seen}  # fmt: skip


def _submit_one(a: argparse.Namespace, subject: str) -> tuple[bool, int | None, str]:
    """One message in its own session (a client that reconnects after a failover)."""
    try:
        with smtplib.SMTP(a.host, a.port, local_hostname="client.example.net",
                          timeout=a.session_timeout) as s:  # fmt: skip
            s.ehlo()
            s.starttls(context=_ctx(a.ca))
            s.ehlo()
            s.login(a.user, a.password)
            refused = s.send_message(_message(a.user, a.to or a.user, subject), a.user,
                                     [a.to or a.user])  # fmt: skip
        return not refused, None, ""
    except (OSError, smtplib.SMTPException) as e:
        code = getattr(e, "smtp_code", None)
        if isinstance(e, smtplib.SMTPRecipientsRefused):
            code = next(iter(e.recipients.values()))[0]
        return False, code, f"{type(e).__name__}: {e}"


def stream(a: argparse.Namespace) -> dict[str, Any]:
    """A steady sender over submission: one message every ``1/rate`` s for ``seconds`` s (or
    until the file ``--stop`` exists), each in its own session. Reports exactly which messages
    got a 250 (acked) and the SMTP codes of the others."""
    acked: list[str] = []
    # The wall clock at each 250: the lab's hosts share this machine's clock, so a bench can
    # compare it with the time a message's file appeared on a node.
    acked_at: dict[str, float] = {}
    failed: list[dict[str, Any]] = []
    t0 = time.monotonic()
    i = 0
    while time.monotonic() - t0 < a.seconds:
        if a.stop and os.path.exists(a.stop):
            break
        subject = f"{a.subject} {i:05d}"
        t, wall = time.monotonic(), time.time()
        ok, code, err = _submit_one(a, subject)
        if ok:
            acked.append(subject)
            acked_at[subject] = time.time()
            if a.progress:  # one line per 250, so the caller can wait for N of them
                with open(a.progress, "a") as f:
                    f.write(subject + "\n")
        else:
            # "at_wall": the wall clock at the attempt's start, comparable with a drill's.
            failed.append({"subject": subject, "code": code, "error": err[:200],
                           "at": round(t - t0, 3), "at_wall": wall})  # fmt: skip
        i += 1
        time.sleep(max(0.0, 1.0 / a.rate - (time.monotonic() - t)))
    # 5xx would be a message refused for good: a failover may only ever cause retries.
    permanent = [f for f in failed if isinstance(f["code"], int) and f["code"] >= 500]
    return {"ok": not permanent, "sent": i, "acked": acked, "acked_at": acked_at,
            "failed": failed, "permanent": permanent}  # fmt: skip


def subjects(a: argparse.Namespace) -> dict[str, Any]:
    """The subjects starting with ``subject`` in INBOX, once ``count`` different ones are there,
    or, with ``--expect`` (a JSON list), once every expected one is (or timeout). ``subjects``
    lists each once; ``copies`` counts those found more than once (a message delivered twice).
    Polling for the expected set, not a count: a message that arrived without its 250 must not
    end the wait while an acknowledged one is still on its way."""
    t0 = time.monotonic()
    expect = set(json.loads(a.expect)) if getattr(a, "expect", "") else None
    found: list[str] = []
    last = ""

    def complete() -> bool:
        return expect <= set(found) if expect is not None else len(set(found)) >= a.count

    while True:
        try:
            conn = _imap(a)
            try:
                # wait-imap and bulk share this wait and have no --folder: their INBOX.
                found = _subjects(conn, a.subject, getattr(a, "folder", "INBOX"))
            finally:
                conn.logout()
            if complete():
                break
        except (OSError, imaplib.IMAP4.error) as e:
            last = f"{type(e).__name__}: {e}"
        if time.monotonic() - t0 > a.timeout:
            break
        time.sleep(a.interval)
    copies = {s: n for s, n in collections.Counter(found).items() if n > 1}
    return {"ok": complete(), "subjects": sorted(set(found)), "copies": copies, "error": last,
            "seconds": time.monotonic() - t0}  # fmt: skip


def _banner(host: str, port: int, timeout: float, connect_timeout: float | None = None) -> bool:
    """A 220 within ``timeout`` s of connecting; the connect itself within ``connect_timeout``
    (default: ``timeout``)."""
    try:
        with socket.create_connection((host, port), connect_timeout or timeout) as sock:
            sock.settimeout(timeout)
            return sock.recv(64).startswith(b"220")
    except OSError:
        return False


class _IMAP4SSLQuickConnect(imaplib.IMAP4_SSL):
    """IMAPS whose TCP connect gives up after ``PROBE_CONNECT_TIMEOUT_S``, while the TLS
    handshake and the login keep the whole ``timeout``."""

    def _create_socket(self, timeout: float | None) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), PROBE_CONNECT_TIMEOUT_S)
        sock.settimeout(timeout)
        wrapped: ssl.SSLSocket = self.ssl_context.wrap_socket(sock, server_hostname=self.host)
        return wrapped


# The probe's attempts give up a connect before TCP's first SYN retransmission (1 s): a SYN lost
# to the dead node is never sent again, so when the shared address moves only attempts started
# after that connect, one per interval, instead of every attempt of the last seconds arriving at
# the survivor at once (up to 25 TLS logins and 100 SMTP sessions per family). That burst is the
# suspect when a CI run's first IMAPS login came seconds after the other figures (11-20 s on IPv6
# against 7-9 s). A later attempt covers the SYN the early one gave up on.
PROBE_CONNECT_TIMEOUT_S = 0.9
IMAP_PROBE_INTERVAL_S = 0.2  # the IMAPS figure's resolution
IMAP_PROBE_TIMEOUT_S = 10  # a connected attempt's TLS handshake and login
SMTP_PROBE_BANNER_TIMEOUT_S = 2.0  # a connected attempt's wait for the 220


def probe(a: argparse.Namespace) -> dict[str, Any]:
    """From now on, a new attempt every ``interval`` s (each in its own thread, so one attempt
    hanging on a dead address does not delay the next): the wall-clock time (time.time(), which
    the lab's namespaces share with the caller) when the first SMTP 220 banner arrived, and when
    the first IMAPS login worked."""
    import threading

    found: dict[str, float] = {}
    lock = threading.Lock()

    def smtp_try() -> None:
        if _banner(a.host, a.smtp_port, SMTP_PROBE_BANNER_TIMEOUT_S, PROBE_CONNECT_TIMEOUT_S):
            with lock:
                found.setdefault("smtp", time.time())

    # Each IMAPS attempt: [start, end, outcome], so a late login can be told apart from attempts
    # that hung (a lost SYN, a stalled handshake) or were refused.
    imap_attempts: list[list[Any]] = []

    def imap_try() -> None:
        t1 = time.time()
        try:
            conn = _IMAP4SSLQuickConnect(a.host, a.port, ssl_context=_ctx(a.ca),
                                         timeout=IMAP_PROBE_TIMEOUT_S)  # fmt: skip
            conn.login(a.user, a.password)
            conn.logout()
        except (OSError, imaplib.IMAP4.error) as e:
            with lock:
                imap_attempts.append([t1, time.time(), f"{type(e).__name__}: {e}"[:80]])
            return
        with lock:
            imap_attempts.append([t1, time.time(), "ok"])
            found.setdefault("imap", time.time())

    t0 = time.monotonic()
    last_imap = 0.0
    while time.monotonic() - t0 < a.timeout:
        now = time.monotonic()
        with lock:
            if "smtp" in found and ("imap" in found or not a.user):
                break
            want = [smtp_try] if "smtp" not in found else []
            # A TLS login is heavy: at most one every IMAP_PROBE_INTERVAL_S.
            if a.user and "imap" not in found and now - last_imap >= IMAP_PROBE_INTERVAL_S:
                want.append(imap_try)
                last_imap = now
        for f in want:
            threading.Thread(target=f, daemon=True).start()
        time.sleep(a.interval)
    with lock:
        attempts = sorted(imap_attempts)
    return {"ok": "smtp" in found, "smtp_at": found.get("smtp"), "imap_at": found.get("imap"),
            "imap_attempts": attempts}  # fmt: skip


def watch(a: argparse.Namespace) -> dict[str, Any]:
    """A connection attempt every ``interval`` s (each in its own thread, so an attempt hanging
    on an address nobody answers does not delay the next) until the file ``--stop`` exists: how
    many went unanswered (refused, timed out, or no 220 banner), the longest outage, from the
    start of the first failed attempt to the start of the next attempt that got a banner, and the
    slowest banner (a SYN lost while an address moves is retried by TCP after 1 s: slow, not
    refused)."""
    import threading

    results: list[tuple[float, bool]] = []
    finished: set[float] = set()  # the start times of attempts that reported
    slowest = 0.0
    lock = threading.Lock()

    def attempt(t: float) -> None:
        nonlocal slowest
        t1 = time.monotonic()
        ok = _banner(a.host, a.port, a.attempt_timeout)
        with lock:
            results.append((t, ok))
            finished.add(t)
            if ok:
                slowest = max(slowest, time.monotonic() - t1)

    threads: list[tuple[float, threading.Thread]] = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < a.seconds and not (a.stop and os.path.exists(a.stop)):
        t = time.monotonic() - t0
        th = threading.Thread(target=attempt, args=(t,), daemon=True)
        th.start()
        threads.append((t, th))
        time.sleep(a.interval)
    # An attempt takes at most its connect and its banner timeouts; one still running after
    # that (and a second) counts as failed, so an outage at the very end is not left out.
    deadline = time.monotonic() + 2 * a.attempt_timeout + 1
    for _, th in threads:
        th.join(max(0.0, deadline - time.monotonic()))
    with lock:  # a copy: a late attempt must not change what is counted
        done = sorted([*results, *((t, False) for t, _ in threads if t not in finished)])
    longest, start = 0.0, None
    outages = []
    for t, ok in done:
        if not ok and start is None:
            start = t
        elif ok and start is not None:
            outages.append(round(t - start, 3))
            longest, start = max(longest, t - start), None
    if start is not None:  # still down at the end
        end = done[-1][0]
        outages.append(round(end - start, 3))
        longest = max(longest, end - start)
    failed = sum(1 for _, ok in done if not ok)
    seconds = round(time.monotonic() - t0, 3)
    return {"ok": True, "attempts": len(done), "failed": failed, "outages": outages,
            "longest_outage": round(longest, 3), "slowest_banner": round(slowest, 3),
            "seconds": seconds}  # fmt: skip


def webhook(a: argparse.Namespace) -> dict[str, Any]:
    """An operator's webhook receiver: every POST's JSON body, with the time it arrived
    (``received``, epoch seconds), appended as one line to the file ``--out``, until the file
    ``--stop`` exists. Answers 204; a body that is not JSON gets 400 and is recorded too."""
    import http.server
    import threading

    count = 0

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            nonlocal count
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            try:
                entry = {"received": time.time(), "path": self.path, "body": json.loads(body)}
                code = 204
            except ValueError:
                entry = {"received": time.time(), "path": self.path, "raw": body.decode()}
                code = 400
            with open(a.out, "a") as f:
                f.write(json.dumps(entry) + "\n")
            count += 1
            self.send_response(code)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer((a.host, a.port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    while not os.path.exists(a.stop):
        time.sleep(0.2)
    server.shutdown()
    return {"ok": True, "received": count}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python3 -m cluster.lab.clientlib")
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(s: argparse.ArgumentParser, port: int) -> None:
        s.add_argument("--host", required=True)
        s.add_argument("--port", type=int, default=port)
        s.add_argument("--ca")
        s.add_argument("--user", default="")
        s.add_argument("--password", default="")

    s = sub.add_parser("send")
    common(s, 587)
    s.add_argument("--starttls", action="store_true")
    s.add_argument("--sender", required=True)
    s.add_argument("--to", required=True)
    s.add_argument("--subject", required=True)
    s.add_argument("--header", action="append", default=[], help="'Name: value' (repeat)")
    s.add_argument("--body-bytes", type=int, default=0, help="pad the body to about this size")
    s.add_argument("--raw", default="", help="send this file as the message, as it is")
    s.set_defaults(func=send)
    for name, func in (("wait-imap", wait_imap), ("login", login)):
        s = sub.add_parser(name)
        common(s, 993)
        s.add_argument("--subject", default="")
        s.add_argument("--count", type=int, default=1)
        s.add_argument("--timeout", type=float, default=30)
        s.add_argument("--interval", type=float, default=0.1)
        s.set_defaults(func=func)
    s = sub.add_parser("http")
    s.add_argument("--url", required=True)
    s.add_argument("--host-header")
    s.add_argument("--ca")
    s.set_defaults(func=http)
    s = sub.add_parser("bulk")
    common(s, 587)
    s.add_argument("--starttls", action="store_true")
    s.add_argument("--sender", required=True)
    s.add_argument("--to", required=True, action="append", help="a mailbox (repeat for more)")
    s.add_argument("--subject", required=True)
    s.add_argument("--count", type=int, default=500)
    s.add_argument("--parallel", type=int, default=20)
    s.add_argument("--imap-host")
    s.add_argument("--imap-port", type=int, default=993)
    s.add_argument("--imap-password", help="the --to mailboxes' password (default: --password)")
    s.add_argument("--timeout", type=float, default=300)
    s.add_argument("--interval", type=float, default=0.5)
    s.set_defaults(func=bulk)
    s = sub.add_parser("stream")
    common(s, 587)
    s.add_argument("--to", default="")
    s.add_argument("--subject", required=True)
    s.add_argument("--seconds", type=float, default=30)
    s.add_argument("--rate", type=float, default=5)
    s.add_argument("--stop", default="")
    s.add_argument("--session-timeout", type=float, default=10)
    s.add_argument("--progress", default="", help="append each acknowledged subject here")
    s.set_defaults(func=stream)
    s = sub.add_parser("subjects")
    common(s, 993)
    s.add_argument("--subject", required=True)
    s.add_argument("--count", type=int, default=1)
    s.add_argument("--expect", default="", help="a JSON list: wait until all of these are there")
    s.add_argument("--folder", default="INBOX")
    s.add_argument("--timeout", type=float, default=30)
    s.add_argument("--interval", type=float, default=0.5)
    s.set_defaults(func=subjects)
    s = sub.add_parser("move")
    common(s, 993)
    s.add_argument("--subject", required=True)
    s.add_argument("--folder", default="INBOX")
    s.add_argument("--to", required=True)
    s.set_defaults(func=move)
    s = sub.add_parser("headers")
    common(s, 993)
    s.add_argument("--subject", required=True)
    s.add_argument("--folder", default="INBOX")
    s.add_argument("--count", type=int, default=1)
    s.add_argument("--timeout", type=float, default=30)
    s.add_argument("--interval", type=float, default=0.5)
    s.set_defaults(func=headers)
    s = sub.add_parser("expunge")
    common(s, 993)
    s.add_argument("--subject", required=True)
    s.set_defaults(func=expunge)
    s = sub.add_parser("probe")
    common(s, 993)
    s.add_argument("--smtp-port", type=int, default=25)
    s.add_argument("--timeout", type=float, default=60)
    s.add_argument("--interval", type=float, default=0.02)
    s.set_defaults(func=probe)
    s = sub.add_parser("watch")
    s.add_argument("--host", required=True)
    s.add_argument("--port", type=int, default=25)
    s.add_argument("--interval", type=float, default=0.05)
    s.add_argument("--attempt-timeout", type=float, default=2.0)
    s.add_argument("--seconds", type=float, default=1800)
    s.add_argument("--stop", default="")
    s.set_defaults(func=watch)
    s = sub.add_parser("webhook")
    s.add_argument("--host", default="0.0.0.0")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--stop", required=True)
    s.set_defaults(func=webhook)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        result = args.func(args)
    except (OSError, smtplib.SMTPException, imaplib.IMAP4.error, ssl.SSLError) as e:
        result = {"ok": False, "error": f"{type(e).__name__}: {e}",
                  "smtp_code": getattr(e, "smtp_code", None)}  # fmt: skip
        if isinstance(e, smtplib.SMTPRecipientsRefused):
            result["smtp_code"] = next(iter(e.recipients.values()))[0]
    print(json.dumps(result))
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
