"""mailcluster-quota-warning PERCENT USER POSTMASTER: tell USER their mailbox is PERCENT full.

Dovecot's quota plugin runs it (``service quota-warning`` in dovecot.conf, as the mail uid) once
when a delivery or an IMAP save takes the mailbox over one of the thresholds (80 and 95 %); a
sync from another node never does (the user was warned where the mail arrived). The message is
queued through Postfix's ``sendmail``, so it is signed, delivered and replicated as any mail is.
It says ``Auto-Submitted: auto-generated`` (RFC 3834): no vacation script answers it.

At 95 % the user still has room for it; over 100 % Postfix refuses new mail at RCPT with a 452
(Dovecot's quota-status service), so senders retry while the user makes room.
"""

from __future__ import annotations

import email.message
import email.utils
import re
import subprocess
import sys

SENDMAIL = "/usr/sbin/sendmail"
# What Dovecot passes as USER: a full address (its usernames are the mailbox addresses).
_ADDRESS = re.compile(r"^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,63}$")
USAGE = "usage: mailcluster-quota-warning PERCENT USER POSTMASTER"


def message(percent: int, user: str, postmaster: str) -> email.message.EmailMessage:
    """The warning for ``user`` at ``percent`` % of their quota."""
    msg = email.message.EmailMessage()
    msg["From"] = email.utils.formataddr(("Mail system", postmaster))
    msg["To"] = user
    msg["Subject"] = f"Your mailbox is {percent}% full"
    msg["Date"] = email.utils.formatdate(localtime=False)
    msg["Message-ID"] = email.utils.make_msgid(domain=postmaster.rsplit("@", 1)[1])
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(
        f"Your mailbox {user} now uses {percent}% of its quota.\n\n"
        "When it is full, new mail for you is refused for the time being and its senders'\n"
        "servers try again later. Delete messages you no longer need (and empty the Trash),\n"
        "or ask your administrator for a larger quota.\n"
    )
    return msg


def parse(argv: list[str]) -> tuple[int, str, str]:
    """(percent, user, postmaster) from the arguments, or ValueError saying what is wrong."""
    if len(argv) != 3:
        raise ValueError(USAGE)
    percent_text, user, postmaster = argv
    if not percent_text.isdigit() or not 1 <= int(percent_text) <= 100:
        raise ValueError(f"PERCENT must be a whole number from 1 to 100, got {percent_text!r}")
    for name, address in (("USER", user), ("POSTMASTER", postmaster)):
        if not _ADDRESS.match(address):
            raise ValueError(f"{name} must be an e-mail address, got {address!r}")
    return int(percent_text), user, postmaster


def send(msg: email.message.EmailMessage, sender: str, recipient: str) -> None:
    """Queue ``msg`` with Postfix's sendmail (-i: a line with one dot is no end of input)."""
    subprocess.run(
        [SENDMAIL, "-i", "-f", sender, "--", recipient],
        input=msg.as_bytes(),
        check=True,
        timeout=60,
    )


def main(argv: list[str] | None = None) -> int:
    try:
        percent, user, postmaster = parse(sys.argv[1:] if argv is None else argv)
    except ValueError as exc:
        print(f"mailcluster-quota-warning: {exc}", file=sys.stderr)
        return 2
    send(message(percent, user, postmaster), postmaster, user)
    return 0
