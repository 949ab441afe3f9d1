"""mailnode.mysql.Session against a stand-in for the ``mariadb`` client (batch mode on a pipe:
rows tab-separated, an SQL error on stderr and the end of the process, as the real client does;
tests/render/test_bans_db.py runs the real one)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from mailnode.mysql import CLIENT_FLAGS, STOP_WAIT_S, DbError, Session

FAKE_CLIENT = r"""
import sys, time
open(sys.argv[1], "a").write("started\n")
assert sys.argv[2:] == FLAGS, sys.argv
for line in sys.stdin:
    statement = line.strip().rstrip(";")
    if statement.startswith("SELECT '"):
        print(statement[len("SELECT '"):-1], flush=True)
    elif statement == "SELECT 1, 'two words'":
        print("1\ttwo words", flush=True)
    elif statement == "SELECT nothing":
        pass
    elif statement == "HANG":
        time.sleep(30)
    else:
        print("--------------\n" + statement + "\n--------------\n", file=sys.stderr)
        print("ERROR 1064 (42000) at line 3: You have an error in your SQL syntax", file=sys.stderr)
        sys.exit(1)
"""


@pytest.fixture
def client(tmp_path: Path) -> tuple[list[str], Path]:
    script = tmp_path / "fake_mariadb.py"
    script.write_text(f"FLAGS = {list(CLIENT_FLAGS)!r}\n{FAKE_CLIENT}")
    starts = tmp_path / "starts"
    return [sys.executable, str(script), str(starts)], starts


def test_one_client_answers_many_queries(client: tuple[list[str], Path]) -> None:
    argv, starts = client
    session = Session(argv)
    try:
        assert session.query("SELECT 1, 'two words';") == [["1", "two words"]]
        assert session.query("SELECT nothing") == []
        assert session.query("SELECT 1, 'two words'") == [["1", "two words"]]
    finally:
        session.close()
    assert starts.read_text() == "started\n"


def test_an_sql_error_is_reported_and_the_next_query_starts_a_new_client(
    client: tuple[list[str], Path],
) -> None:
    argv, starts = client
    session = Session(argv)
    try:
        with pytest.raises(DbError) as err:
            session.query("SELEKT 1")
        assert str(err.value).endswith(
            "the client ended; ERROR 1064 (42000) at line 3: You have an error in your SQL syntax"
        )
        assert session.query("SELECT 1, 'two words'") == [["1", "two words"]]
    finally:
        session.close()
    assert starts.read_text() == "started\nstarted\n"


def test_no_answer_within_the_timeout_ends_the_client(client: tuple[list[str], Path]) -> None:
    argv, _ = client
    session = Session(argv, timeout_s=0.5)
    t0 = time.monotonic()
    try:
        with pytest.raises(DbError, match=r"no answer within 0\.5 s"):
            session.query("HANG")
    finally:
        session.close()
    # The timeout, plus the wait before a hung client is killed, plus 1 s for the machine.
    assert time.monotonic() - t0 < 0.5 + STOP_WAIT_S + 1


def test_a_missing_client_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DbError, match="does not start"):
        Session([str(tmp_path / "no-such-client")]).query("SELECT 1")
