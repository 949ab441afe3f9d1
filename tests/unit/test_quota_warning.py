"""mailnode.quota_warning: the warning Dovecot's quota plugin runs at 80 and 95 %, its arguments
and what it hands to sendmail (a fake sendmail records it)."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path

import pytest

from mailnode import quota_warning as Q


def test_the_message_names_the_user_the_threshold_and_is_automatic() -> None:
    msg = Q.message(80, "ann@example.com", "postmaster@example.com")
    assert msg["To"] == "ann@example.com"
    assert msg["From"] == "Mail system <postmaster@example.com>"
    assert msg["Subject"] == "Your mailbox is 80% full"
    # RFC 3834: a vacation script must not answer it.
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["Message-ID"].endswith("@example.com>")
    body = msg.get_content()
    assert "ann@example.com now uses 80% of its quota" in body
    assert "refused for the time being" in body


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        ([], Q.USAGE),
        (["80", "ann@example.com"], Q.USAGE),
        (["0", "ann@example.com", "pm@example.com"], "PERCENT must be a whole number from 1"),
        (["eighty", "ann@example.com", "pm@example.com"], "PERCENT must be a whole number"),
        (["80", "ann", "pm@example.com"], "USER must be an e-mail address, got 'ann'"),
        (["80", "ann@example.com", "-f x"], "POSTMASTER must be an e-mail address"),
    ],
)
def test_bad_arguments_are_refused_with_what_is_wrong(argv: list[str], error: str) -> None:
    with pytest.raises(ValueError, match=error.replace("(", r"\(")):
        Q.parse(argv)


def test_main_queues_the_warning_through_sendmail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sendmail = tmp_path / "sendmail"
    record = tmp_path / "queued"
    sendmail.write_text(f'#!/bin/sh\necho "$@" > {record}.args\ncat > {record}.msg\n')
    sendmail.chmod(0o755)
    monkeypatch.setattr(Q, "SENDMAIL", str(sendmail))
    assert Q.main(["95", "ann@example.com", "postmaster@example.com"]) == 0
    # The envelope: from the postmaster, to the user; -i: a lone dot is no end of input.
    assert Path(f"{record}.args").read_text().split() == [
        "-i", "-f", "postmaster@example.com", "--", "ann@example.com"
    ]  # fmt: skip
    msg = email.message_from_bytes(Path(f"{record}.msg").read_bytes(), policy=email.policy.SMTP)
    assert msg["Subject"] == "Your mailbox is 95% full" and msg["To"] == "ann@example.com"
    assert Q.main(["95", "ann"]) == 2
    assert "usage: mailcluster-quota-warning" in capsys.readouterr().err
