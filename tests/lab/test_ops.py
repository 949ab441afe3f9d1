"""The operator CLI (`python -m cluster.ops --lab ...`) against the lab: status, and accounts
through Postfix Admin's own code on the active node."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from typing import Any

import pytest

from cluster.lab.driver import REPO, DriverError, Lab, shared_ip
from cluster.services import postfix

VIP = shared_ip("dc1")


def ops(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cluster.ops", "--lab", *args],
        cwd=REPO,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def status(lab: Lab) -> tuple[int, dict[str, Any]]:
    proc = ops("status", "--json")
    return proc.returncode, json.loads(proc.stdout)


def failing(data: dict[str, Any]) -> set[tuple[str, str]]:
    return {(c["name"], c["node"]) for c in data["checks"] if not c["ok"]}


def test_status_of_a_healthy_lab(lab: Lab) -> None:
    last: list[dict[str, Any]] = []

    def healthy() -> dict[str, Any] | None:
        rc, data = status(lab)
        last[:] = [c for c in data["checks"] if not c["ok"]]
        return data if rc == 0 else None

    try:
        data = lab.wait_for("a healthy status", healthy, 120)
    except DriverError as e:
        raise DriverError(f"{e}; failing checks: {last}") from None
    assert data["ok"] is True
    names = {c["name"] for c in data["checks"]}
    assert {"mariadb.replication", "bind.serial", "bind.serial-matches-master", "postfix.queue",
            "disk.os", "disk.volume", "tls.users", "tls.cluster", "heartbeat",
            "heartbeat.resources", "heartbeat.one-holder", "cluster.writer"} <= names  # fmt: skip
    # Heartbeat's count of each node's resources matches what the node holds, on every node.
    counted = {c["node"]: c["value"] for c in data["checks"] if c["name"] == "heartbeat.resources"}
    assert len(counted) == 4 and set(counted.values()) <= {"none", "all", "local", "foreign"}
    nodes = {c["node"] for c in data["checks"] if c["name"] == "mariadb.replication"}
    assert nodes == {"dc1-svr1", "dc1-svr2", "dc2-svr1", "dc2-svr2"}
    writer = next(c for c in data["checks"] if c["name"] == "cluster.writer")
    assert writer["value"] in ("dc1-svr1", "dc1-svr2")


def test_a_message_cut_off_by_a_crash_is_not_queued_mail(lab: Lab) -> None:
    """A crash in the middle of a receipt leaves a file in Postfix's incoming queue that Postfix
    never finished (mode 0600): not a message anyone got a 250 for, and on a standby no Postfix
    runs to remove it. An hour old, it must not fail the queue check; the same file marked
    finished (0700, a message acknowledged and not yet delivered) must."""
    host, name = "dc2-svr2", "/var/spool/postfix/incoming/MCLABCUT1"

    def queue_check() -> dict[str, Any]:
        _, data = status(lab)
        return next(c for c in data["checks"] if (c["name"], c["node"]) == ("postfix.queue", host))

    lab.exec(host, "sh", "-c", f"install -m 0600 -o postfix /dev/null {name} && "
             f"touch -d '-1 hour' {name}")  # fmt: skip
    try:
        unfinished = queue_check()
        lab.exec(host, "chmod", "0700", name)
        finished = queue_check()
    finally:
        lab.exec(host, "rm", "-f", name)
    assert unfinished["ok"] and unfinished["value"] == "0", unfinished
    assert not finished["ok"] and finished["value"] == "1", finished


# Heartbeat answers "transition" for ever after it lost a takeover's messages (README: the active
# node crashes): this cl_status says so, and asks the real one everything else.
TRANSITION_CL_STATUS = """#!/bin/sh
[ "$1" = rscstatus ] && { echo transition; exit 0; }
exec /usr/bin/cl_status "$@"
"""


def test_health_names_heartbeat_counting_resources_the_node_does_not_hold(lab: Lab) -> None:
    """The standby's own health check, with Heartbeat's answer the one a lost takeover left:
    it fails, naming both sides; with the real answer it passes."""
    standby = next(h for h in ("dc1-svr1", "dc1-svr2") if lab.role(h)["role"] != "active")
    script = (
        "d=$(mktemp -d) && cat > $d/cl_status && chmod 0755 $d/cl_status && "
        "PATH=$d:$PATH /usr/local/sbin/mailcluster-health; rm -r $d"
    )
    faked = lab.exec(standby, "bash", "-c", script, input=TRANSITION_CL_STATUS).stdout
    real = lab.exec(standby, "/usr/local/sbin/mailcluster-health").stdout
    line = {ln.split("\t")[0]: ln.split("\t")[1:] for ln in faked.splitlines() if "\t" in ln}
    assert line["heartbeat.resources"][:2] == ["fail", "transition"], faked
    assert "it is the standby" in line["heartbeat.resources"][2]
    assert "heartbeat.resources\tok\tnone\t" in real, real


def test_status_names_a_stopped_replica_and_recovers(lab: Lab) -> None:
    lab.sql("dc2-svr2", "STOP SLAVE")
    try:
        rc, data = status(lab)
        assert rc == 1
        assert ("mariadb.replication", "dc2-svr2") in failing(data)
    finally:
        lab.sql("dc2-svr2", "START SLAVE")
    lab.wait_for("replication back", lambda: status(lab)[0] == 0, 60)


# Postfix's MySQL maps as the nodes configure them, looked up through the running Postfix's
# proxymap (the process that keeps the connections).
PROXY_MAPS = tuple(m.name for m in postfix.MAPS)


def lookups(lab: Lab, host: str) -> dict[str, int]:
    """Each proxied map's `postmap -q` exit status on ``host``: 0 found, 1 not found or an
    error (then stderr says "query error")."""
    out: dict[str, int] = {}
    for m in PROXY_MAPS:
        proc = lab.exec(host, "postmap", "-q", "example.com",
                        f"proxy:mysql:/etc/postfix/mysql/{m}.cf", check=False)  # fmt: skip
        out[m] = -1 if "error" in proc.stderr else proc.returncode
    return out


def test_postfix_answers_at_once_after_mariadb_restarts(lab: Lab) -> None:
    """A MariaDB restart under a running Postfix (the guard's handover after a database
    failure restarts it on the old master, now the standby; an upgrade; a configuration change):
    the first lookup of every map answers, where Postfix's kept connections would fail it with
    "Lost connection to server during query" (a 451 for a sender; drill 2 once got it after
    drill 4). Seen to fail without mariadb.service's drop-in."""
    (holder,) = lab.holders(("dc1-svr1", "dc1-svr2"))
    standby = "dc1-svr2" if holder == "dc1-svr1" else "dc1-svr1"
    before = lookups(lab, standby)  # the proxymap now holds a connection per map
    assert before["virtual_domains"] == 0 and -1 not in before.values(), before

    def proxymaps() -> set[str]:
        out = lab.exec(standby, "pgrep", "-f", "^proxymap -t unix", check=False).stdout
        return set(out.split())

    holding = proxymaps()
    assert holding, "no proxymap holds the maps' connections"
    lab.exec(standby, "systemctl", "restart", "mariadb")
    # The processes that held connections to the old server are gone, whatever their next
    # query would have done (Postfix 3.10 sometimes reconnects at once and sometimes marks the
    # server down for a minute: both were seen), and every map answers as before.
    assert not holding & proxymaps(), (holding, proxymaps())
    assert lookups(lab, standby) == before
    lab.wait_for("replication back", lambda: status(lab)[0] == 0, 60)


