"""Dovecot: every node of both lab stacks renders a config that ``doveconf`` accepts, with IMAPS
only (143 only when asked), SQL auth from Postfix Admin, quotas, and dsync replication."""

from __future__ import annotations

from pathlib import Path

import pytest
from rendertools import NODES, in_base, write_tree

from cluster.hostplan import build_host_plan
from cluster.lab.model import lab_topology
from cluster.material import ClusterSecrets
from cluster.services import dovecot
from cluster.topology import Topology


def doveconf(root: Path, *args: str) -> str:
    conf = root / "etc/dovecot/dovecot.conf"
    proc = in_base("doveconf", "-c", str(conf), *args)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr  # a warning is a failure too
    return proc.stdout


def listener_ports(config: str) -> dict[str, int]:
    """inet_listener name -> port, from ``doveconf -n`` output."""
    ports: dict[str, int] = {}
    name = None
    for line in config.splitlines():
        line = line.strip()
        if line.startswith("inet_listener"):
            name = line.split()[1] if len(line.split()) > 2 else "(unnamed)"
        elif name and line.startswith("port = "):
            ports[name] = int(line.split("=")[1])
            name = None
    return ports


@pytest.mark.checkers
@pytest.mark.parametrize("plaintext", [False, True], ids=["imaps-only", "imap-plaintext"])
@pytest.mark.parametrize(("stack", "node"), NODES, ids=[n for _, n in NODES])
def test_doveconf_accepts_config(
    stack: str, node: str, plaintext: bool, secrets: ClusterSecrets, tmp_path: Path
) -> None:
    topo = lab_topology(stack, {"imapPlaintext": plaintext})
    plan = build_host_plan(topo, node, secrets, "lab")
    config = doveconf(write_tree(plan, tmp_path), "-n")
    ports = listener_ports(config)
    assert ports["imaps"] == 993
    assert ports["imap"] == (143 if plaintext else 0)
    assert ports["pop3"] == ports["pop3s"] == 0
    assert ports["(unnamed)"] == dovecot.DOVEADM_PORT
    # The include of the secret file resolved: the password is set (doveconf hides its value).
    assert "doveadm_password = # hidden" in config
    me = topo.node(node)
    # IMAP(S) on the shared IPs of both families and loopback, never on a wildcard.
    vip6 = topo.shared_ipv6(me.dc)
    assert vip6
    imap_address = f"address = {topo.shared_ip(me.dc)}, {vip6}, 127.0.0.1"
    login = config[config.index("service imap-login {") :]
    login = login[: login.index("\n}\n")]
    assert login.count(imap_address) == 2, login
    assert f"mail_replica = tcps:{topo.peer(me).private_ipv4}:{dovecot.DOVEADM_PORT}" in config
    # Asynchronous: the synchronous mode crashes Dovecot 2.3.19's replicator (dovecot.py).
    assert "replication_sync_timeout" not in config
    assert "mail_location = maildir:/srv/mail/vmail/%d/%n" in config
    # The auth cache that keeps known users logging in while MariaDB is down (dovecot.py):
    # on, short-lived, never caching a failure.
    assert doveconf(tmp_path, "-h", "auth_cache_size").strip() == "10 M"
    assert dovecot.AUTH_CACHE_TTL_S == 60  # doveconf shows it in minutes
    assert doveconf(tmp_path, "-h", "auth_cache_ttl").strip() == "1 mins"
    assert doveconf(tmp_path, "-h", "auth_cache_negative_ttl").strip() == "0"
    assert "ssl = required" in config
    assert doveconf(tmp_path, "-h", "ssl_min_protocol").strip() == "TLSv1.2"
    assert "notify replication" in config and "quota" in config
    # The secret values are hidden from a plain doveconf -n ...
    assert secrets.doveadm not in config
    # ... and really read from the included file.
    assert secrets.doveadm in doveconf(tmp_path, "-P", "-h", "doveadm_password")


