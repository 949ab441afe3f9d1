"""mailnode.bayes: Valkey follows the database's replication source (a fake Valkey speaking
RESP on a real socket), the learned counts, and the learn program against a fake controller."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from mailnode import bayes as B
from mailnode import learn as L

MESH = {"10.0.1.12": "198.19.10.2", "198.19.10.2": "198.19.10.2", "198.19.10.1": "198.19.10.1"}


class FakeValkey:
    """A RESP server on loopback with one password, INFO replication, REPLICAOF and HGET."""

    def __init__(self, password: str) -> None:
        self.password = password
        self.source = ""
        self.hashes: dict[str, dict[str, str]] = {}
        self.commands: list[list[str]] = []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._client, args=(conn,), daemon=True).start()

    def _client(self, conn: socket.socket) -> None:
        f = conn.makefile("rb")
        authed = False
        while True:
            head = f.readline()
            if not head:
                return
            n = int(head[1:])
            args = []
            for _ in range(n):
                size = int(f.readline()[1:])
                args.append(f.read(size + 2)[:-2].decode())
            self.commands.append(args)
            cmd = args[0].upper()
            if cmd == "AUTH":
                authed = args[1] == self.password
                conn.sendall(b"+OK\r\n" if authed else b"-WRONGPASS invalid password\r\n")
            elif not authed:
                conn.sendall(b"-NOAUTH Authentication required.\r\n")
            elif cmd == "INFO":
                role = (f"role:slave\r\nmaster_host:{self.source}\r\nmaster_link_status:up"
                        if self.source else "role:master")  # fmt: skip
                body = f"# Replication\r\n{role}\r\nconnected_slaves:0\r\n".encode()
                conn.sendall(b"$%d\r\n%s\r\n" % (len(body), body))
            elif cmd == "REPLICAOF":
                self.source = "" if args[1:] == ["NO", "ONE"] else args[1]
                conn.sendall(b"+OK\r\n")
            elif cmd == "HGET":
                value = self.hashes.get(args[1], {}).get(args[2])
                if value is None:
                    conn.sendall(b"$-1\r\n")
                else:
                    conn.sendall(b"$%d\r\n%s\r\n" % (len(value), value.encode()))

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def valkey(tmp_path: Path) -> Iterator[tuple[FakeValkey, B.Settings]]:
    fake = FakeValkey("s3cret")
    (tmp_path / "pw").write_text("s3cret\n")
    settings = B.Settings("127.0.0.1", fake.port, str(tmp_path / "pw"), ["true"], MESH)
    yield fake, settings
    fake.close()


def replica_of(host: str) -> dict[str, Any]:
    return {"replication": {"configured": True, "master_host": host, "io_running": "Yes"}}


# As ``mailcluster-role status --json`` says it (the parts read here).
MASTER = {"db": {"read_only": False}, "replication": {"configured": False, "master_host": ""}}


def test_resp_encoding_is_an_array_of_bulk_strings() -> None:
    assert B.encode("AUTH", "pä") == b"*2\r\n$4\r\nAUTH\r\n$3\r\np\xc3\xa4\r\n"


def test_the_source_follows_mariadbs_mapped_to_the_mesh() -> None:
    # The DC peer's private (VPC) address: Valkey goes over its mesh address instead.
    assert B.wanted_source(replica_of("10.0.1.12"), MESH) == (True, "198.19.10.2")
    assert B.wanted_source(replica_of("198.19.10.1"), MESH) == (True, "198.19.10.1")
    assert B.wanted_source(MASTER, MESH) == (True, "")
    # Read-only without a source (between roles), or no answer: nothing is decided.
    between = {"db": {"read_only": True}, "replication": {"configured": False}}
    assert B.wanted_source(between, MESH) == (False, "")
    assert B.wanted_source({"db": {"read_only": None}}, MESH) == (False, "")  # DB down
    assert B.wanted_source({}, MESH) == (False, "")
    with pytest.raises(ValueError, match=r"203\.0\.113\.9, which is no node of the cluster"):
        B.wanted_source(replica_of("203.0.113.9"), MESH)


def test_follow_sends_replicaof_only_when_the_source_changes(
    valkey: tuple[FakeValkey, B.Settings],
) -> None:
    fake, settings = valkey
    conn = B.Valkey(settings)
    try:
        assert B.follow(settings, conn, replica_of("10.0.1.12"), 6379) == (
            "valkey: replica of 198.19.10.2"
        )
        assert fake.commands[-1] == ["REPLICAOF", "198.19.10.2", "6379"]
        sent = len(fake.commands)
        # Again: already so, nothing but the INFO.
        assert B.follow(settings, conn, replica_of("10.0.1.12"), 6379) == ""
        assert [c[0] for c in fake.commands[sent:]] == ["INFO"]
        # Promoted: a master.
        assert B.follow(settings, conn, MASTER, 6379) == "valkey: master"
        assert fake.commands[-1] == ["REPLICAOF", "NO", "ONE"] and fake.source == ""
        # The database does not answer: Valkey stays as it is.
        sent = len(fake.commands)
        assert B.follow(settings, conn, {}, 6379) == ""
        assert fake.commands[sent:] == []
    finally:
        conn.close()
    # The password went over the socket as AUTH, first.
    assert fake.commands[0] == ["AUTH", "s3cret"]


def test_a_wrong_password_is_an_error(valkey: tuple[FakeValkey, B.Settings],
                                      tmp_path: Path) -> None:  # fmt: skip
    _, settings = valkey
    (tmp_path / "pw").write_text("wrong\n")
    with pytest.raises(B.ValkeyError, match="WRONGPASS"):
        B.Valkey(settings)


def test_status_reports_the_learned_counts_and_the_source(
    valkey: tuple[FakeValkey, B.Settings],
) -> None:
    fake, settings = valkey
    fake.hashes = {"RS": {"version": "2", "learns_spam": "7"}}
    fake.source = "198.19.10.1"
    conn = B.Valkey(settings)
    try:
        assert B.status(conn) == {"learned": {"spam": 7, "ham": 0}, "role": "replica",
                                  "source": "198.19.10.1", "link": "up"}  # fmt: skip
    finally:
        conn.close()


class Controller:
    """rspamd's controller as the learn program meets it: a password and its answers."""

    def __init__(self, answer: tuple[int, dict[str, Any]]) -> None:
        self.answer = answer
        self.seen: list[tuple[str, str, bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.seen.append((self.path, self.headers.get("Password", ""), body))
                code, data = outer.answer
                raw = json.dumps(data).encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ((200, {"success": True}), (True, "learned")),
        ((208, {"error": "<x@y> has been already learned as spam, ignore it"}),
         (True, "already learned")),
        ((403, {"error": "Unauthorized"}), (False, "HTTP 403: Unauthorized")),
    ],
)  # fmt: skip
def test_learn_posts_the_message_with_the_password(
    answer: tuple[int, dict[str, Any]], expected: tuple[bool, str]
) -> None:
    controller = Controller(answer)
    try:
        assert L.learn("spam", b"Subject: x\r\n\r\nbody\r\n", "pw", controller.url) == expected
        assert L.learn("ham", b"Subject: y\r\n\r\n", "pw", controller.url)[0] == expected[0]
    finally:
        controller.close()
    assert [(p, pw) for p, pw, _ in controller.seen] == [("/learnspam", "pw"), ("/learnham", "pw")]
    assert controller.seen[0][2] == b"Subject: x\r\n\r\nbody\r\n"


