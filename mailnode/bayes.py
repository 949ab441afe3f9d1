"""mailcluster-bayes follow|status [--json]|health: rspamd's Bayes store (Valkey) follows the
database.

What users teach rspamd (mailnode/learn.py: a move into or out of Junk) is written to the
node's Valkey, which must not live on one node only. Valkey replicates the way MariaDB does
(services/bayes.py says why): the writable master's Valkey is the master, and every other
node's Valkey replicates from the node its MariaDB replicates from, over the mesh. So the chain
of both stores is the same one, and it moves with the role: promote and demote run ``follow``
(a role.d hook), and a timer runs it too (a data centre's MariaDB source moves on its own when
the other data centre's master changes).

follow: read the node's MariaDB role (read_only and its replication source, one query): a
writable master without a source makes Valkey a master (``REPLICAOF NO ONE``); a replica of
address A makes it a replica of A's node, on that node's mesh address. Unchanged: nothing
sent. A database that does not answer leaves Valkey as it is.
status: the learned counts per class (rspamd's totals in Valkey) and the
replication state, for ``ops status`` and the drills. health: mailcluster-health's line for it.

Valkey speaks RESP; the few commands here need no client library, and the password goes over
the socket, never on a command line. Config: /etc/mailcluster/bayes.json (services/bayes.py).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONFIG = "/etc/mailcluster/bayes.json"
# Where rspamd 3 keeps the totals (its Redis schema version 2, seen in rspamd 3.11 on Debian
# 13): one hash, "RS", with a field per class. A message learned as spam and then as ham moves
# from one count to the other (rspamd unlearns the first).
TOTALS_KEY = "RS"
CLASS_FIELDS = {"spam": "learns_spam", "ham": "learns_ham"}


class ValkeyError(Exception):
    pass


@dataclass(frozen=True)
class Settings:
    host: str
    port: int
    password_file: str
    # One mariadb client run: "SELECT @@global.read_only; SHOW SLAVE STATUS" (batch, no column
    # names). Not mailcluster-role status, which asks far more and costs ~10 times the CPU
    # every FOLLOW_EVERY_S on every node.
    db_query: list[str]
    # Every address a node's MariaDB may replicate from (private, mesh), to that node's mesh
    # address, where its Valkey listens for replicas.
    mesh_by_address: dict[str, str]

    @classmethod
    def load(cls, path: str = CONFIG) -> Settings:
        data = json.loads(Path(path).read_text())
        return cls(
            host=str(data["host"]),
            port=int(data["port"]),
            password_file=str(data["password_file"]),
            db_query=[str(a) for a in data["db_query"]],
            mesh_by_address={str(k): str(v) for k, v in data["mesh_by_address"].items()},
        )


def encode(*args: str) -> bytes:
    """One RESP command (an array of bulk strings)."""
    out = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        raw = arg.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


class _Reader:
    def __init__(self, sock: socket.socket) -> None:
        self.file = sock.makefile("rb")

    def line(self) -> bytes:
        got = self.file.readline()
        if not got.endswith(b"\r\n"):
            raise ValkeyError("connection closed")
        return got[:-2]

    def reply(self) -> Any:
        """One RESP2 reply: str, int, None, list; an error reply raises."""
        head = self.line()
        kind, rest = head[:1], head[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise ValkeyError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.file.read(n + 2)
            return data[:-2].decode(errors="replace")
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.reply() for _ in range(n)]
        raise ValkeyError(f"unexpected reply {head[:40]!r}")


class Valkey:
    """A connection to the node's Valkey, authenticated."""

    def __init__(self, settings: Settings, timeout: float = 5.0) -> None:
        password = Path(settings.password_file).read_text().strip()
        self.sock = socket.create_connection((settings.host, settings.port), timeout)
        self.reader = _Reader(self.sock)
        self.call("AUTH", password)

    def call(self, *args: str) -> Any:
        self.sock.sendall(encode(*args))
        return self.reader.reply()

    def close(self) -> None:
        self.sock.close()


def parse_info(text: str) -> dict[str, str]:
    """INFO's "key:value" lines."""
    out = {}
    for line in text.splitlines():
        if ":" in line and not line.startswith("#"):
            key, value = line.split(":", 1)
            out[key] = value.strip()
    return out