def test_day_one_accounts(lab: Lab) -> None:
    domain = f"d{secrets.token_hex(3)}.example.net"
    admin = f"admin@{domain}"
    user = f"alice@{domain}"
    pw = "Good" + secrets.token_hex(8) + "42"

    added = ops("domain", "add", domain)
    assert added.returncode == 0, added.stderr
    dup = ops("domain", "add", domain)
    assert dup.returncode == 2 and f"domain {domain} exists" in dup.stderr
    assert domain in ops("domain", "list").stdout.split()

    # An unknown domain and a weak password get clear errors, and nothing is made.
    unknown = ops("mailbox", "add", f"bob@nowhere-{domain}", stdin=pw + "\n")
    assert unknown.returncode == 2 and "unknown domain" in unknown.stderr
    weak = ops("mailbox", "add", user, stdin="abc\n")
    assert weak.returncode == 2 and "password" in weak.stderr.lower(), weak.stderr
    assert user not in ops("mailbox", "list", domain).stdout

    admin_added = ops("admin", "add", admin, stdin=pw + "\n")
    assert admin_added.returncode == 0, admin_added.stderr
    assert ops("admin", "add", admin, stdin=pw + "\n").returncode == 2

    made = ops("mailbox", "add", user, stdin=pw + "\n")
    assert made.returncode == 0, made.stderr
    assert ops("mailbox", "add", user, stdin=pw + "\n").returncode == 2
    listed = ops("mailbox", "list", domain).stdout
    assert listed.split("\t")[0] == user
    login = lab.clientlib("login", "--host", VIP, "--ca", lab.ca, "--user", user,
                          "--password", pw)  # fmt: skip
    assert login["ok"], login

    new_pw = "Other" + secrets.token_hex(8) + "17"
    assert ops("mailbox", "passwd", user, stdin=new_pw + "\n").returncode == 0
    relogin = lab.clientlib("login", "--host", VIP, "--ca", lab.ca, "--user", user,
                            "--password", new_pw)  # fmt: skip
    assert relogin["ok"], relogin
    # The old password stopped working at once: every node's auth cache was flushed (within its
    # TTL the cache would still accept it, see dovecot.py).
    old = lab.send(VIP, (user, pw), "mclab old password")
    assert not old["ok"] and old["smtp_code"] == 535, old

    alias = f"sales@{domain}"
    assert ops("alias", "add", alias, user).returncode == 0
    assert f"{alias}\t{user}" in ops("alias", "list", domain).stdout
    assert ops("alias", "del", alias).returncode == 0
    assert alias not in ops("alias", "list", domain).stdout

    assert ops("mailbox", "del", user).returncode == 0
    assert user not in ops("mailbox", "list", domain).stdout
    deleted = lab.send(VIP, (user, new_pw), "mclab deleted mailbox")
    assert not deleted["ok"] and deleted["smtp_code"] == 535, deleted
    gone = ops("mailbox", "del", user)
    assert gone.returncode == 2 and "no mailbox" in gone.stderr


@pytest.mark.parametrize("argv", [["mailbox", "add", "not-an-address"], ["domain", "add", "x"]])
def test_bad_input_is_refused_before_reaching_the_cluster(lab: Lab, argv: list[str]) -> None:
    proc = ops(*argv, stdin="whatever1A\n")
    assert proc.returncode == 2
    assert "not a" in proc.stderr
