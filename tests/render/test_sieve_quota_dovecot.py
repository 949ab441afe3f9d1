"""Sieve, ManageSieve and quotas in the plan's own dovecot.conf, on two real Dovecot 2.4 servers
in the lab's base (dovecots.py): the spam-to-Junk before-script, a user's script uploaded with
sieve-connect (Debian's ManageSieve client) and carried to the other server by dsync, the
compiler's message for a broken script, the quota warnings at 80 and 95 %, and the quota-status
policy service Postfix asks at RCPT.

What needs Postfix (a vacation reply, a forward, a 452 seen by an SMTP client) is in the lab
(tests/lab/test_mailbox_features.py).
"""

from __future__ import annotations

import imaplib
import os
import socket
import ssl
import subprocess
from collections.abc import Iterator

import dovecots
import pytest
from dovecots import PASSWORD, Dovecot, EventLog, wait_for

from cluster.services import dovecot, rspamd

SPAM = f"{rspamd.SPAM_HEADER}: Yes\r\n"
QUOTA_USER = "q@example.com"
LEARNER = "l1@example.com"
USERS = ["s1@example.com", "s2@example.com", "s3@example.com", "s4@example.com", LEARNER,
         QUOTA_USER]  # fmt: skip
# 10 kB: a 1.5 kB message is 15 % of it.
QUOTA_BYTES = 10_000


@pytest.fixture(scope="module")
def two() -> Iterator[tuple[Dovecot, Dovecot, EventLog]]:
    with dovecots.home() as home:
        events = EventLog()
        fields = {QUOTA_USER: f"userdb_quota_storage_size={QUOTA_BYTES}"}
        a = Dovecot("A", home / "A", events.url, USERS, fields=fields)
        b = Dovecot("B", home / "B", events.url, USERS, fields=fields)
        a.start()
        b.start()
        try:
            yield a, b, events
        finally:
            a.stop()
            b.stop()
            events.close()


