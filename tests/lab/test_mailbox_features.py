"""For mailbox users, end to end from the client ("the internet") against the active node: spam
filed into Junk by the server's Sieve before-script (and a sender's forged spam header ignored),
ManageSieve on 4190 with STARTTLS verified by Debian's sieve-connect, a vacation reply sent once
and never to a list, a user's script on every node of both data centres, the compiler's message
for a broken script, and quota warnings at 80 and 95 % before a full mailbox is refused at RCPT
with a 452.

The same features on two bare Dovecot servers, quicker and in more detail:
tests/render/test_sieve_quota_dovecot.py.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import pytest

from cluster.lab.driver import Lab
from cluster.services import rspamd, storage

DOMAIN = "example.com"
MAIL_HOST = f"mail.{DOMAIN}"
NODES = ("dc1-svr1", "dc1-svr2", "dc2-svr1", "dc2-svr2")
# A message rspamd scores between the Junk and the reject score on its own rules alone (no
# network in the lab): an all-capitals subject with a currency sign, HTML only, a link to a bare
# IP address, no Date and no Message-ID (11.3 with rspamc on a node; 16.1 from the client,
# whose address and names resolve nowhere: cluster/lab/model.py moves the scores by that).
SPAM_SAMPLE = """\
From: "WINNER" <winner@lottery-prize.example>
To: {to}
Subject: YOU HAVE WON $1,000,000 !!! CLAIM YOUR PRIZE NOW {tag}
MIME-Version: 1.0
Content-Type: text/html; charset=utf-8

<html><body><a href="http://198.51.100.99/claim">CLICK HERE</a> to claim your FREE MONEY!!!
100% GUARANTEED.</body></html>
"""
# A vacation answer is sent at most once per sender within :days; lists get none.
VACATION = """\
require ["vacation"];
vacation :days 1 :subject "Away until Monday" :addresses ["{user}"] "I am away until Monday.";
"""
# Wait bound for a script to reach every node: the replication controller syncs on
# ManageSieve's event (in-DC p99 1.1 s, cross-DC p99 1.6 s in bench/replication.py); the sweep
# would find it within its round otherwise.
EVERY_NODE_WITHIN_S = 30


def _send(lab: Lab, vip: str, *args: str) -> dict[str, Any]:
    return lab.clientlib("send", "--host", vip, "--ca", lab.ca, *args)


def _submit(
    lab: Lab, vip: str, login: tuple[str, str], to: str, subject: str, *args: str
) -> dict[str, Any]:
    """A message from ``login`` over submission (587, STARTTLS, AUTH)."""
    auth = ("--user", login[0], "--password", login[1], "--sender", login[0])
    return _send(lab, vip, "--port", "587", "--starttls", *auth, "--to", to, "--subject",
                 subject, *args)  # fmt: skip


def _headers(lab: Lab, vip: str, login: tuple[str, str], subject: str, folder: str = "INBOX",
             count: int = 1, timeout: float = 30) -> list[dict[str, list[str]]]:  # fmt: skip
    got = lab.clientlib("headers", "--host", vip, "--ca", lab.ca, "--user", login[0],
                        "--password", login[1], "--subject", subject, "--folder", folder,
                        "--count", str(count), "--timeout", str(timeout))  # fmt: skip
    messages: list[dict[str, list[str]]] = got["messages"]
    return messages


@pytest.fixture
def sieve_connect(lab: Lab, vip: str) -> Any:
    """sieve-connect from the client to the shared IP's 4190 (``Lab.managesieve``)."""
    return lambda login, *action: lab.managesieve(vip, MAIL_HOST, login, *action)


