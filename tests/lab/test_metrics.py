"""Metrics (issue 11): the Prometheus exporters of every node, scraped as an operator's
Prometheus would: from the client, whose own addresses are the lab's ``metricsCidrs``
(cluster/lab/model.py), over IPv4 and IPv6. A stranger in the client's network (an address
outside ``metricsCidrs``, added for this module) gets no answer at all. Switching metrics off on
a stack stops its exporters, and on again starts them.
"""

from __future__ import annotations

import json
import secrets
import sys
import time
from collections.abc import Iterator

import pytest

from cluster import ports
from cluster.hostplan import build_host_plan
from cluster.lab import addresses as A
from cluster.lab.driver import Lab, public_ip
from cluster.lab.model import LAB_OVERRIDES, lab_topology
from cluster.lab.secrets import load_secrets
from cluster.plan import CHANGED_MARK
from cluster.services import metrics

DC1 = ("dc1-svr1", "dc1-svr2")
DC2 = ("dc2-svr1", "dc2-svr2")
EXPORTER_PORTS = (ports.NODE_EXPORTER_PORT, ports.MYSQLD_EXPORTER_PORT, ports.POSTFIX_EXPORTER_PORT)
# Outside test_security's strangers (1xx), fresh per run.
_STRANGER_HOST = 200 + secrets.randbelow(50)
STRANGER = f"{A.CLIENT_NET}.{_STRANGER_HOST}"
STRANGER6 = A.v6(A.CLIENT_NET6, _STRANGER_HOST)
ADMIN, ADMIN6 = A.client_address(), A.client_address6()

# Runs in the client: GET /metrics of every (address, port) from a chosen source address; the
# body, or "filtered" (no answer in time: a firewall drop), "refused" (RST) or another error.
SCRAPE = r"""
import http.client, json, socket, sys
src4, src6, targets, timeout = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), \
    float(sys.argv[4])
out = {}
for host, port in targets:
    src = src6 if ":" in host else src4
    conn = http.client.HTTPConnection(host, port, timeout=timeout,
                                      source_address=(src, 0) if src else None)
    key = f"{host} {port}"
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        out[key] = resp.read().decode() if resp.status == 200 else f"HTTP {resp.status}"
    except ConnectionRefusedError:
        out[key] = "refused"
    except (TimeoutError, socket.timeout):
        out[key] = "filtered"
    except OSError as e:
        out[key] = f"error {e}"
    finally:
        conn.close()
print(json.dumps(out))
"""


def public_ip6(host: str) -> str:
    dc, slot = host.split("-")
    address = A.lab_dc_addresses(dc).nodes[slot].public_ipv6
    assert address is not None
    return address


def scrape(
    lab: Lab,
    targets: list[tuple[str, int]],
    src4: str = ADMIN,
    src6: str = ADMIN6,
    timeout: float = 5,
) -> dict[str, str]:
    """From the admin's own addresses unless told otherwise: with the stranger's addresses on
    the same interface, the kernel might pick one of those as the source."""
    proc = lab.client(sys.executable, "-c", SCRAPE, src4, src6, json.dumps(targets),
                      str(timeout))  # fmt: skip
    result: dict[str, str] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def series(body: str, name: str) -> list[str]:
    """The sample lines of metric ``name`` (with or without labels)."""
    return [line for line in body.splitlines() if line.split("{")[0].split(" ")[0] == name]


@pytest.fixture(scope="module")
def stranger(lab: Lab) -> Iterator[tuple[str, str]]:
    dev = A.INTERFACE
    lab.client("ip", "addr", "add", f"{STRANGER}/{A.PREFIXLEN}", "dev", dev, check=False)
    lab.client("ip", "-6", "addr", "add", f"{STRANGER6}/{A.PREFIXLEN6}", "dev", dev, "nodad",
               check=False)  # fmt: skip
    try:
        yield STRANGER, STRANGER6
    finally:
        lab.client("ip", "addr", "del", f"{STRANGER}/{A.PREFIXLEN}", "dev", dev, check=False)
        lab.client("ip", "-6", "addr", "del", f"{STRANGER6}/{A.PREFIXLEN6}", "dev", dev,
                   check=False)  # fmt: skip