def sieve_connect(
    server: Dovecot, user: str, *action: str, password: str = PASSWORD
) -> subprocess.CompletedProcess[str]:
    """Debian's sieve-connect against ``server`` (STARTTLS; the test certificate is for
    127.0.0.1 by address, which sieve-connect cannot check: the lab test checks the name)."""
    read, write = os.pipe()
    os.write(write, (password + "\n").encode())
    os.close(write)
    try:
        return subprocess.run(
            ["sieve-connect", "--server", "127.0.0.1", "--port", str(server.sieve_port),
             "--user", user, "--passwordfd", str(read), "--notlsverify", *action],
            pass_fds=(read,), capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    finally:
        os.close(read)


def test_spam_goes_to_junk_and_the_users_script_never_sees_it(
    two: tuple[Dovecot, Dovecot, EventLog], tmp_path_factory: pytest.TempPathFactory
) -> None:
    a, _, _ = two
    user = "s1@example.com"
    script = tmp_path_factory.mktemp("sieve") / "all.sieve"
    # The user's own script files everything into "Filtered": spam must not get there.
    script.write_text('require ["fileinto", "mailbox"];\nfileinto :create "Filtered";\n')
    up = sieve_connect(a, user, "--localsieve", str(script), "--upload")
    assert up.returncode == 0, up.stderr
    act = sieve_connect(a, user, "--remotesieve", "all.sieve", "--activate")
    assert act.returncode == 0, act.stderr
    a.deliver(user, "spam one", headers=SPAM)
    a.deliver(user, "ham one")
    # rspamd removes a sender's copy of its header, so only its own "Yes" is there; anything
    # else is no verdict of spam.
    a.deliver(user, "not spam", headers=f"{rspamd.SPAM_HEADER}: No\r\n")
    assert a.subjects(user, "Junk") == {"spam one"}
    assert a.subjects(user, "Filtered") == {"ham one", "not spam"}
    assert a.subjects(user) == set()


def test_without_a_user_script_spam_still_goes_to_junk(
    two: tuple[Dovecot, Dovecot, EventLog],
) -> None:
    a, _, _ = two
    user = "s2@example.com"
    a.deliver(user, "spam two", headers=SPAM)
    a.deliver(user, "ham two")
    assert a.subjects(user, "Junk") == {"spam two"}
    assert a.subjects(user) == {"ham two"}


def test_a_script_uploaded_on_one_node_runs_on_the_other_after_a_sync(
    two: tuple[Dovecot, Dovecot, EventLog], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """ManageSieve raises the event the replication controller syncs on (dovecot.conf's filter
    lets it through, with the user), and dsync carries the script and which one is active."""
    a, b, events = two
    user = "s3@example.com"
    script = tmp_path_factory.mktemp("sieve") / "work.sieve"
    script.write_text(
        'require ["fileinto", "mailbox"];\n'
        'if header :contains "Subject" "report" { fileinto :create "Work"; }\n'
    )
    events.events.clear()
    assert sieve_connect(a, user, "--localsieve", str(script), "--upload").returncode == 0
    assert sieve_connect(a, user, "--remotesieve", "work.sieve", "--activate").returncode == 0
    wait_for(
        lambda: {e["fields"].get("cmd_name") for e in events.events
                 if e["event"] == "managesieve_command_finished"
                 and e["fields"].get("user") == user} >= {"PUTSCRIPT", "SETACTIVE"},
        "ManageSieve's events with the user",
        timeout=5,
    )  # fmt: skip
    a.doveadm("sync", "-u", user, b.target)
    listed = sieve_connect(b, user, "--list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split("\n") == ['"work.sieve" ACTIVE', ""], listed.stdout
    b.deliver(user, "monthly report")
    b.deliver(user, "lunch")
    assert b.subjects(user, "Work") == {"monthly report"}
    assert b.subjects(user) == {"lunch"}


def test_a_script_that_does_not_compile_is_refused_with_the_compilers_message(
    two: tuple[Dovecot, Dovecot, EventLog], tmp_path_factory: pytest.TempPathFactory
) -> None:
    a, _, _ = two
    user = "s4@example.com"
    script = tmp_path_factory.mktemp("sieve") / "broken.sieve"
    script.write_text('require ["fileinto"];\nfileinto "Junk"\n')  # no semicolon
    up = sieve_connect(a, user, "--localsieve", str(script), "--upload")
    assert up.returncode != 0
    # Pigeonhole's own words, through ManageSieve's NO answer.
    assert "broken.sieve: line 3: error: expected end of command ';'" in up.stderr, up.stderr
    assert "broken.sieve" not in sieve_connect(a, user, "--list").stdout


def _policy(server: Dovecot, recipient: str, size: int) -> str:
    """One Postfix policy request (RCPT stage) to the quota-status service: its action."""
    request = (f"request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n"
               f"recipient={recipient}\nsize={size}\n\n")  # fmt: skip
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(server.lmtp_socket.parent / "quota-status"))
        s.sendall(request.encode())
        answer = b""
        while not answer.endswith(b"\n\n"):
            chunk = s.recv(4096)
            assert chunk, answer
            answer += chunk
    return answer.decode().strip().removeprefix("action=")


def test_quota_warnings_at_80_and_95_percent_and_a_full_mailbox_refused_at_rcpt(
    two: tuple[Dovecot, Dovecot, EventLog],
) -> None:
    a, b, _ = two
    body = "x" * 1400 + "\r\n"

    def warnings(server: Dovecot) -> list[str]:
        log = server.quota_warnings
        return log.read_text().splitlines() if log.exists() else []

    def used() -> int:
        """Bytes used, from the count driver (doveadm prints kB)."""
        out = a.doveadm("-f", "tab", "quota", "get", "-u", QUOTA_USER).stdout.splitlines()
        rows = [dict(zip(out[0].split("\t"), row.split("\t"), strict=True)) for row in out[1:]]
        return next(int(r["Value"]) for r in rows if r["Type"] == "STORAGE") * 1024

    assert _policy(a, QUOTA_USER, 1000) == "DUNNO"
    # Not a mailbox (an alias, another domain): Postfix decides, not the quota service.
    assert _policy(a, "nobody@example.com", 1000) == "DUNNO"
    expected: list[str] = []
    sent = 0
    for percent in (80, 95):
        # Fill until the usage crosses the threshold; the warning runs once, as it does.
        while used() < percent / 100 * QUOTA_BYTES:
            assert warnings(a) == expected
            a.deliver(QUOTA_USER, f"fill {sent}", body=body)
            sent += 1
        expected.append(f"{percent} {QUOTA_USER} postmaster@example.com")
        wait_for(lambda: warnings(a) == expected, f"the {percent} % warning", timeout=5)
    # A message that would not fit: refused with the temporary 452 (never bounced later).
    assert _policy(a, QUOTA_USER, QUOTA_BYTES) == dovecot.QUOTA_STATUS_OVERQUOTA
    # The other server receives the same mail by dsync: no warning there (the user had it).
    a.doveadm("sync", "-u", QUOTA_USER, b.target)
    assert len(b.subjects(QUOTA_USER)) == sent
    assert warnings(b) == []
    assert used() >= 0.95 * QUOTA_BYTES


def test_moves_into_and_out_of_junk_teach_rspamd_and_the_trash_does_not(
    two: tuple[Dovecot, Dovecot, EventLog],
) -> None:
    """imapsieve runs the report scripts on IMAP's MOVE and COPY: into Junk pipes the message
    to the learn program as spam, out of Junk (not into the Trash) as ham. A delivery that the
    before-script files into Junk teaches nothing (it is rspamd's own verdict)."""
    a, _, _ = two
    user = LEARNER
    for subject in ("learn one", "learn two", "learn three"):
        a.deliver(user, subject)
    a.deliver(user, "filed by rspamd", headers=SPAM)

    def learned() -> list[str]:
        return a.learned.read_text().splitlines()

    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    imap = imaplib.IMAP4("127.0.0.1", a.imap_port)
    imap.starttls(ctx)
    imap.login(user, PASSWORD)

    def move(subject: str, source: str, target: str) -> None:
        """What a mail program does (RFC 6851 MOVE, by UID)."""
        imap.select(source)
        typ, data = imap.uid("SEARCH", "SUBJECT", f'"{subject}"')
        assert typ == "OK" and data[0], (subject, source)
        typ, answer = imap.uid("MOVE", data[0].decode(), target)
        assert typ == "OK", answer

    move("learn one", "INBOX", "Junk")
    move("learn two", "INBOX", "Junk")
    try:
        wait_for(lambda: learned() == ["spam learn one", "spam learn two"], "two spam", 5)
    except AssertionError as e:
        lines = [x for x in a.log_text().splitlines() if "sieve" in x or "rror" in x]
        raise AssertionError(f"{e}: {learned()}\n" + "\n".join(lines[-10:])) from None
    move("learn one", "Junk", "INBOX")
    wait_for(lambda: learned()[2:] == ["ham learn one"], "one ham", timeout=5)
    move("learn two", "Junk", "Trash")
    move("filed by rspamd", "Junk", "Trash")
    # A COPY teaches too (a client that copies, then deletes).
    imap.select("INBOX")
    _, data = imap.search(None, "SUBJECT", '"learn three"')
    assert imap.copy(data[0].decode(), "Junk")[0] == "OK"
    wait_for(lambda: learned()[3:] == ["spam learn three"], "the copy", timeout=5)
    imap.logout()
    # The pipe runs inside the IMAP command (the move waits for it): the moves to the Trash
    # had their chance to teach before the COPY's line was written.
    assert learned() == ["spam learn one", "spam learn two", "ham learn one", "spam learn three"]