def test_spam_is_filed_into_junk_by_rspamds_verdict_not_the_senders(
    lab: Lab, vip: str, tmp_path: Path
) -> None:
    user = lab.new_mailbox(DOMAIN, "junk")
    tag = secrets.token_hex(4)
    sample = tmp_path / "spam.eml"
    # The spammer says his message is no spam: rspamd removes his header and writes its own.
    text = f"{rspamd.SPAM_HEADER}: No\n" + SPAM_SAMPLE.format(to=user[0], tag=tag)
    sample.write_text(text.replace("\n", "\r\n"))
    sent = _send(lab, vip, "--port", "25", "--sender", "winner@lottery-prize.example",
                 "--to", user[0], "--subject", "-", "--raw", str(sample))  # fmt: skip
    assert sent["ok"], sent
    ham = f"lunch {tag}"
    sent = _send(lab, vip, "--port", "25", "--sender", "someone@example.org", "--to", user[0],
                 "--subject", ham)  # fmt: skip
    assert sent["ok"], sent
    junk = _headers(lab, vip, user, "YOU HAVE WON", folder="Junk")
    assert len(junk) == 1 and junk[0]["Subject"][0].endswith(tag), junk
    assert junk[0][rspamd.SPAM_HEADER] == ["Yes"], junk
    inbox = _headers(lab, vip, user, ham)
    assert len(inbox) == 1 and rspamd.SPAM_HEADER not in inbox[0], inbox
    assert _headers(lab, vip, user, "YOU HAVE WON", timeout=0, count=0) == []


def test_managesieve_vacation_once_per_sender_never_to_lists_and_on_every_node(
    lab: Lab, vip: str, active: str, sieve_connect: Any, tmp_path: Path
) -> None:
    user = lab.new_mailbox(DOMAIN, "away")
    sender = lab.new_mailbox(DOMAIN, "asks")
    script = tmp_path / "vacation.sieve"
    script.write_text(VACATION.format(user=user[0]))
    up = sieve_connect(user, "--localsieve", str(script), "--remotesieve", "vacation", "--upload")
    assert up.returncode == 0, up.stderr
    on = sieve_connect(user, "--remotesieve", "vacation", "--activate")
    assert on.returncode == 0, on.stderr
    listed = sieve_connect(user, "--list")
    assert listed.stdout.split("\n") == ['"vacation" ACTIVE', ""], listed

    tag = secrets.token_hex(4)
    assert _submit(lab, vip, sender, user[0], f"first {tag}")["ok"]
    reply = _headers(lab, vip, sender, "Away until Monday")
    assert len(reply) == 1, reply
    assert reply[0]["Auto-Submitted"] == ["auto-replied (vacation)"], reply
    assert reply[0]["To"] == [f"<{sender[0]}>"], reply
    # The same sender again, and a list's message from a sender never answered: both
    # delivered, neither answered (Pigeonhole logs why, per message).
    lister = lab.new_mailbox(DOMAIN, "list")
    assert _submit(lab, vip, sender, user[0], f"second {tag}")["ok"]
    assert _submit(lab, vip, lister, user[0], f"list {tag}",
                   "--header", "List-Id: <news.example.com>")["ok"]  # fmt: skip
    assert len(_headers(lab, vip, user, tag, count=3)) == 3
    log = lab.exec(active, "journalctl", "-u", "dovecot", "--no-pager", "-o", "cat",
                   "--since", "-5min").stdout  # fmt: skip
    assert f"discarded duplicate vacation response to <{sender[0]}>" in log, log[-3000:]
    list_lines = [line for line in log.splitlines() if "vacation" in line and lister[0] in line]
    assert list_lines and "list" in list_lines[0].lower(), log[-3000:]
    assert len(_headers(lab, vip, sender, "Away until Monday", count=1)) == 1
    assert _headers(lab, vip, lister, "Away until Monday", count=1, timeout=0) == []

    # The script and which one is active reach every node (dsync carries them).
    local, domain = user[0].split("@")
    home = f"{storage.VMAIL_DIR}/{domain}/{local}"

    def everywhere() -> bool:
        return all(
            lab.exec(n, "readlink", f"{home}/sieve-active.sieve", check=False).stdout.strip()
            == "sieve/vacation.sieve"  # Pigeonhole's file for the script "vacation"
            for n in NODES
        )

    lab.wait_for("the active script on all four nodes", everywhere, timeout=EVERY_NODE_WITHIN_S)


def test_a_broken_script_is_refused_with_the_compilers_message(
    lab: Lab, sieve_connect: Any, tmp_path: Path
) -> None:
    user = lab.new_mailbox(DOMAIN, "broken")
    script = tmp_path / "broken.sieve"
    script.write_text('require ["fileinto"];\nif header :contains "Subject" "x" { fileinto }\n')
    up = sieve_connect(user, "--localsieve", str(script), "--upload")
    assert up.returncode != 0
    assert "broken.sieve: line 2: error:" in up.stderr, up.stderr


