"""mailcluster-role against two real MariaDB servers (loopback, unusual ports, stopped after).

The rendered role script and the rendered server config drive two mariadbd processes side by
side, with stubs for what only a full host has (Heartbeat, Postfix, systemd):
first apply (svr1 counts as holder before Heartbeat ran) -> svr1 writable master, svr2 a
read-only GTID replica over TLS that receives the accounts; a crash of svr1 -> svr2 promoted;
svr1 back -> it rejoins as a read-only replica of svr2 and receives what svr2 took; a second
reconcile changes nothing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from rendertools import base, in_base

from cluster.hostplan import build_host_plan
from cluster.lab.checkroot import NsPopen, terminate
from cluster.material import ClusterSecrets
from cluster.plan import CHANGED_MARK
from cluster.services import mariadb
from cluster.services import role as role_service
from cluster.topology import Topology

pytestmark = pytest.mark.checkers

BASE_PORT = 23306 + os.getpid() % 500 * 2
# Where a server answers the other: a loopback address that is not 127.0.0.1, for which
# MariaDB's client skips the certificate's host name check (MDEV-31855); a node's private or
# mesh address is checked like this one.
PEER_IP = "127.0.0.2"
# What replicas connect from (the kernel's source address for the loopback network).
SOURCE_IP = "127.0.0.1"

STUBS = {
    # Heartbeat not running: the pre-Heartbeat rule decides who holds the shared IP.
    "cl_status": "#!/bin/sh\nexit 1\n",
    "logger": "#!/bin/sh\nexit 0\n",
    # A question to another node's server (--host) hangs once the test says so: the path died
    # after the connection was made.
    "mariadb": """#!/bin/sh
case " $* " in
  *" --host="*) [ -e "$STUB_DIR/remote.hangs" ] && exec sleep 600 ;;
esac
exec /usr/bin/mariadb "$@"
""",
    "postfix": '#!/bin/sh\n[ "$1" = status ] && [ -e "$STUB_DIR/postfix.running" ]\n',
    "systemctl": """#!/bin/sh
case "$1 $2" in
  "start postfix") touch "$STUB_DIR/postfix.running" ;;
  "stop postfix") rm -f "$STUB_DIR/postfix.running" ;;
  *) echo "unexpected systemctl $*" >&2; exit 1 ;;
