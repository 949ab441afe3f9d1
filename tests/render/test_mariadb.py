"""MariaDB: the rendered server config is accepted by mariadbd and says what replication needs;
the accounts are least-privilege; the plan runs account creation only on active-DC nodes and
orders replicas after the master."""

from __future__ import annotations

from pathlib import Path

import pytest
from rendertools import NODES, in_base

from cluster.hostcontext import HostContext
from cluster.hostplan import build_host_plan
from cluster.material import ClusterSecrets
from cluster.plan import HostPlan
from cluster.services import mariadb
from cluster.services.role import ROLE_SCRIPT
from cluster.topology import Topology


def cnf_of(hp: HostPlan) -> str:
    return hp.step(f"file:{mariadb.CNF}").stdin


@pytest.mark.checkers
def test_mariadbd_accepts_config(plan: tuple[Topology, HostPlan], tmp_path: Path) -> None:
    topo, hp = plan
    cnf = tmp_path / "my.cnf"
    cnf.write_text(cnf_of(hp))
    # An unknown or malformed option makes mariadbd --help --verbose fail.
    proc = in_base("mariadbd", f"--defaults-file={cnf}", "--help", "--verbose")
    assert proc.returncode == 0, proc.stderr
    values = dict(
        ln.split(None, 1) for ln in proc.stdout.splitlines() if len(ln.split(None, 1)) == 2
    )
    node = topo.node(hp.host)
    assert values["server-id"] == str(node.server_id)
    # Loopback, the private address (the peer's replica), the mesh (the other data centre's):
    # never a public address, never the wildcard.
    bound = values["bind-address"].split(",")
    assert bound == ["127.0.0.1", node.private_ipv4, topo.mesh_address(node)]
    assert values["binlog-format"] == "ROW"
    assert values["gtid-strict-mode"] == "TRUE"
    assert values["log-slave-updates"] == "TRUE"
    assert values["read-only"] == "TRUE"
    assert values["skip-name-resolve"] == "TRUE"
    assert values["relay-log"] == "/var/log/mysql/mariadb-relay-bin"
    assert values["ssl-cert"] == f"{mariadb.DB_TLS_DIR}/cert.pem"
    printed = in_base("my_print_defaults", f"--defaults-file={cnf}", "mysqld")
    assert printed.returncode == 0, printed.stderr
    defaults = printed.stdout.split()
    assert "--log_bin=/var/log/mysql/mariadb-bin" in defaults


def test_server_ids_unique(topologies: dict[str, Topology], secrets: ClusterSecrets) -> None:
    ids = set()
    for stack, node in NODES:
        hp = build_host_plan(topologies[stack], node, secrets, "lab")
        ids.add(next(ln for ln in cnf_of(hp).splitlines() if ln.startswith("server_id")))
    assert len(ids) == 4


def test_least_privilege(topologies: dict[str, Topology], secrets: ClusterSecrets) -> None:
    topo = topologies["dc1"]
    sql = mariadb.users_sql(HostContext(topo, topo.node("dc1-svr1"), secrets, "lab"))
    grants = [ln for ln in sql.splitlines() if ln.startswith("GRANT")]
    for user in ("postfix", "dovecot"):
        mine = [g for g in grants if f"TO '{user}'@" in g]
        assert mine and all(g.startswith("GRANT SELECT ON postfixadmin.* TO") for g in mine)
        assert {g.split("@")[1] for g in mine} == {"'127.0.0.1';", "'localhost';"}
    # Global privileges: replication for 'repl', and (metrics on, as in the lab) the exporter's
    # read-only monitoring set over the local socket; nothing else.
    exporter = f"GRANT {mariadb.EXPORTER_GRANTS[0]} TO '{mariadb.EXPORTER_USER}'@'localhost';"
    assert all("ON *.*" not in g or "REPLICATION SLAVE ON *.* TO 'repl'@" in g or g == exporter
               for g in grants)  # fmt: skip
    assert not any(w in g for g in grants for w in ("ALL PRIVILEGES ON *.*", "SUPER", "FILE"))
    repl_hosts = {g.split("@")[1].strip("';") for g in grants if "'repl'@" in g}
    # Replicas come from a private address (the data-centre peer) or a mesh address (the other
    # data centre): never from a public one.
    want = {n.private_ipv4 for n in topo.nodes} | set(topo.all_mesh_addresses)
    assert repl_hosts == want
    assert not repl_hosts & {n.public_ipv4 for n in topo.nodes}
    assert sql.count("REQUIRE SSL") == 2 * len(want)
    assert "GRANT ALL ON postfixadmin.* TO 'postfixadmin'@'127.0.0.1';" in sql
    assert "GRANT ALL ON roundcube.* TO 'roundcube'@'127.0.0.1';" in sql


def test_accounts_only_on_master_candidates_and_replicas_after(
    plan: tuple[Topology, HostPlan], secrets: ClusterSecrets
) -> None:
    topo, hp = plan
    node = topo.node(hp.host)
    names = [s.name for s in hp.steps]
    if node.dc == topo.active_dc:
        users = hp.step(mariadb.USERS_STEP)
        assert users.secret and secrets.db_postfix in users.stdin
        assert secrets.db_postfix not in users.command
        assert "is-writer" in users.script  # decided on the host: the shared-IP holder
    else:
        assert mariadb.USERS_STEP not in names
    role = hp.step(mariadb.ROLE_STEP)
    if node.name == f"{topo.active_dc}-svr2":
        assert role.after_remote == ((f"{topo.active_dc}-svr1", mariadb.USERS_STEP),)
    else:
        assert role.after_remote == ()
    assert hp.step(f"file:{mariadb.REPL_SECRET}").file.mode == "0600"  # type: ignore[union-attr]
    key = hp.step(f"file:{mariadb.DB_TLS_DIR}/key.pem")
    assert key.secret and key.file is not None and key.file.owner == "mysql"


def test_every_start_of_mariadb_renews_its_clients(plan: tuple[Topology, HostPlan]) -> None:
    """mariadb.service's drop-in runs the role's db-clients-reconnect as root after every start
    (the unit's own user may not signal Postfix or Dovecot), the role script answers it without
    its lock (a promote that starts MariaDB holds it), and systemd reads a changed drop-in."""
    _, hp = plan
    dropin = hp.step(f"file:{mariadb.CLIENTS_DROPIN}").stdin
    post = [ln for ln in dropin.splitlines() if ln.startswith("ExecStartPost=")]
    assert post == [f"ExecStartPost=-+{ROLE_SCRIPT} db-clients-reconnect"], post
    role = hp.step(f"file:{ROLE_SCRIPT}").stdin
    case = next(ln for ln in role.splitlines() if ln.strip().startswith("db-clients-reconnect)"))
    assert "with_lock" not in case and "db_clients_reconnect" in case, case
    body = role[role.index("db_clients_reconnect() {") :]
    body = body[: body.index("\n}\n")]
    assert "pkill -TERM -f '^proxymap -t unix'" in body and "dovecot/auth -w" in body, body
    reload = hp.step(mariadb.CLIENTS_STEP)
    assert "systemctl daemon-reload" in reload.script
    assert f"file:{mariadb.CLIENTS_DROPIN}" in [str(w) for w in reload.watch]
    assert mariadb.CLIENTS_STEP in [str(a) for a in hp.step(mariadb.SERVICE_STEP).after]