def test_quota_warnings_then_a_full_mailbox_is_refused_at_rcpt_with_452(
    lab: Lab, vip: str, active: str
) -> None:
    address = f"full{secrets.token_hex(4)}@{DOMAIN}"
    password = "P" + secrets.token_hex(12)
    lab.ops("mailbox", "add", address, "--quota", "1", stdin=password + "\n")
    user = (address, password)
    limit = 1024 * 1024

    def used() -> int:
        out = lab.exec(active, "doveadm", "-f", "tab", "quota", "get", "-u", address).stdout
        rows = out.splitlines()
        table = [dict(zip(rows[0].split("\t"), r.split("\t"), strict=True)) for r in rows[1:]]
        return next(int(r["Value"]) for r in table if r["Type"] == "STORAGE") * 1024

    sent = 0
    for percent in (80, 95):
        while used() < percent / 100 * limit:
            got = _submit(lab, vip, user, address, f"fill {sent}", "--body-bytes", "60000")
            assert got["ok"], got
            sent += 1
        warning = _headers(lab, vip, user, f"Your mailbox is {percent}% full")
        assert len(warning) == 1, warning
        assert warning[0]["Auto-Submitted"] == ["auto-generated"], warning
    # Dovecot lets the message that crosses the limit in (quota_storage_grace); from then on
    # a stranger's message is refused at RCPT, temporarily (never accepted and then bounced).
    while used() < limit:
        got = _submit(lab, vip, user, address, f"fill {sent}", "--body-bytes", "60000")
        assert got["ok"], got
        sent += 1
    refused = _send(lab, vip, "--port", "25", "--sender", "someone@example.org", "--to", address,
                    "--subject", "too much", "--body-bytes", "120000")  # fmt: skip
    assert not refused["ok"] and refused["smtp_code"] == 452, refused
    assert f"4.2.2 <{address}>: Recipient address rejected: Mailbox is full" in refused["error"]


def test_moves_into_and_out_of_junk_teach_rspamd_on_every_node(
    lab: Lab, vip: str, active: str
) -> None:
    """imapsieve on the active node pipes a message moved into Junk to rspamd as spam, one moved
    back out as ham; its Valkey holds the counts, and every other node's Valkey has them too
    (replicated over the mesh as MariaDB is). ``ops status`` shows them per node."""
    user = lab.new_mailbox(DOMAIN, "learn")
    tag = secrets.token_hex(4)
    before = {n: lab.bayes(n)["learned"] for n in NODES}
    assert len({json.dumps(c, sort_keys=True) for c in before.values()}) == 1, before
    for i in range(3):
        assert _submit(lab, vip, user, user[0], f"teach {tag} {i}", "--body-bytes",
                       str(2000 + i))["ok"]  # fmt: skip
    assert len(_headers(lab, vip, user, tag, count=3)) == 3
    common = ("--host", vip, "--ca", lab.ca, "--user", user[0], "--password", user[1])
    moved = lab.clientlib("move", *common, "--subject", tag, "--to", "Junk")
    assert moved == {"ok": True, "moved": 3}, moved
    back = lab.clientlib("move", *common, "--subject", f"teach {tag} 0", "--folder", "Junk",
                         "--to", "INBOX")  # fmt: skip
    assert back == {"ok": True, "moved": 1}, back
    # Three learned as spam, then one of them as ham: rspamd moves that one between the counts.
    want = {"spam": before[active]["spam"] + 2, "ham": before[active]["ham"] + 1}
    # rspamd learns inside the IMAP command: the active node has them at once.
    assert lab.bayes(active)["learned"] == want
    for node in NODES:
        lab.wait_for(f"the learned counts on {node}",
                     lambda n=node: lab.bayes(n)["learned"] == want,
                     timeout=10, interval=0.2)  # fmt: skip
    status = lab.ops("status", check=False).stdout
    assert f"{active:<9} spam {want['spam']}, ham {want['ham']}; master" in status, status


def _queued_to(lab: Lab, host: str, recipient: str) -> list[dict[str, Any]]:
    """The queue entries of ``host`` with ``recipient`` (postqueue's JSON): the lab's internet
    has no DNS, so mail to another domain waits there, where its envelope can be read."""
    out = lab.exec(host, "postqueue", "-j").stdout
    entries = [json.loads(line) for line in out.splitlines() if line.strip()]
    return [e for e in entries if any(r["address"] == recipient for r in e["recipients"])]


