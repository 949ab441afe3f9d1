"""Health and alerts as rendered for every node: the scripts parse (bash -n, and the node's own
python3 compiles the alerts script), the systemd units pass systemd-analyze verify, the cron
line does nothing under systemd, and the config the script reads is complete."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from rendertools import files, in_base

from cluster.plan import HostPlan
from cluster.services import alerts, dovecot, health, heartbeat, sync
from cluster.topology import Topology

BASH_SCRIPTS = (health.HEALTH_SCRIPT, dovecot.DSYNC_SCRIPT, sync.WEBSYNC, heartbeat.GUARD_SCRIPT)


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


@pytest.mark.checkers
def test_health_reports_dsync_websync_and_backup(plan: tuple[Topology, HostPlan]) -> None:
    topo, hp = plan
    script = files(hp)[health.HEALTH_SCRIPT]
    node = topo.node(hp.host)
    others = [n.name for n in topo.nodes if n.dc != node.dc]
    assert len(others) == 2
    for name in others:
        assert f"dsync.{name}" in script
    assert f"dsync.{node.name}" not in script
    assert health.BACKUP_STAMP in script and sync.WEBSYNC_STAMP in script


@pytest.mark.checkers
def test_units_verify(plan: tuple[Topology, HostPlan], tmp_path: Path) -> None:
    _, hp = plan
    rendered = files(hp)
    script = tmp_path / "mailcluster-alerts"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    units = []
    for path in (alerts.SERVICE, alerts.TIMER):
        unit = tmp_path / path.rsplit("/", 1)[1]
        # The unit as rendered, with ExecStart pointing at a stand-in (this machine has no
        # /usr/local/sbin/mailcluster-alerts, and verify checks that it is executable).
        unit.write_text(rendered[path].replace(alerts.ALERTS_SCRIPT, str(script)))
        units.append(str(unit))
    proc = subprocess.run(["systemd-analyze", "verify", *units], capture_output=True,
                          text=True, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "OnCalendar=minutely" in rendered[alerts.TIMER]


def test_cron_runs_only_without_systemd(plan: tuple[Topology, HostPlan]) -> None:
    _, hp = plan
    cron = files(hp)[alerts.CRON]
    line = next(x for x in cron.splitlines() if x.startswith("* * * * *"))
    assert "[ -d /run/systemd/system ] ||" in line and f"{alerts.ALERTS_SCRIPT} run" in line


def test_config_is_complete_and_private(plan: tuple[Topology, HostPlan]) -> None:
    topo, hp = plan
    step = hp.step(f"file:{alerts.ALERTS_CONFIG}")
    assert step.file is not None and step.file.mode == "0600" and step.file.secret
    conf = json.loads(step.file.content)
    assert conf["emails"] == [topo.config.postmaster]
    assert conf["smtp_hosts"] == ["127.0.0.1", topo.shared_ip(topo.active_dc)]
    assert set(conf["dns_nodes"]) == {n.name for n in topo.nodes}
    assert {r["check"] for r in conf["rules"]} >= {"mariadb.replication", "dsync", "disk"}
