"""Metrics: the rendered exporter arguments and the health converter, run by Debian's own
exporters in the lab's base (in a network namespace of their own, holding the node's public
addresses on ``lo``): each exporter accepts its arguments and answers on both families, and
the node exporter's textfile collector reads what ``mailcluster-health-metrics`` made of sample
checks without an error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rendertools import in_base, write_tree

from cluster.hostplan import build_host_plan
from cluster.material import ClusterSecrets
from cluster.ports import MYSQLD_EXPORTER_PORT, NODE_EXPORTER_PORT, POSTFIX_EXPORTER_PORT
from cluster.services import health, metrics
from cluster.topology import Topology

HOST = "dc1-svr2"
# What mailcluster-health prints (its contract), including what the converter must survive: a
# word as value, a duplicate name, a malformed line, a label value that needs escaping.
SAMPLE = (
    "mariadb.replication\tok\t0\tio=Yes sql=Yes\n"
    "heartbeat\tok\tstandby\tpeer dc1-svr1 active\n"
    "disk.os\tfail\t91\t/ 91% used\n"
    'odd"name\\x\tok\t-1.5\tx\n'
    "disk.os\tok\t1\ta duplicate\n"
    "not a check\n"
)

SCRIPT = r"""set -euo pipefail
root=$1 v4=$2 v6=$3 sample=$4
ip link set lo up
ip addr add "$v4/32" dev lo
ip -6 addr add "$v6/128" dev lo nodad
install -D -m 0755 "$sample" {health}
install -d {textfile_dir}
bash "$root{converter}"
install -D -m 0600 "$root{cnf}" {cnf}
touch /var/log/mail.log
run() {{ (. "$root/etc/default/$1"; exec "$1" $ARGS "${{@:2}}") >"/tmp/$1.log" 2>&1 & }}
run prometheus-node-exporter --collector.disable-defaults --collector.textfile
run prometheus-mysqld-exporter
run prometheus-postfix-exporter
python3 - "$v4" "$v6" <<'EOF'
import json, sys, time, urllib.request
v4, v6 = sys.argv[1:3]
out = {{}}
for host in (v4, f"[{{v6}}]"):
    for port in ({ports}):
        url = f"http://{{host}}:{{port}}/metrics"
        for _ in range(100):
            try:
                out[url] = urllib.request.urlopen(url, timeout=2).read().decode()
                break
            except OSError as e:
                out[url] = f"error {{e}}"
                time.sleep(0.1)
print(json.dumps(out))
EOF
"""


@pytest.mark.checkers
def test_the_exporters_take_their_arguments_and_read_the_checks(
    topologies: dict[str, Topology], secrets: ClusterSecrets, tmp_path: Path
) -> None:
    plan = build_host_plan(topologies["dc1"], HOST, secrets, "lab")
    root = write_tree(plan, tmp_path / "root")
    sample = tmp_path / "health"
    sample.write_text(f"#!/bin/sh\ncat <<'EOF'\n{SAMPLE}EOF\n")
    node = topologies["dc1"].node(HOST)
    assert node.public_ipv6
    script = SCRIPT.format(
        health=health.HEALTH_SCRIPT,
        textfile_dir=metrics.TEXTFILE_DIR,
        converter=metrics.HEALTH_METRICS,
        cnf=metrics.MYSQLD_CNF,
        ports=f"{NODE_EXPORTER_PORT}, {MYSQLD_EXPORTER_PORT}, {POSTFIX_EXPORTER_PORT}",
    )
    proc = in_base("unshare", "--net", "bash", "-c", script, "metrics", str(root),
                   node.public_ipv4, node.public_ipv6, str(sample))  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got: dict[str, str] = json.loads(proc.stdout.strip().splitlines()[-1])
    for host in (node.public_ipv4, f"[{node.public_ipv6}]"):
        url = f"http://{host}:{{}}/metrics".format
        textfile = got[url(NODE_EXPORTER_PORT)]
        assert "node_textfile_scrape_error 0" in textfile, textfile[-2000:]
        for line in (
            'mailcluster_check_ok{check="disk.os"} 0',
            'mailcluster_check_value{check="disk.os"} 91',
            'mailcluster_check_ok{check="mariadb.replication"} 1',
            'mailcluster_check_value{check="mariadb.replication"} 0',
            'mailcluster_check_info{check="heartbeat",value="standby"} 1',
            'mailcluster_check_value{check="odd\\"name\\\\x"} -1.5',
            "mailcluster_health_checks 4",
            "mailcluster_health_malformed_lines 2",
            "mailcluster_health_exit_code 0",
        ):
            assert line in textfile, (line, textfile[-2000:])
        # No MariaDB in the checkroot: the exporter answers and says so.
        assert "mysql_up 0" in got[url(MYSQLD_EXPORTER_PORT)]
        assert "postfix_up{" in got[url(POSTFIX_EXPORTER_PORT)]
