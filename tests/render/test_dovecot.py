"""Dovecot 2.4: every node of both lab stacks renders a config that ``doveconf`` accepts without a
warning, in 2.4 syntax, with IMAPS only (143 only when asked), SQL auth from Postfix Admin,
quotas, the doveadm server on internal addresses only, no replicator, and the change events for
the replication controller."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import dovecots
import pytest
from rendertools import NODES, base, in_base, write_tree

from cluster.hostcontext import HostContext
from cluster.hostplan import build_host_plan
from cluster.lab.checkroot import terminate
from cluster.lab.model import lab_topology
from cluster.material import ClusterSecrets
from cluster.render import render
from cluster.services import dovecot, replication, tls
from cluster.topology import Topology


def doveconf(root: Path, *args: str) -> str:
    conf = root / "etc/dovecot/dovecot.conf"
    proc = in_base("doveconf", "-c", str(conf), *args)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr  # a warning is a failure too
    return proc.stdout


def setting(root: Path, name: str) -> str:
    return doveconf(root, "-h", name).strip()


def block(config: str, header: str) -> str:
    """The text of the top-level block that starts with ``header`` in ``doveconf -n``."""
    start = config.index(f"\n{header} {{\n")
    return config[start : config.index("\n}\n", start)]


def listeners(config: str) -> dict[str, tuple[int, str]]:
    """inet_listener name -> (port, listen), from ``doveconf -n`` output."""
    found: dict[str, tuple[int, str]] = {}
    name = None
    port, listen = 0, ""
    for line in config.splitlines():
        line = line.strip()
        if line.startswith("inet_listener "):
            name, port, listen = line.split()[1], 0, ""
        elif name and line.startswith("port = "):
            port = int(line.split("=")[1])
        elif name and line.startswith("listen = "):
            listen = line.split("=", 1)[1].strip()
        elif name and line == "}":
            found[name] = (port, listen)
            name = None
    return found


@pytest.mark.checkers
@pytest.mark.parametrize("plaintext", [False, True], ids=["imaps-only", "imap-plaintext"])
@pytest.mark.parametrize(("stack", "node"), NODES, ids=[n for _, n in NODES])
def test_doveconf_accepts_config(
    stack: str, node: str, plaintext: bool, secrets: ClusterSecrets, tmp_path: Path
) -> None:
    topo = lab_topology(stack, {"imapPlaintext": plaintext})
    plan = build_host_plan(topo, node, secrets, "lab")
    root = write_tree(plan, tmp_path)
    config = doveconf(root, "-n")
    me = topo.node(node)
    # 2.4 syntax: the version first, as Dovecot demands.
    assert config.split("\n", 4)[4].startswith("dovecot_config_version = 2.4.1\n")
    assert setting(root, "dovecot_storage_version") == "2.4.1"
    ports = listeners(config)
    vip6 = topo.shared_ipv6(me.dc)
    assert vip6
    users = f"{topo.shared_ip(me.dc)} {vip6} 127.0.0.1"
    assert ports["imaps"] == (993, users)
    assert ports["imap"] == (143 if plaintext else 0, users)
    # ManageSieve where IMAP is, STARTTLS only (ssl = required before any login), with the
    # certificate users see.
    assert ports["sieve"] == (4190, users)
    assert setting(root, "ssl") == "required"
    assert f"  ssl_server {{\n    cert_file = {tls.CHAIN}\n" in block(config, "protocol sieve")
    assert setting(root, "protocols").split() == ["imap", "lmtp", "sieve"]
    # dsync from the other nodes: the mesh only (never public, never the VPC), plain TCP inside
    # WireGuard (dovecot.py: 2.4.1's TLS can hang a dsync).
    assert ports["doveadm"] == (dovecot.DOVEADM_PORT, topo.mesh_address(me))
    assert "ssl = no" in block(config, "service doveadm")
    # The include of the secret file resolved: the password is set (doveconf hides its value).
    assert "doveadm_password = # hidden" in config
    # No replicator, no replication plugin: the controller does it (replication.py).
    plugins = block(config, "mail_plugins")
    assert "replication" not in plugins and "replicator" not in config
    assert "notify = yes" in plugins and "push_notification = yes" in plugins
    assert "quota = yes" in plugins
    assert "imap_quota = yes" in block(config, "protocol imap")
    # The events: to the controller on loopback, with a longer bound than Dovecot's 250 ms.
    exporter = block(config, "event_exporter replication")
    controller = json.loads((root / replication.CONFIG.lstrip("/")).read_text())
    listen = f"{controller['listen']}:{controller['port']}"
    assert f"http_post_url = http://{listen}/events" in exporter and listen.startswith("127.")
    assert f"http_client_request_absolute_timeout = {dovecot.EVENTS_TIMEOUT_MS}ms" in exporter
    # The controller's syncs: the doveadm HTTP API on loopback only, its processes kept warm.
    http_port, http_listen = ports["http"]
    assert http_listen == "127.0.0.1"
    assert controller["doveadm_api"] == f"http://127.0.0.1:{http_port}/doveadm/v1"
    doveadm = block(config, "service doveadm")
    assert f"restart_request_count = {dovecot.DOVEADM_REQUESTS_PER_PROCESS}" in doveadm
    assert f"process_min_avail = {dovecot.DOVEADM_WARM_PROCESSES}" in doveadm
    assert f"filter = {dovecot.EVENTS_FILTER}" in block(config, "metric replication_changes")
    # Maildirs on the volume, indexes and control files with them.
    assert setting(root, "mail_driver") == "maildir"
    assert setting(root, "mail_home") == "/srv/mail/vmail/%{user | domain}/%{user | username}"
    assert setting(root, "mail_path") == "%{home}"
    assert setting(root, "mail_index_path") == "" and setting(root, "mail_control_path") == ""
    assert setting(root, "auth_username_format") == "%{user | lower}"
    # The auth cache that keeps known users logging in while MariaDB is down (dovecot.py):
    # on, short-lived, never caching a failure.
    assert setting(root, "auth_cache_size") == "10M"
    assert setting(root, "auth_cache_ttl") == f"{dovecot.AUTH_CACHE_TTL_S}s"
    assert setting(root, "auth_cache_negative_ttl") == "0"
    assert setting(root, "ssl") == "required"
    assert setting(root, "auth_allow_cleartext") == "no"
    assert setting(root, "ssl_min_protocol") == "TLSv1.2"
    # The special folders, made and subscribed for every user.
    namespace = block(config, "namespace inbox")
    for folder in ("Drafts", "Sent", "Junk", "Trash"):
        assert f"mailbox {folder} {{\n    auto = subscribe\n" in namespace
    # The secret values are hidden from a plain doveconf -n ...
    assert secrets.doveadm not in config and secrets.db_dovecot not in config
    # ... and really read from the included files.
    assert secrets.doveadm in setting_secret(root, "doveadm_password")
    assert secrets.db_dovecot in doveconf(root, "-P", "-n")


def setting_secret(root: Path, name: str) -> str:
    return doveconf(root, "-P", "-h", name)


def test_sql_conf_is_secret_and_matches_postfixadmin(
    topologies: dict[str, Topology], secrets: ClusterSecrets
) -> None:
    plan = build_host_plan(topologies["dc1"], "dc1-svr1", secrets, "lab")
    files = {f.path: f for f in plan.files}
    sql = files[dovecot.SQL_CONF]
    assert sql.secret and sql.mode == "0600" and (sql.owner, sql.group) == ("root", "root")
    assert "default_password_scheme = SHA512-CRYPT" in sql.content
    assert f"password = {secrets.db_dovecot}" in sql.content
    assert "mysql 127.0.0.1 {\n  port = 3306\n" in sql.content
    assert "CONCAT(mailbox.quota, 'B') AS quota_storage_size" in sql.content
    assert "FROM mailbox" in sql.content and "iterate_query" in sql.content
    secret_inc = files[dovecot.SECRETS_CONF]
    assert secret_inc.secret and secret_inc.mode == "0600"
    assert secrets.doveadm not in files[dovecot.CONF].content
    assert secrets.db_dovecot not in files[dovecot.CONF].content


# Postfix Admin's tables, as much of them as Dovecot's queries read.
SCHEMA = """
CREATE DATABASE postfixadmin;
CREATE TABLE postfixadmin.domain (domain VARCHAR(255) PRIMARY KEY, active TINYINT(1));
CREATE TABLE postfixadmin.mailbox (username VARCHAR(255) PRIMARY KEY, password VARCHAR(255),
  quota BIGINT, domain VARCHAR(255), active TINYINT(1));
