"""mailcluster-bans (mailnode/bans.py) for real, inside the lab's base: MariaDB 11.8 with the
plan's table, nft sets of the rendered host firewall in two network namespaces ("A", the writer,
and "B", another node), the base's python3, the plan's configuration (only the socket, the
pending file and the role script point into the test's directory).

Proves what the unit tests' fakes cannot: the SQL runs on MariaDB and means what it should (the
later end wins, a lifted row, the watermark), the nft lines leave the sets as intended, a ban
reaches the other node's sets within a poll, a lift too, a standby's ban is recorded once it is
the writer, and elements expire by themselves."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from rendertools import in_base

from cluster.hostplan import build_host_plan
from cluster.material import ClusterSecrets
from cluster.services import fail2ban, firewall, nodepkg
from cluster.topology import Topology

pytestmark = pytest.mark.checkers

# Runs in the base as one process tree (one mount and PID namespace): starts MariaDB, makes the
# namespaces, runs the commands as a node runs them (`ip netns exec bansX mailcluster-bans ...`)
# and prints what it saw as JSON.
DRIVER = r"""
import json, os, subprocess, sys, time
tmp = sys.argv[1]
sock = f"{tmp}/db/sock"
out = {}

def sh(*argv, check=True, **kw):
    return subprocess.run(argv, check=check, capture_output=True, text=True, **kw)

def sql(query):
    return sh("mariadb", f"--socket={sock}", "-uroot", "-N", "-B", "-e", query).stdout.strip()

def bans(node, *args, check=True):
    return sh("ip", "netns", "exec", f"bans{node}", f"{tmp}/mailcluster-bans",
              "--config", f"{tmp}/{node}.json", *args, check=check)

def left(node, address):
    # Seconds the element still has in this node's set (None: not there).
    name = "banned6" if ":" in address else "banned4"
    got = json.loads(sh("ip", "netns", "exec", f"bans{node}", "nft", "-j", "list", "set",
                        "inet", "mailcluster", name).stdout)
    for item in got["nftables"]:
        for e in item.get("set", {}).get("elem", []):
            e = e["elem"] if isinstance(e, dict) else {"val": e}
            if e["val"] == address:
                return e.get("expires")
    return None

def until(what, test, timeout):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if test():
            return round(time.monotonic() - t0, 3)
        time.sleep(0.02)
    raise SystemExit(f"timed out after {timeout} s waiting for {what}: {json.dumps(out)}")

def row(address):
    return sql(f"SELECT jail, node, TIMESTAMPDIFF(SECOND, UTC_TIMESTAMP(), expires_at) "
               f"FROM mailcluster.bans WHERE address = '{address}'").split("\t")

os.makedirs(f"{tmp}/db")
sh("mariadb-install-db", "--no-defaults", f"--datadir={tmp}/db/data", "--user=root",
   "--auth-root-authentication-method=socket")
db = subprocess.Popen(["mariadbd", "--no-defaults", "--user=root", f"--datadir={tmp}/db/data",
                       f"--socket={sock}", "--skip-networking", "--log-bin=binlog",
                       "--server-id=1", "--binlog-format=ROW", f"--log-error={tmp}/db/err.log"])
