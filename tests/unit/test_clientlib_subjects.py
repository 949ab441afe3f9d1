"""The lab client's mail reader (``clientlib subjects``), which every drill's "nothing lost"
rests on: it waits for the expected messages, not for a count, and it sees a message delivered
twice. An IMAP server that fills up over three polls stands in for the lab's Dovecot."""

from __future__ import annotations

import argparse
import json
from typing import Any

import pytest

from cluster.lab import clientlib


class FakeConn:
    def logout(self) -> None:
        pass


def run(monkeypatch: pytest.MonkeyPatch, polls: list[list[str]], **args: Any) -> dict[str, Any]:
    """``subjects`` against an INBOX that holds ``polls[i]`` at the i-th poll (the last one
    from then on)."""
    seen: list[int] = []

    def fake_subjects(conn: object, prefix: str, folder: str) -> list[str]:
        assert folder == "INBOX"
        seen.append(1)
        return polls[min(len(seen), len(polls)) - 1]

    monkeypatch.setattr(clientlib, "_imap", lambda a: FakeConn())
    monkeypatch.setattr(clientlib, "_subjects", fake_subjects)
    ns = argparse.Namespace(
        subject="s", count=1, expect="", folder="INBOX", timeout=5, interval=0.0
    )
    for key, value in args.items():
        setattr(ns, key, value)
    out = clientlib.subjects(ns)
    out["polls"] = len(seen)
    return out


def test_it_waits_for_every_expected_message_not_for_a_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Poll 1 has two messages, one of them never acknowledged ("s x"): a count of two would
    # stop there while "s 2" is still on its way.
    polls = [["s 1", "s x"], ["s 1", "s x"], ["s 1", "s x", "s 2"]]
    by_count = run(monkeypatch, polls, count=2)
    assert by_count["polls"] == 1 and by_count["ok"]
    expected = run(monkeypatch, polls, expect=json.dumps(["s 1", "s 2"]))
    assert expected["polls"] == 3 and expected["ok"]
    assert expected["subjects"] == ["s 1", "s 2", "s x"]


def test_a_message_delivered_twice_is_counted_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    out = run(monkeypatch, [["s 1", "s 2", "s 1", "s 1"]], expect=json.dumps(["s 1", "s 2"]))
    assert out["subjects"] == ["s 1", "s 2"] and out["copies"] == {"s 1": 3}


def test_a_missing_expected_message_is_not_ok(monkeypatch: pytest.MonkeyPatch) -> None:
    out = run(monkeypatch, [["s 1"]], expect=json.dumps(["s 1", "s 2"]), timeout=0.05)
    assert not out["ok"] and out["subjects"] == ["s 1"] and out["copies"] == {}


def test_wait_imap_and_bulk_without_a_folder_read_the_inbox(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``wait-imap`` and ``bulk`` share this wait with a namespace that has no --folder."""
    monkeypatch.setattr(clientlib, "_imap", lambda a: FakeConn())
    monkeypatch.setattr(clientlib, "_subjects", lambda conn, prefix, folder: [folder])
    ns = argparse.Namespace(subject="s", count=1, timeout=5, interval=0.0)
    assert clientlib.subjects(ns)["subjects"] == ["INBOX"]