esac
""",
}


@dataclass
class Server:
    name: str
    port: int
    dir: Path
    proc: NsPopen | None = None

    @property
    def socket(self) -> Path:
        return self.dir / "sock"

    def sql(self, query: str) -> str:
        return mysql(self, "-N", "-B", "-e", query).strip()


def mysql(server: Server, *args: str, stdin: str | None = None) -> str:
    argv = ("mariadb", f"--socket={server.socket}", "-uroot", *args)
    out = in_base(*argv, input=stdin)
    if out.returncode != 0:
        raise subprocess.CalledProcessError(out.returncode, argv, out.stdout, out.stderr)
    return out.stdout


def start(server: Server, cnf: Path, server_id: int) -> None:
    data = server.dir / "data"
    if not data.exists():
        installed = in_base(
            "mariadb-install-db", "--no-defaults", f"--datadir={data}", "--user=root",
            "--auth-root-authentication-method=socket",
        )  # fmt: skip
        assert installed.returncode == 0, installed.stdout + installed.stderr
    # The rendered config first; the command line moves its paths into the test directory.
    tls = server.dir.parent / "tls"
    server.proc = base().popen(
        ["mariadbd", f"--defaults-file={cnf}", "--user=root", f"--datadir={data}",
         f"--socket={server.socket}", f"--port={server.port}",
         f"--bind-address=127.0.0.1,{PEER_IP}", f"--server-id={server_id}",
         f"--pid-file={server.dir}/pid",
         f"--log-error={server.dir}/error.log",
         f"--log-bin={server.dir}/mariadb-bin", f"--log-bin-index={server.dir}/mariadb-bin.index",
         f"--relay-log={server.dir}/relay-bin", f"--relay-log-index={server.dir}/relay-bin.index",
         f"--ssl-cert={tls}/cert.pem", f"--ssl-key={tls}/key.pem", f"--ssl-ca={tls}/ca.pem",
         "--innodb-buffer-pool-size=16M"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    for _ in range(300):
        probe = in_base("mariadb-admin", f"--socket={server.socket}", "-uroot", "ping")
        if probe.returncode == 0:
            return
        time.sleep(0.1)
    raise AssertionError((server.dir / "error.log").read_text())


def crash(server: Server) -> None:
    assert server.proc is not None
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(timeout=30)
    server.proc = None


@pytest.fixture
def lab(
    topologies: dict[str, Topology], secrets: ClusterSecrets, tmp_path: Path
) -> Iterator[dict[str, object]]:
    topo = topologies["dc1"]
    plan = build_host_plan(topo, "dc1-svr1", secrets, "lab")
    files = {f.path: f.content for f in plan.files}
    cnf = tmp_path / "60-mailcluster.cnf"
    cnf.write_text(files[mariadb.CNF])
    tls = tmp_path / "tls"
    tls.mkdir()
    for name in ("cert.pem", "key.pem", "ca.pem"):
        (tls / name).write_text(files[f"{mariadb.DB_TLS_DIR}/{name}"])
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    for name, text in STUBS.items():
        (stubs / name).write_text(text)
        (stubs / name).chmod(0o755)
    role = tmp_path / "mailcluster-role"
    role.write_text(files[role_service.ROLE_SCRIPT])
    role.chmod(0o755)
    (tmp_path / "repl").write_text(secrets.db_replication + "\n")
    servers = {}
    for i, name in enumerate(("svr1", "svr2")):
        d = tmp_path / name
        d.mkdir()
        servers[name] = Server(name, BASE_PORT + i, d)
    try:
        yield {"servers": servers, "cnf": cnf, "stubs": stubs, "role": role, "tmp": tmp_path}
    finally:
        for s in servers.values():
            if s.proc is not None:
                terminate(s.proc)


def write_conf(lab: dict[str, object], me: Server, peer: Server, slot: str) -> Path:
    tmp = lab["tmp"]
    assert isinstance(tmp, Path)
    conf = me.dir / "cluster.conf"
    state = me.dir / "state"
    state.mkdir(exist_ok=True)
    conf.write_text(
        f"NODE=dc1-{slot}\nDC=dc1\nSLOT={slot}\nACTIVE_DC=dc1\nVIP=192.0.2.10\n"
        f"VIP_IFACE=lo\nSHARED_IP_METHOD=arp\nACTIVE_DB_NODES={PEER_IP}\n"
        f"PEER_PRIVATE_IP={PEER_IP}\nDB_PORT={peer.port}\n"
        f"MYSQL_SOCKET={me.socket}\nREPL_SECRET={tmp}/repl\n"
        f"STATE_DIR={state}\nRUN_DIR={me.dir}/run\nHOOKS={me.dir}/hooks\n"
        f"NODE_STATE_DIR={me.dir}/node-state\nVMAIL_DIR={me.dir}/vmail\n"
    )
    return conf


def role(lab: dict[str, object], me: Server, conf: Path, *args: str) -> str:
    stubs = lab["stubs"]
    env = {
        "PATH": f"{stubs}:/usr/sbin:/usr/bin:/sbin:/bin",
        "MAILCLUSTER_CONF": str(conf),
        "STUB_DIR": str(me.dir),
    }
    proc = in_base(str(lab["role"]), *args, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def wait_for(check: object, what: str, timeout: float = 20.0) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_first_apply_failover_and_rejoin(
    lab: dict[str, object], topologies: dict[str, Topology], secrets: ClusterSecrets
) -> None:
    servers = lab["servers"]
    assert isinstance(servers, dict)
    cnf = lab["cnf"]
    assert isinstance(cnf, Path)
    s1, s2 = servers["svr1"], servers["svr2"]
    start(s1, cnf, 1)
    start(s2, cnf, 2)
    conf1 = write_conf(lab, s1, s2, "svr1")
    conf2 = write_conf(lab, s2, s1, "svr2")
    # The rendered config starts every server read-only.
    assert s1.sql("SELECT @@global.read_only") == "1"
    assert s1.sql("SELECT @@global.gtid_strict_mode, @@global.log_slave_updates") == "1\t1"

    # First apply, before Heartbeat: svr1 is the writer, svr2 is not.
    out = role(lab, s1, conf1, "reconcile-db")
    assert "writable master" in out
    assert s1.sql("SELECT @@global.read_only") == "0"
    # The users step's SQL, plus a repl account for the loopback the test replicates from.
    from cluster.hostcontext import HostContext

    ctx = HostContext(topologies["dc1"], topologies["dc1"].node("dc1-svr1"), secrets, "lab")
    sql = mariadb.users_sql(ctx) + mariadb._user(
        "repl", SOURCE_IP, secrets.db_replication, "REPLICATION SLAVE ON *.*", True
    )
    mysql(s1, stdin=sql)

    out = role(lab, s2, conf2, "reconcile")
    assert f"replica of {PEER_IP}" in out
    assert s2.sql("SELECT @@global.read_only") == "1"
    wait_for(lambda: s2.sql("SHOW DATABASES LIKE 'postfixadmin'") == "postfixadmin",
             "the accounts database on the replica")  # fmt: skip
    status = json.loads(role(lab, s2, conf2, "status", "--json"))
    assert status["role"] == "standby" and status["db"]["read_only"] is True
    assert status["replication"]["master_host"] == PEER_IP
    assert status["replication"]["io_running"] == "Yes"
    assert status["postfix_running"] is False
    # Replication runs over TLS (repl REQUIRE SSL would refuse it otherwise), the master's
    # certificate verified (MariaDB 11.4+: by the replication password, see the role script).
    slave = mysql(s2, "-e", "SHOW SLAVE STATUS\\G")
    assert "Master_SSL_Allowed: Yes" in slave and "Master_SSL_Verify_Server_Cert: Yes" in slave
    grants = s2.sql("SHOW GRANTS FOR 'postfix'@'127.0.0.1'")
    assert "GRANT SELECT ON `postfixadmin`.* TO `postfix`@`127.0.0.1`" in grants

    out = role(lab, s1, conf1, "reconcile")
    assert "postfix started" in out
    status1 = json.loads(role(lab, s1, conf1, "status", "--json"))
    assert status1["role"] == "active" and status1["db"]["read_only"] is False
    assert status1["replication"]["configured"] is False
    # Idempotent: nothing changes the second time, on either node.
    assert CHANGED_MARK not in role(lab, s1, conf1, "reconcile")
    assert CHANGED_MARK not in role(lab, s2, conf2, "reconcile")

    s1.sql(
        "CREATE TABLE postfixadmin.t (id INT PRIMARY KEY); INSERT INTO postfixadmin.t VALUES (1)"
    )
    wait_for(lambda: s2.sql("SELECT COUNT(*) FROM postfixadmin.t") == "1", "row 1 on svr2")

    # svr1 crashes; Heartbeat promotes svr2 (resource start), which takes a write.
    crash(s1)
    # Heartbeat has run on svr1: the mark is on its volume (it survives a rebuild).
    (s1.dir / "node-state").mkdir(exist_ok=True)
    (s1.dir / "node-state" / "heartbeat-started").touch()
    out = role(lab, s2, conf2, "promote")
    assert "writable master" in out and "postfix started" in out
    s2.sql("INSERT INTO postfixadmin.t VALUES (2)")

    # svr1 boots (read-only from its config) and, not holding the IP, rejoins as a replica.
    start(s1, cnf, 1)
    assert s1.sql("SELECT @@global.read_only") == "1"
    out = role(lab, s1, conf1, "reconcile")
    assert f"replica of {PEER_IP}" in out
    wait_for(lambda: s1.sql("SELECT COUNT(*) FROM postfixadmin.t") == "2", "svr2's write on svr1")
    status1 = json.loads(role(lab, s1, conf1, "status", "--json"))
    assert status1["role"] == "standby" and status1["db"]["read_only"] is True
    assert status1["replication"]["sql_running"] == "Yes"
    assert status1["replication"]["last_io_error"] == ""
    assert CHANGED_MARK not in role(lab, s1, conf1, "reconcile")


def test_the_standby_data_centre_reads_from_the_active_master_it_asked_over_tls(
    lab: dict[str, object], topologies: dict[str, Topology], secrets: ClusterSecrets
) -> None:
    """A node of the standby data centre asks the active data centre's nodes, as the replication
    user over TLS (MariaDB 11.8's client verifies the server's certificate by default, and ours
    names the data centre, not the address: a CA given to the client would fail on the host
    name), which one is writable, and replicates from it: not from the first of the list, which
    here does not answer (127.0.0.3: nothing listens). A question that hangs once connected
    does not keep the role lock from a promote."""
    servers = lab["servers"]
    assert isinstance(servers, dict)
    cnf = lab["cnf"]
    assert isinstance(cnf, Path)
    s1, s2 = servers["svr1"], servers["svr2"]
    start(s1, cnf, 1)
    start(s2, cnf, 3)
    conf1 = write_conf(lab, s1, s2, "svr1")
    assert "writable master" in role(lab, s1, conf1, "reconcile-db")
    mysql(s1, stdin=mariadb._user("repl", SOURCE_IP, secrets.db_replication,
                                  "REPLICATION SLAVE ON *.*", True))  # fmt: skip
    # s2 as dc2-svr1 (the standby data centre's holder, before Heartbeat ever ran there).
    conf2 = write_conf(lab, s2, s1, "svr1")
    text = conf2.read_text().replace("NODE=dc1-svr1\nDC=dc1\n", "NODE=dc2-svr1\nDC=dc2\n")
    conf2.write_text(text.replace(f"ACTIVE_DB_NODES={PEER_IP}\n",
                                  f"ACTIVE_DB_NODES='127.0.0.3 {PEER_IP}'\n"))  # fmt: skip
    out = role(lab, s2, conf2, "reconcile-db")
    assert f"replica of {PEER_IP}" in out, out
    wait_for(lambda: s2.sql("SELECT 1 FROM mysql.user WHERE User='repl' LIMIT 1") == "1",
             "the master's accounts on the other data centre's replica")  # fmt: skip
    # And it stays there: the master still answers as writable.
    assert CHANGED_MARK not in role(lab, s2, conf2, "follow")

    # The active data centre cut off after a connection was made: every question to another
    # node hangs (the client has no read timeout). `follow` gives up within its bound and leaves
    # the lock to the promote that the failover runs next (it waits 60 s for it).
    (s2.dir / "remote.hangs").touch()
    env = {"PATH": f"{lab['stubs']}:/usr/sbin:/usr/bin:/sbin:/bin",
           "MAILCLUSTER_CONF": str(conf2), "STUB_DIR": str(s2.dir)}  # fmt: skip
    began = time.monotonic()
    follow = base().run([str(lab["role"]), "follow"], env=env, timeout=60)
    took = time.monotonic() - began
    bound = 3 * (role_service.REMOTE_SQL_TIMEOUT_S + 1)
    assert follow.returncode == 0, follow.stdout + follow.stderr
    assert took <= bound + 5, f"follow held the role lock {took:.1f} s (bound {bound} s)"
    assert took >= role_service.REMOTE_SQL_TIMEOUT_S, "the remote question did not hang"
    assert CHANGED_MARK not in follow.stdout  # no answer is no reason to move
    # Nothing it started (the hung client) still holds the lock: a reconcile takes it (role()
    # asserts its exit status; it would fail after 60 s of waiting) and keeps the source.
    assert CHANGED_MARK not in role(lab, s2, conf2, "reconcile-db")