loops = []
try:
    until("MariaDB", lambda: sh("mariadb-admin", f"--socket={sock}", "ping",
                                check=False).returncode == 0, 60)
    sh("mariadb", f"--socket={sock}", "-uroot", input=open(f"{tmp}/table.sql").read())
    for node in "AB":
        sh("ip", "netns", "add", f"bans{node}")
        sh("ip", "netns", "exec", f"bans{node}", "nft", "-f", f"{tmp}/rules.nft")
    open(f"{tmp}/writer-A", "w").close()

    # A ban on the writer: local at once, and in the table; its time counts from its start.
    done = bans("A", "ban", "192.0.2.7", "600", "dovecot", str(time.time() - 100))
    out["ban"] = {"row": row("192.0.2.7"), "left_A": left("A", "192.0.2.7")}
    # B's loader: what is in force first, then each change within a poll.
    loops.append(subprocess.Popen(["ip", "netns", "exec", "bansB", f"{tmp}/mailcluster-bans",
                                   "--config", f"{tmp}/B.json", "loop"]))
    out["initial_B"] = until("B loads 192.0.2.7", lambda: left("B", "192.0.2.7"), 10)
    out["initial_left_B"] = left("B", "192.0.2.7")
    bans("A", "ban", "192.0.2.8", "300", "sshd")
    out["reach_B_s"] = until("B gets 192.0.2.8", lambda: left("B", "192.0.2.8"), 10)
    bans("A", "unban", "192.0.2.8", "manual")
    out["lift_B_s"] = until("B lifts 192.0.2.8", lambda: left("B", "192.0.2.8") is None, 10)
    out["lifted_row"] = row("192.0.2.8")
    out["list"] = bans("A", "list").stdout

    # Two jails: the later end wins; the earlier jail's end lifts nothing.
    bans("A", "ban", "192.0.2.9", "600", "dovecot")
    bans("A", "ban", "192.0.2.9", "60", "postfix-sasl")
    out["two_jails_row"] = row("192.0.2.9")
    bans("A", "unban", "192.0.2.9", "postfix-sasl")
    out["two_jails_after_unban"] = {"row": row("192.0.2.9"), "left_A": left("A", "192.0.2.9")}

    # A standby's ban: local, pending; recorded once that node is the writer.
    bans("B", "ban", "2001:db8:9::1", "600", "sshd")
    out["standby"] = {"rows": sql("SELECT COUNT(*) FROM mailcluster.bans WHERE "
                                  "address = '2001:db8:9::1'"),
                      "pending": open(f"{tmp}/B.pending").read(),
                      "left_B": left("B", "2001:db8:9::1")}
    os.rename(f"{tmp}/writer-A", f"{tmp}/writer-B")
    out["recorded_s"] = until("B records its pending ban", lambda: sql(
        "SELECT node FROM mailcluster.bans WHERE address = '2001:db8:9::1'") == "dc1-svr2", 15)
    out["pending_after"] = open(f"{tmp}/B.pending").read()

    # Refused: never-banned and malformed addresses.
    refused = bans("B", "ban", "192.0.2.100", "600", "sshd", check=False)
    malformed = bans("B", "ban", "192.0.2.999", "600", "sshd", check=False)
    out["refused"] = [refused.returncode, refused.stderr, malformed.returncode, malformed.stderr]

    # A set emptied behind the loader's back (nftables restarted): `sync` puts the bans back.
    sh("ip", "netns", "exec", "bansA", "nft", "flush", "set", "inet", "mailcluster", "banned4")
    bans("A", "sync")
    out["resynced_A"] = [left("A", "192.0.2.7"), left("A", "192.0.2.9")]

    # Elements end by themselves.
    bans("B", "ban", "192.0.2.10", "2", "sshd")
    out["short"] = left("B", "192.0.2.10")
    out["expired_s"] = until("192.0.2.10 to expire", lambda: left("B", "192.0.2.10") is None, 6)

    # Rows that ended a day ago go when the writer's loader starts (it purges at once).
    sql("INSERT INTO mailcluster.bans VALUES ('192.0.2.11', 'sshd', 'dc1-svr1', "
        "UTC_TIMESTAMP() - INTERVAL 3 DAY, UTC_TIMESTAMP() - INTERVAL 2 DAY, "
        "UTC_TIMESTAMP(6) - INTERVAL 2 DAY)")
    for p in loops:
        p.terminate()
        p.wait()
    loops = [subprocess.Popen(["ip", "netns", "exec", "bansB", f"{tmp}/mailcluster-bans",
                               "--config", f"{tmp}/B.json", "loop"])]
    out["purged_s"] = until("the old row to go", lambda: sql(
        "SELECT COUNT(*) FROM mailcluster.bans WHERE address = '192.0.2.11'") == "0", 10)
finally:
    for p in loops:
        p.terminate()
        p.wait()
    db.terminate()
    db.wait()