def test_learn_without_a_controller_says_where_it_looked() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ok, why = L.learn("spam", b"x", "pw", f"http://127.0.0.1:{port}")
    assert not ok and f"rspamd's controller at http://127.0.0.1:{port}" in why


def test_learn_refuses_anything_but_spam_or_ham(capsys: pytest.CaptureFixture[str]) -> None:
    assert L.main(["junk"]) == 2
    assert "usage: mailcluster-learn spam|ham" in capsys.readouterr().err


def test_the_health_line_fails_a_replica_cut_from_its_source() -> None:
    master = {"learned": {"spam": 4, "ham": 1}, "role": "master", "source": "", "link": ""}
    assert B.health_line(master) == "bayes.replication\tok\tmaster\tspam 4, ham 1"
    replica = {**master, "role": "replica", "source": "198.19.10.1", "link": "up"}
    assert B.health_line(replica).split("\t")[:3] == ["bayes.replication", "ok", "up"]
    cut = {**replica, "link": "down"}
    assert B.health_line(cut) == (
        "bayes.replication\tfail\tdown\treplica of 198.19.10.1; spam 4, ham 1"
    )
    assert B.health_line(None, "refused").startswith("bayes.replication\tfail\tdown\t")


def test_the_database_role_comes_from_one_query() -> None:
    # A master: read_only 0, no SHOW SLAVE STATUS row.
    assert B.wanted_source(B.parse_db("0\n"), MESH) == (True, "")
    # A replica of its DC peer's private address (SHOW SLAVE STATUS: state, then the host).
    row = "Waiting for master to send event\t10.0.1.12\trepl\t3306\t1\t..."
    assert B.wanted_source(B.parse_db(f"1\n{row}\n"), MESH) == (True, "198.19.10.2")
    # Read-only without a source (between roles), or no answer: nothing decided.
    assert B.wanted_source(B.parse_db("1\n"), MESH) == (False, "")
    assert B.parse_db("") == {} and B.parse_db("ERROR 2002 (HY000)\n") == {}