CREATE USER dovecot@'127.0.0.1' IDENTIFIED BY '{password}';
GRANT SELECT ON postfixadmin.* TO dovecot@'127.0.0.1';
INSERT INTO postfixadmin.domain VALUES ('example.com', 1), ('closed.org', 0);
INSERT INTO postfixadmin.mailbox VALUES ('full@example.com', '{hash}', 1048576, 'example.com', 1),
  ('free@example.com', '{hash}', 0, 'example.com', 1),
  ('off@example.com', '{hash}', 0, 'example.com', 0),
  ('shut@closed.org', '{hash}', 0, 'closed.org', 1);
"""


@pytest.mark.checkers
def test_sql_auth_and_quotas_against_mariadb(
    topologies: dict[str, Topology], secrets: ClusterSecrets
) -> None:
    """The SQL include as rendered, against a real MariaDB with Postfix Admin's tables: a
    SHA512-CRYPT password logs in, a wrong one does not; mailbox.quota is the quota (0: none);
    an inactive mailbox or domain is unknown; the user listing (the controller's sweeps)."""
    with dovecots.home() as home:
        data, sock, port = home / "db", home / "db.sock", dovecots.free_port()
        made = in_base(
            "mariadb-install-db",
            "--no-defaults",
            f"--datadir={data}",
            "--user=root",
            "--auth-root-authentication-method=socket",
        )
        assert made.returncode == 0, made.stderr
        db = base().popen(
            [
                "mariadbd",
                "--no-defaults",
                "--user=root",
                f"--datadir={data}",
                f"--socket={sock}",
                f"--port={port}",
                "--bind-address=127.0.0.1",
                "--skip-log-bin",
                "--innodb-buffer-pool-size=16M",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        server = None
        try:
            dovecots.wait_for(
                lambda: in_base("mysqladmin", f"--socket={sock}", "ping").returncode == 0, "MariaDB"
            )
            hashed = in_base("doveadm", "pw", "-s", "SHA512-CRYPT", "-p", "pw-1").stdout.strip()
            assert hashed.startswith("{SHA512-CRYPT}$6$")
            # Postfix Admin stores the crypt string without the scheme prefix.
            hashed = hashed.removeprefix("{SHA512-CRYPT}")
            schema = SCHEMA.format(password=secrets.db_dovecot, hash=hashed)
            loaded = in_base("mysql", f"--socket={sock}", "-uroot", input=schema)
            assert loaded.returncode == 0, loaded.stderr
            topo = topologies["dc1"]
            ctx = HostContext(topo, topo.node("dc1-svr1"), secrets, "lab")
            sql = render(
                dovecot.SQL_CONF, **ctx.common(), **(dovecot.sql_values(ctx) | {"db_port": port})
            )
            server = dovecots.Dovecot("sql", home / "dovecot", "http://127.0.0.1:1/", [], sql)
            server.start()
            ok = server.doveadm("auth", "test", "full@example.com", "pw-1", check=False)
            assert ok.returncode == 0 and "auth succeeded" in ok.stdout, ok.stdout + ok.stderr
            bad = server.doveadm("auth", "test", "full@example.com", "pw-2", check=False)
            assert bad.returncode != 0 and "auth failed" in bad.stdout, bad.stdout
            user = server.doveadm("user", "full@example.com").stdout
            assert "quota_storage_size\t1048576B" in user, user
            quota = server.doveadm("-f", "tab", "quota", "get", "-u", "full@example.com").stdout
            assert "User quota\tSTORAGE\t0\t1024\t" in quota, quota
            unlimited = server.doveadm("-f", "tab", "quota", "get", "-u", "free@example.com")
            assert "User quota\tSTORAGE\t0\t-\t" in unlimited.stdout, unlimited.stdout
            for gone in ("off@example.com", "shut@closed.org"):
                assert server.doveadm("user", gone, check=False).returncode == 67  # unknown
            listed = server.doveadm("user", "*").stdout.split()
            assert sorted(listed) == ["free@example.com", "full@example.com", "shut@closed.org"]
        finally:
            if server is not None:
                server.stop()
            terminate(db)


# A SIGHUP to Dovecot 2.4.1's master is fatal at the second one since it started (SIGSEGV; 3 of
# 3 in the lab, 7 December 2026): a settings change, a renewal or a promote would leave the node
# with no IMAP, LMTP or SASL. Nothing the plan installs or runs may send one.
SIGHUP_TO_DOVECOT = ("doveadm reload", "reload dovecot", "kill -HUP", "pkill -HUP")


@pytest.mark.parametrize("sets", [{}, {"tlsMode": "letsencrypt", "letsencryptEmail": "a@b.org"}])
def test_nothing_the_plan_runs_or_installs_reloads_dovecot(
    sets: dict[str, str], secrets: ClusterSecrets
) -> None:
    """Both TLS modes: certbot's deploy hook (letsencrypt) restarts Dovecot too."""
    for stack, node in NODES:
        hp = build_host_plan(lab_topology(stack, sets), node, secrets, "lab")
        texts = {s.name: s.script for s in hp.steps} | {f.path: f.content for f in hp.files}
        found = {name: w for name, text in texts.items() for w in SIGHUP_TO_DOVECOT if w in text}
        assert not found, (node, found)
        assert "systemctl restart dovecot" in hp.step(dovecot.RELOAD_STEP).script, node