def wanted_source(role: dict[str, Any], mesh_by_address: dict[str, str]) -> tuple[bool, str]:
    """(decided, source) from the node's MariaDB role: ("", a master) or a mesh address; not
    decided when the database did not say (down, or between roles)."""
    repl = role.get("replication") or {}
    if repl.get("configured") and repl.get("master_host"):
        host = str(repl["master_host"])
        if host not in mesh_by_address:
            raise ValueError(f"MariaDB replicates from {host}, which is no node of the cluster")
        return True, mesh_by_address[host]
    if (role.get("db") or {}).get("read_only") is False:
        return True, ""
    return False, ""


def current_source(info: dict[str, str]) -> str:
    """Where Valkey replicates from ("" when it is a master)."""
    return info.get("master_host", "") if info.get("role") == "slave" else ""


def follow(settings: Settings, valkey: Valkey, role: dict[str, Any], port: int) -> str:
    """Make Valkey follow the database; what was done ("" when nothing)."""
    decided, source = wanted_source(role, settings.mesh_by_address)
    if not decided:
        return ""
    info = parse_info(str(valkey.call("INFO", "replication")))
    if current_source(info) == source:
        return ""
    if source:
        valkey.call("REPLICAOF", source, str(port))
        return f"valkey: replica of {source}"
    valkey.call("REPLICAOF", "NO", "ONE")
    return "valkey: master"


def learned(valkey: Valkey) -> dict[str, int]:
    """Messages learned per class (0 before the first)."""
    out = {}
    for cls, field in CLASS_FIELDS.items():
        value = valkey.call("HGET", TOTALS_KEY, field)
        out[cls] = int(value) if value is not None else 0
    return out


def status(valkey: Valkey) -> dict[str, Any]:
    info = parse_info(str(valkey.call("INFO", "replication")))
    return {
        "learned": learned(valkey),
        "role": "master" if info.get("role") == "master" else "replica",
        "source": current_source(info),
        "link": info.get("master_link_status", ""),
    }


def health_line(state: dict[str, Any] | None, error: str = "") -> str:
    """``mailcluster-health``'s line (name, ok|fail, value, detail; tab-separated): a replica
    whose link to its source is down cannot get what users teach rspamd on the master."""
    if state is None:
        return f"bayes.replication\tfail\tdown\tValkey does not answer: {error}"
    counts = f"spam {state['learned']['spam']}, ham {state['learned']['ham']}"
    if state["role"] == "master":
        return f"bayes.replication\tok\tmaster\t{counts}"
    ok = "ok" if state["link"] == "up" else "fail"
    detail = f"replica of {state['source']}; {counts}"
    return f"bayes.replication\t{ok}\t{state['link'] or 'none'}\t{detail}"


def parse_db(out: str) -> dict[str, Any]:
    """The database's role from the query's output, in ``mailcluster-role status --json``'s
    shape (the parts read here): the first line is read_only; a second, SHOW SLAVE STATUS's
    row, whose second column is the source (no row: no replication configured)."""
    lines = [line for line in out.splitlines() if line.strip()]
    if not lines or lines[0].strip() not in ("0", "1"):
        return {}
    source = lines[1].split("\t")[1] if len(lines) > 1 and "\t" in lines[1] else ""
    return {
        "db": {"read_only": lines[0].strip() == "1"},
        "replication": {"configured": bool(source), "master_host": source},
    }


def role_status(settings: Settings) -> dict[str, Any]:
    """The node's database role, or {} when MariaDB does not answer."""
    try:
        proc = subprocess.run(settings.db_query, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return parse_db(proc.stdout) if proc.returncode == 0 else {}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in ("follow", "status", "health"):
        print("usage: mailcluster-bayes follow|status [--json]|health", file=sys.stderr)
        return 2
    settings = Settings.load()
    try:
        valkey = Valkey(settings)
    except (OSError, ValkeyError) as exc:
        where = f"Valkey on {settings.host}:{settings.port}: {exc}"
        if args[0] == "health":
            print(health_line(None, where))
            return 0
        print(f"mailcluster-bayes: {where}", file=sys.stderr)
        return 1
    try:
        if args[0] == "follow":
            done = follow(settings, valkey, role_status(settings), settings.port)
            if done:
                print(f"mailcluster: changed {done}")
            return 0
        state = status(valkey)
        if args[0] == "health":
            print(health_line(state))
        elif "--json" in args:
            print(json.dumps(state))
        else:
            source = f" of {state['source']} ({state['link']})" if state["source"] else ""
            print(f"bayes: learned spam {state['learned']['spam']}, ham "
                  f"{state['learned']['ham']}; valkey {state['role']}{source}")  # fmt: skip
        return 0
    except (OSError, ValkeyError, ValueError) as exc:
        print(f"mailcluster-bayes: {exc}", file=sys.stderr)
        return 1
    finally:
        valkey.close()
