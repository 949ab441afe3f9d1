"""A user and an admin in a real browser: Debian's headless chromium in the client ("the
internet"), driven by selenium (cluster/lab/browser.py), at https://mail.example.com/ with the
certificate checked against the lab's CA. In Roundcube a user sees the mailbox's quota, makes a
folder, a filter into it and a vacation reply; mail from a second user is then filed by the
filter and answered once. An admin logs in to Postfix Admin and sees the domain list.

The same Sieve features without a browser (scripts uploaded with sieve-connect):
tests/lab/test_mailbox_features.py.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

from cluster.lab.driver import Lab

DOMAIN = "example.com"
MAIL_HOST = f"mail.{DOMAIN}"
NODES = ("dc1-svr1", "dc1-svr2", "dc2-svr1", "dc2-svr2")
FOLDER = "Invoices"
QUOTA_MB = 50


def _submit(lab: Lab, vip: str, login: tuple[str, str], to: str, subject: str) -> dict[str, Any]:
    """A message from ``login`` over submission (587, STARTTLS, AUTH)."""
    return lab.clientlib("send", "--host", vip, "--ca", lab.ca, "--port", "587", "--starttls",
                         "--user", login[0], "--password", login[1], "--sender", login[0],
                         "--to", to, "--subject", subject)  # fmt: skip


def _headers(lab: Lab, vip: str, login: tuple[str, str], subject: str, folder: str = "INBOX",
             count: int = 1, timeout: float = 30) -> list[dict[str, list[str]]]:  # fmt: skip
    got = lab.clientlib("headers", "--host", vip, "--ca", lab.ca, "--user", login[0],
                        "--password", login[1], "--subject", subject, "--folder", folder,
                        "--count", str(count), "--timeout", str(timeout))  # fmt: skip
    messages: list[dict[str, list[str]]] = got["messages"]
    return messages


def test_a_filter_and_a_vacation_made_in_roundcube_file_mail_and_answer_once(
    lab: Lab, vip: str, active: str
) -> None:
    # With a limit (50 MB), which Roundcube shows.
    user = (f"web{secrets.token_hex(4)}@{DOMAIN}", "P" + secrets.token_hex(12))
    lab.ops("mailbox", "add", user[0], "--quota", str(QUOTA_MB), stdin=user[1] + "\n")
    sender = lab.new_mailbox(DOMAIN, "asks")
    tag = secrets.token_hex(4)
    away = f"Out of office {tag}"
    made = lab.browser(vip, MAIL_HOST, "roundcube-sieve", "--user", user[0], "--folder", FOLDER,
                       "--filter-name", "Invoices to their folder", "--contains", "invoice",
                       "--vacation-subject", away, "--vacation-body", "Back on Monday.",
                       password=user[1])  # fmt: skip
    assert made["ok"], made
    print(f"roundcube in the browser: {made['seconds']} s, steps {made['steps']}")
    print(f"roundcube's quota display: {made['quota']!r}")
    # The form started with the user's address (managesieve_vacation_addresses_init).
    assert made["vacation_addresses"] == [user[0]], made
    # The mail view shows the mailbox's usage against its limit ("Disk usage: 0 B / 50 MB (0%)").
    assert re.fullmatch(rf".+: [\d.,]+ ?[KMGT]?B / {QUOTA_MB} MB \(\d+%\)", made["quota"]), made
    # Roundcube keeps the filter and the vacation in one script, "roundcube", made active.
    listed = lab.managesieve(vip, MAIL_HOST, user, "--list")
    assert listed.stdout.split("\n") == ['"roundcube" ACTIVE', ""], listed

    for subject in (f"Your invoice {tag}", f"lunch {tag}", f"lunch again {tag}"):
        sent = _submit(lab, vip, sender, user[0], subject)
        assert sent["ok"], sent
    filed = _headers(lab, vip, user, tag, folder=FOLDER)
    assert [m["Subject"] for m in filed] == [[f"Your invoice {tag}"]], filed
    inbox = _headers(lab, vip, user, tag, count=2)
    assert sorted(m["Subject"][0] for m in inbox) == sorted([f"lunch {tag}", f"lunch again {tag}"])
    assert _headers(lab, vip, user, "invoice", count=0, timeout=0) == []  # filed, not kept
    reply = _headers(lab, vip, sender, away)
    assert len(reply) == 1, reply
    assert reply[0]["Auto-Submitted"] == ["auto-replied (vacation)"], reply
    assert reply[0]["To"] == [f"<{sender[0]}>"], reply
    # The second and the third message were delivered (above) and not answered: Pigeonhole
    # logged why, so no second reply is on its way either. (Polled: the log line reaches the
    # journal through Dovecot's log process, which may trail the delivery a little.)
    duplicate = f"discarded duplicate vacation response to <{sender[0]}>"

    def duplicates() -> str:
        log = lab.exec(active, "journalctl", "-u", "dovecot", "--no-pager", "-o", "cat",
                       "--since", "-5min").stdout  # fmt: skip
        return log if log.count(duplicate) >= 2 else ""

    log = lab.wait_for("two discarded vacation responses in Dovecot's log", duplicates, 10)
    assert log.count(duplicate) == 2, log[-3000:]
    assert len(_headers(lab, vip, sender, away, timeout=0)) == 1


def test_an_admin_logs_in_to_postfix_admin_and_sees_the_domains(lab: Lab, vip: str) -> None:
    admin = f"admin{secrets.token_hex(4)}@{DOMAIN}"
    password = "Good" + secrets.token_hex(8) + "42"
    lab.ops("admin", "add", admin, stdin=password + "\n")
    got = lab.browser(vip, MAIL_HOST, "postfixadmin-login", "--user", admin, "--expect", DOMAIN,
                      password=password)  # fmt: skip
    assert got["ok"], got
    print(f"postfix admin in the browser: {got['seconds']} s, steps {got['steps']}")
    assert got["after_login"].rstrip().endswith(f"Logged in as {admin}"), got
    assert DOMAIN in got["domains"].split(), got