def test_the_admin_scrapes_every_exporter_over_both_families(lab: Lab) -> None:
    for host in (*DC1, *DC2):
        targets = [(a, p) for a in (public_ip(host), public_ip6(host)) for p in EXPORTER_PORTS]
        got = scrape(lab, targets)
        for address in (public_ip(host), public_ip6(host)):
            node = got[f"{address} {ports.NODE_EXPORTER_PORT}"]
            assert series(node, "node_filesystem_size_bytes"), (host, address, node[:300])
            # The cluster's own checks, through the textfile collector, all of them read.
            assert not [s for s in series(node, "node_textfile_scrape_error") if s[-1] != "0"]
            checks = {s.split('"')[1]: s.rsplit(" ", 1)[1]
                      for s in series(node, "mailcluster_check_ok")}  # fmt: skip
            assert {"mariadb.replication", "postfix.queue", "disk.os", "heartbeat"} <= set(checks)
            assert set(checks.values()) <= {"0", "1"}
            assert series(node, "mailcluster_check_value"), host
            assert "mailcluster_health_exit_code 0" in series(node, "mailcluster_health_exit_code")
            mysqld = got[f"{address} {ports.MYSQLD_EXPORTER_PORT}"]
            assert "mysql_up 1" in series(mysqld, "mysql_up"), (host, mysqld[:300])
            # The account can read replication state (REPLICATION CLIENT): the replicas say so.
            postfix = got[f"{address} {ports.POSTFIX_EXPORTER_PORT}"]
            up = series(postfix, "postfix_up")
            # Postfix runs in the active data centre and is stopped in the standby one: the
            # exporter answers everywhere and tells which.
            want = "1" if host in DC1 else "0"
            assert up and all(s.endswith(f" {want}") for s in up), (host, up)


def test_a_replica_exports_its_replication(lab: Lab) -> None:
    got = scrape(lab, [(public_ip("dc2-svr2"), ports.MYSQLD_EXPORTER_PORT)])
    body = next(iter(got.values()))
    running = series(body, "mysql_slave_status_slave_sql_running")
    assert running and running[0].endswith(" 1"), body[:300]


def test_a_stranger_gets_no_answer(lab: Lab, stranger: tuple[str, str]) -> None:
    targets = [(a, p) for h in (*DC1, *DC2) for a in (public_ip(h), public_ip6(h))
               for p in EXPORTER_PORTS]  # fmt: skip
    got = scrape(lab, targets, *stranger, timeout=2)
    assert set(got.values()) == {"filtered"}, {k: v[:40] for k, v in got.items()}


def test_metrics_steps_run_again_change_nothing(lab: Lab) -> None:
    host = "dc1-svr2"
    plan = build_host_plan(lab_topology("dc1"), host, load_secrets(), "lab")
    # The files, the package step and the first run; the exporters' (re)start steps run only
    # when a file they watch changed: the appliers skip them by digest, as every service's.
    mine = [s for s in plan.steps if (s.file and s.file.path in metrics.FILES)
            or s.name in (metrics.INSTALL_STEP, metrics.FIRST_RUN_STEP)]  # fmt: skip
    assert len(mine) == len(metrics.FILES) + 2, [s.name for s in mine]
    for step in mine:
        out = lab.exec(host, "bash", "-c", "set -euo pipefail\n" + step.script, input=step.stdin)
        assert CHANGED_MARK not in out.stdout, (step.name, out.stdout)


def test_off_stops_the_exporters_and_on_starts_them_again(lab: Lab) -> None:
    host = "dc2-svr2"
    on = json.dumps(LAB_OVERRIDES["metricsCidrs"])
    try:
        lab.run("apply", "--stack", "dc2", "--set", "metricsCidrs=[]")
        for name in metrics.EXPORTERS:
            st = lab.exec(host, "service", name, "status", check=False)
            assert st.returncode != 0, (name, st.stdout)
        # Each file is gone (ls fails as soon as one is, and lists the others).
        files = (metrics.MYSQLD_CNF, metrics.PROM_FILE, metrics.HEALTH_TIMER)
        gone = lab.exec(host, "ls", *files, check=False)
        assert gone.stdout == "", gone.stdout
        for path in files:
            assert f"cannot access '{path}': No such file or directory" in gone.stderr, gone
        # The firewall drops the ports again, even from the admin.
        got = scrape(lab, [(public_ip(host), p) for p in EXPORTER_PORTS], timeout=2)
        assert set(got.values()) == {"filtered"}, got
    finally:
        lab.run("apply", "--stack", "dc2", "--set", f"metricsCidrs={on}")
    # The init script returns before the daemon listens: give it a few seconds.
    target = (public_ip6(host), ports.NODE_EXPORTER_PORT)
    seen: list[str] = []

    def answered() -> str | None:
        seen.append(scrape(lab, [target])[f"{target[0]} {target[1]}"][:80])
        return seen[-1] if seen[-1].startswith("#") else None

    t0 = time.monotonic()
    try:
        lab.wait_for("dc2-svr2's node exporter back over IPv6", answered, timeout=60)
    finally:
        print(f"scrapes until it answered: {seen}")
    print(f"node exporter answered {time.monotonic() - t0:.1f}s after the apply")
    body = scrape(lab, [target])[f"{target[0]} {target[1]}"]
    assert series(body, "mailcluster_check_ok"), body[:300]