def test_a_forward_to_another_domain_gets_an_srs_sender_and_spam_is_never_forwarded(
    lab: Lab, vip: str, tmp_path: Path
) -> None:
    """An alias that delivers to a mailbox here and to an address elsewhere: the copy going
    elsewhere carries an SRS sender of ours (SPF passes at the next hop) while the local copy
    keeps the original Return-Path; our own users' mail goes out as it is; a bounce to the SRS
    address goes back to the original sender; a message rspamd marked as spam is filed into
    Junk here and its forwarded copy discarded (cluster/services/srs.py)."""
    (holder,) = lab.holders(("dc1-svr1", "dc1-svr2"))
    user = lab.new_mailbox(DOMAIN, "fwd")
    tag = secrets.token_hex(4)
    outside, sender = f"away-{tag}@elsewhere.example", f"someone-{tag}@example.org"
    alias = f"team-{tag}@{DOMAIN}"
    lab.ops("alias", "add", alias, user[0], outside)
    queued: list[str] = []
    try:
        sent = _send(lab, vip, "--port", "25", "--sender", sender, "--to", alias,
                     "--subject", f"fwd {tag}")  # fmt: skip
        assert sent["ok"], sent
        local = _headers(lab, vip, user, f"fwd {tag}")
        assert local[0]["Return-Path"] == [f"<{sender}>"], local
        forwarded = lab.wait_for("the forwarded copy in the queue",
                                 lambda: _queued_to(lab, holder, outside), timeout=30)  # fmt: skip
        queued += [e["queue_id"] for e in forwarded]
        (srs_sender,) = {e["sender"] for e in forwarded}
        # SRS0=<hash>=<time>=example.org=someone-<tag>@<our domain>
        local_part, domain = sender.split("@")
        assert srs_sender.startswith("SRS0="), forwarded
        assert srs_sender.endswith(f"={domain}={local_part}@{DOMAIN}"), forwarded

        # Our own user's message to the alias: its forwarded copy keeps the sender.
        own = _submit(lab, vip, user, alias, f"own {tag}")
        assert own["ok"], own
        mine = lab.wait_for(
            "our user's copy in the queue",
            lambda: [e for e in _queued_to(lab, holder, outside) if e["sender"] == user[0]],
            timeout=30,
        )
        queued += [e["queue_id"] for e in mine]

        # A bounce to the SRS address reaches the original sender.
        bounce = _send(lab, vip, "--port", "25", "--sender", "postmaster@elsewhere.example",
                       "--to", srs_sender, "--subject", f"bounce {tag}")  # fmt: skip
        assert bounce["ok"], bounce
        back = lab.wait_for("the bounce on its way to the original sender",
                            lambda: _queued_to(lab, holder, sender), timeout=30)  # fmt: skip
        queued += [e["queue_id"] for e in back]

        # Spam: filed into Junk here, its forwarded copy discarded (the log says so).
        since = lab.exec(holder, "date", "+%Y-%m-%d %H:%M:%S").stdout.strip()
        sample = tmp_path / "spam.eml"
        sample.write_text(SPAM_SAMPLE.format(to=alias, tag=tag).replace("\n", "\r\n"))
        spam = _send(lab, vip, "--port", "25", "--sender", "winner@lottery-prize.example",
                     "--to", alias, "--subject", "-", "--raw", str(sample))  # fmt: skip
        assert spam["ok"], spam
        junk = _headers(lab, vip, user, "YOU HAVE WON", folder="Junk")
        assert junk[0]["Subject"][0].endswith(tag), junk

        def discarded() -> bool:
            log = lab.exec(holder, "journalctl", "--since", since, "-o", "cat",
                           "SYSLOG_IDENTIFIER=postfix/srscleanup/cleanup").stdout  # fmt: skip
            return any("discard" in ln and outside in ln for ln in log.splitlines())

        lab.wait_for("the forwarded spam discarded", discarded, timeout=30)
        spam_senders = [e["sender"] for e in _queued_to(lab, holder, outside)]
        assert not [s for s in spam_senders if "lottery-prize" in s], spam_senders
    finally:
        for queue_id in queued:
            lab.exec(holder, "postsuper", "-d", queue_id, check=False)
        lab.ops("alias", "del", alias)