print(json.dumps(out))
"""


def node_config(plan_json: str, tmp: Path, node: str, name: str) -> dict[str, Any]:
    cfg: dict[str, Any] = json.loads(plan_json)
    cfg.update(
        node=name,
        mysql=["mariadb", f"--socket={tmp}/db/sock", "-uroot"],
        pending=f"{tmp}/{node}.pending",
        role_script=f"{tmp}/role-{node}",
    )
    return cfg


@pytest.fixture
def results(topologies: dict[str, Topology], secrets: ClusterSecrets, tmp_path: Path) -> Any:
    plan = build_host_plan(topologies["dc1"], "dc1-svr1", secrets, "lab")
    files = {f.path: f.content for f in plan.files}
    shutil.copytree(nodepkg.SOURCE, tmp_path / "pkg" / "mailnode",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    # The entry point as the plan writes it, pointed at the copy of the package.
    shim = files[fail2ban.BANS_SCRIPT].replace(nodepkg.INSTALL_DIR, str(tmp_path / "pkg"))
    (tmp_path / "mailcluster-bans").write_text(shim)
    (tmp_path / "mailcluster-bans").chmod(0o755)
    (tmp_path / "rules.nft").write_text(files[firewall.RULES])
    (tmp_path / "table.sql").write_text(fail2ban.TABLE_SQL)
    for node, name in (("A", "dc1-svr1"), ("B", "dc1-svr2")):
        conf = node_config(files[fail2ban.BANS_CONFIG], tmp_path, node, name)
        (tmp_path / f"{node}.json").write_text(json.dumps(conf))
        role = tmp_path / f"role-{node}"
        role.write_text(f'#!/bin/sh\n[ "$1" = is-writer ] && [ -e {tmp_path}/writer-{node} ]\n')
        role.chmod(0o755)
    (tmp_path / "driver.py").write_text(DRIVER)
    proc = in_base("python3", str(tmp_path / "driver.py"), str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_bans_on_a_real_database_and_real_sets(results: Any) -> None:
    r = results
    print(json.dumps(r, indent=1))
    # The ban counts from its start (100 s ago): 500 s left, on A and in the table.
    jail, node, secs = r["ban"]["row"]
    assert (jail, node) == ("dovecot", "dc1-svr1") and 495 <= int(secs) <= 500, r["ban"]
    assert 495 <= r["ban"]["left_A"] <= 500, r["ban"]
    assert 480 <= r["initial_left_B"] <= 500, r
    # A new ban and a lift reach the other node within one poll (1 s) plus 1 s for a loaded
    # machine; measured from the command's return, so the loader's own share.
    poll = fail2ban.POLL_S
    assert r["reach_B_s"] < poll + 1, r
    assert r["lift_B_s"] < poll + 1, r
    assert int(r["lifted_row"][2]) <= 0, r["lifted_row"]
    assert "192.0.2.7\tdovecot\tdc1-svr1\t" in r["list"] and "192.0.2.8" not in r["list"]
    # The later end wins, with its jail; the shorter jail's end lifts nothing.
    jail, _, secs = r["two_jails_row"]
    assert jail == "dovecot" and 595 <= int(secs) <= 600, r["two_jails_row"]
    after = r["two_jails_after_unban"]
    assert after["row"][0] == "dovecot" and int(after["row"][2]) > 590, after
    assert after["left_A"] > 590, after
    # The standby's ban: local and pending, no row; recorded when it is the writer.
    standby = r["standby"]
    assert standby["rows"] == "0" and standby["pending"].startswith("2001:db8:9::1 600 sshd ")
    assert 595 <= standby["left_B"] <= 600, standby
    assert r["recorded_s"] < 15 and r["pending_after"] == "", r
    rc, err, rc2, err2 = r["refused"]
    assert rc == 2 and "refusing to ban 192.0.2.100: it is in 192.0.2.100/32" in err, err
    assert rc2 == 2 and "bad address '192.0.2.999': not an IPv4 or IPv6 address" in err2, err2
    assert all(left is not None and left > 480 for left in r["resynced_A"]), r["resynced_A"]
    # A 2-s ban is there, and gone by itself 2 s later (measured up to 2.4 s here: each look is
    # an `ip netns exec nft` of ~0.1 s on a loaded machine; 2 s of margin).
    assert r["short"] is not None and r["short"] <= 2, r
    assert r["expired_s"] < 2 + 2, r
    assert r["purged_s"] < 5, r
