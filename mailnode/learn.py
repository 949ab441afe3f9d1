"""mailcluster-learn spam|ham: teach rspamd one message, read on stdin.

Dovecot's imapsieve runs it (through the ``vnd.dovecot.pipe`` Sieve extension, as the mail uid)
when a user moves or copies a message into Junk (spam) or out of Junk into anything but the
Trash (ham): services/dovecot.py and the report-*.sieve scripts. It posts the message to rspamd's
controller on loopback with the controller's password, from a 0600 file of the mail uid; rspamd
writes what it learned to the node's Valkey, which replicates to the other nodes
(mailnode/bayes.py).

A message rspamd has learned already in that class is no error. Any failure exits non-zero
with one line on stderr (Dovecot logs it); the user's move itself never fails for it.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

CONTROLLER = "http://127.0.0.1:11334"
PASSWORD_FILE = "/etc/mailcluster/secrets/rspamd-controller"
PATHS = {"spam": "/learnspam", "ham": "/learnham"}
# Largest message sent (rspamd's own limit is 50 MB; a larger one teaches nothing more).
MAX_BYTES = 20 * 1024 * 1024
TIMEOUT_S = 8  # under Dovecot's sieve_pipe_exec_timeout (10 s)


def request(
    kind: str, message: bytes, password: str, base: str = CONTROLLER
) -> urllib.request.Request:
    return urllib.request.Request(
        base + PATHS[kind],
        data=message[:MAX_BYTES],
        method="POST",
        headers={"Password": password, "Content-Type": "message/rfc822"},
    )


def outcome(status: int, body: bytes) -> tuple[bool, str]:
    """(ok, what happened) from rspamd's answer: 200 learned; 208 "already learned" (its
    answer for a message this class has) is fine too."""
    try:
        text = json.loads(body or b"{}")
    except ValueError:
        text = {}
    if status == 200 and text.get("success", True):
        return True, "learned"
    error = str(text.get("error", body[:200].decode(errors="replace")))
    if status == 208 or "already learned" in error:
        return True, "already learned"
    return False, f"HTTP {status}: {error}"


def learn(kind: str, message: bytes, password: str, base: str = CONTROLLER) -> tuple[bool, str]:
    try:
        req = request(kind, message, password, base)
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as answer:
            return outcome(answer.status, answer.read())
    except urllib.error.HTTPError as e:
        return outcome(e.code, e.read())
    except OSError as e:
        return False, f"rspamd's controller at {base}: {e}"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] not in PATHS:
        print("usage: mailcluster-learn spam|ham < message", file=sys.stderr)
        return 2
    try:
        password = Path(PASSWORD_FILE).read_text().strip()
    except OSError as e:
        print(f"mailcluster-learn: {e}", file=sys.stderr)
        return 1
    ok, what = learn(args[0], sys.stdin.buffer.read(), password)
    if not ok:
        print(f"mailcluster-learn {args[0]}: {what}", file=sys.stderr)
        return 1
    print(what)  # for an administrator at a shell ("learned", "already learned")
    return 0
