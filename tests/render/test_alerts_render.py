"""Health and alerts as rendered for every node: the scripts parse (bash -n, and the node's own
python3 compiles the alerts script), the timer runs the script every minute, and the config the
script reads is complete. (systemd-analyze verify of the units: test_systemd_units.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rendertools import files, in_base

from cluster.plan import HostPlan
from cluster.services import alerts, health, heartbeat, replication, sync
from cluster.topology import Topology

BASH_SCRIPTS = (health.HEALTH_SCRIPT, sync.WEBSYNC, heartbeat.GUARD_SCRIPT)


@pytest.mark.checkers
def test_scripts_parse(plan: tuple[Topology, HostPlan], tmp_path: Path) -> None:
    _, hp = plan
    rendered = files(hp)
    for path in BASH_SCRIPTS:
        script = tmp_path / path.rsplit("/", 1)[1]
        script.write_text(rendered[path])
        proc = in_base("bash", "-n", str(script))
        assert proc.returncode == 0, f"{path}: {proc.stderr}"
    script = tmp_path / "mailcluster-alerts"
    script.write_text(rendered[alerts.ALERTS_SCRIPT])
    proc = in_base("python3", "-c", "import ast, sys; ast.parse(open(sys.argv[1]).read())",
                   str(script))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert rendered[alerts.ALERTS_SCRIPT].startswith("#!/usr/bin/python3\n")


def test_health_reports_replication_websync_and_backup(plan: tuple[Topology, HostPlan]) -> None:
    _, hp = plan
    script = files(hp)[health.HEALTH_SCRIPT]
    # The controller's own checks (mailnode/replication/health.py), or "down" when it fails.
    assert f"{replication.SCRIPT} health || emit replication fail down" in script
    assert "dsync" not in script and "replicator" not in script
    assert health.BACKUP_STAMP in script and sync.WEBSYNC_STAMP in script


def test_timer_runs_the_script_every_minute(plan: tuple[Topology, HostPlan]) -> None:
    _, hp = plan
    rendered = files(hp)
    assert "OnCalendar=minutely" in rendered[alerts.TIMER]
    assert f"ExecStart={alerts.ALERTS_SCRIPT} run" in rendered[alerts.SERVICE]
    assert f"TimeoutStartSec={alerts.RUN_TIMEOUT_S}" in rendered[alerts.SERVICE]


def test_config_is_complete_and_private(plan: tuple[Topology, HostPlan]) -> None:
    topo, hp = plan
    step = hp.step(f"file:{alerts.ALERTS_CONFIG}")
    assert step.file is not None and step.file.mode == "0600" and step.file.secret
    conf = json.loads(step.file.content)
    assert conf["emails"] == [topo.config.postmaster]
    assert conf["smtp_hosts"] == ["127.0.0.1", topo.shared_ip(topo.active_dc)]
    assert set(conf["dns_nodes"]) == {n.name for n in topo.nodes}
    assert {r["check"] for r in conf["rules"]} >= {"mariadb.replication", "replication", "disk"}