def test_sql_conf_is_secret_and_matches_postfixadmin(
    topologies: dict[str, Topology], secrets: ClusterSecrets
) -> None:
    plan = build_host_plan(topologies["dc1"], "dc1-svr1", secrets, "lab")
    files = {f.path: f for f in plan.files}
    sql = files[dovecot.SQL_CONF]
    assert sql.secret and sql.mode == "0600" and (sql.owner, sql.group) == ("root", "root")
    assert "default_pass_scheme = SHA512-CRYPT" in sql.content
    assert f"password={secrets.db_dovecot}" in sql.content
    assert "host=127.0.0.1" in sql.content
    assert "CONCAT('*:bytes=', mailbox.quota) AS quota_rule" in sql.content
    assert "FROM mailbox" in sql.content and "iterate_query" in sql.content
    secret_inc = files[dovecot.SECRETS_CONF]
    assert secret_inc.secret and secret_inc.mode == "0600"
    assert secrets.doveadm not in files["/etc/dovecot/dovecot.conf"].content


@pytest.mark.checkers
def test_cross_dc_replication_only_from_active_dc(
    topologies: dict[str, Topology], secrets: ClusterSecrets
) -> None:
    active = build_host_plan(topologies["dc1"], "dc1-svr2", secrets, "lab")
    standby = build_host_plan(topologies["dc2"], "dc2-svr1", secrets, "lab")
    script = {f.path: f for f in active.files}[dovecot.DSYNC_SCRIPT].content
    topo = topologies["dc1"]
    for n in topo.dc_nodes("dc2"):
        mesh = topo.mesh_address(n)
        # Each target at once in the frequent rounds and in the full ones: one that hangs
        # holds back only its own pushes.
        assert f"target_loop {n.name} tcps:{mesh}:{dovecot.DOVEADM_PORT} &\n" in script
        assert (f"( rc=0; sync_users tcps:{mesh}:{dovecot.DOVEADM_PORT} \"$users\" || rc=$?\n"
                f"    record {n.name} \"$rc\" ) &\n") in script  # fmt: skip
        assert n.public_ipv4 not in script
    # Each round the changed mailboxes (by their folders' mtimes), every mailbox in a full round.
    assert (f'timeout -k 5 "${{SYNC_TIMEOUT:-{dovecot.DSYNC_USER_TIMEOUT_S}}}" doveadm sync '
            '"${@:3}" -u "$2" -T 30 -l 10 "$1"') in script  # fmt: skip
    # ... a shorter bound in the frequent rounds, which wait for their slowest mailbox.
    loop = script[script.index("target_loop() {") :]
    assert f"local -x SYNC_TIMEOUT={dovecot.DSYNC_CHANGED_TIMEOUT_S}\n" in loop.split("}")[0]
    assert "SYNC_TIMEOUT=" not in script[script.index("full_round() {") :].split("}")[0]
    full = script[script.index("full_round() {") :]
    assert full[: full.index("\n}\n")].endswith("\n  wait")
    assert 'exec 9>"/run/mailcluster-dsync-$1.lock"' in loop  # a lock per target
    # A GUID conflict is unified on every other node's doveadm server, over TLS: the DC peer on
    # its private address first, then the other DC on the mesh; never a public address.
    peer = topo.node("dc1-svr1")
    others = " ".join(f"{topo.mesh_address(n)}:{dovecot.DOVEADM_PORT}"
                      for n in topo.dc_nodes("dc2"))  # fmt: skip
    assert f"SERVERS=({peer.private_ipv4}:{dovecot.DOVEADM_PORT} {others})\n" in script
    assert "-o doveadm_ssl=ssl mailbox update" in script and "lost mailbox GUID" in script
    # ... then merged by a full sync with each of them.
    assert 'sync_user "tcps:$server" "$2" -f' in script
    assert peer.public_ipv4 not in script
    assert "changed_round" in script and "full_round" in script
    cron = {f.path: f for f in active.files}[dovecot.DSYNC_CRON].content
    assert (
        f"*/{dovecot.DSYNC_FULL_EVERY_MIN} * * * * root {dovecot.DSYNC_SCRIPT} full 2>&1 |" in cron
    )
    assert topologies["dc1"].shared_ip("dc1") in script
    standby_script = {f.path: f for f in standby.files}[dovecot.DSYNC_SCRIPT].content
    assert "sync_users" not in standby_script and "exit 0" in standby_script
    parsed = in_base("bash", "-n", input=script)
    assert parsed.returncode == 0, parsed.stderr
