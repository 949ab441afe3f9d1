"""The metrics service's plan (cluster/services/metrics.py): on only with metricsCidrs, off
undoes it under the same step names, the exporter's password stays secret, and its MariaDB
account has the least privileges the exporter's documentation asks for."""

from __future__ import annotations

import functools
import re

from cluster.config import DC_NAMES
from cluster.hostcontext import HostContext
from cluster.hostplan import all_packages, build_host_plan
from cluster.lab.model import lab_topology
from cluster.material import ClusterSecrets, generate
from cluster.plan import PACKAGES_STEP, HostPlan, file_step_name, start_at_boot
from cluster.services import mariadb, metrics

HOST = "dc1-svr1"


@functools.cache
def secrets() -> ClusterSecrets:
    topo = lab_topology("dc1")
    return generate(topo.domain, DC_NAMES, {dc: topo.certificate_names(dc) for dc in DC_NAMES})


def plan(on: bool, host: str = HOST) -> HostPlan:
    sets = {} if on else {"metricsCidrs": []}
    return build_host_plan(lab_topology(host[:3], sets), host, secrets(), "lab")


def own_steps(p: HostPlan) -> set[str]:
    names = {file_step_name(f) for f in metrics.FILES} | {metrics.TIMER_STEP}
    return {s.name for s in p.steps if s.name.startswith("metrics.") or s.name in names}


def test_the_exporters_are_installed_only_when_on_but_baked_into_the_lab_base() -> None:
    for on in (True, False):
        common = plan(on).step(PACKAGES_STEP).script
        assert not any(p in common for p in metrics.OPTIONAL_PACKAGES)
    assert set(metrics.OPTIONAL_PACKAGES) <= set(all_packages())
    install = plan(True).step(metrics.INSTALL_STEP).script
    assert all(p in install for p in metrics.OPTIONAL_PACKAGES)
    assert "apt-get" not in plan(False).step(metrics.INSTALL_STEP).script


def test_off_has_the_same_steps_so_a_switch_runs_each_of_them() -> None:
    on, off = plan(True), plan(False)
    assert own_steps(on) == own_steps(off)
    # The files, the packages, the first run, the timer's enable step, one step per exporter.
    assert len(own_steps(on)) == len(metrics.FILES) + 3 + len(metrics.EXPORTERS)
    digests_on, digests_off = on.digests(), off.digests()
    for name in own_steps(on):
        assert digests_on[name] != digests_off[name], name
    assert not [s for s in off.steps if s.file and s.file.path in metrics.FILES]
    for name in metrics.EXPORTERS:
        script = off.step(f"metrics.{name}").script
        assert f"systemctl stop {name}" in script and start_at_boot(name, enabled=False) in script
    # The timer stopped, then a run it already started (which would write the file again),
    # before the step that removes the collector's file.
    stop = off.step(metrics.TIMER_STEP).script
    disable, end_run = "systemctl disable --now", f"systemctl stop {metrics.HEALTH_UNIT}.service"
    assert disable in stop and end_run in stop and stop.index(disable) < stop.index(end_run)
    ordered = [st.name for st in off.ordered()]
    assert ordered.index(metrics.TIMER_STEP) < ordered.index(metrics.FIRST_RUN_STEP)
    assert f"rm -f {metrics.PROM_FILE}" in off.step(metrics.FIRST_RUN_STEP).script
    assert metrics.HEALTH_TIMER in {f.path for f in on.files}


def test_defaults_are_written_before_the_packages_start_the_daemons() -> None:
    order = [s.name for s in plan(True).ordered()]
    install = order.index(metrics.INSTALL_STEP)
    for path in metrics.DEFAULTS.values():
        assert order.index(file_step_name(path)) < install, path


def test_the_exporters_listen_on_the_public_addresses_only() -> None:
    p = plan(True, "dc2-svr2")
    node = lab_topology("dc2").node("dc2-svr2")
    files = {f.path: f.content for f in p.files}
    for name, port in ((metrics.NODE_EXPORTER, 9100), (metrics.MYSQLD_EXPORTER, 9104)):
        args = files[metrics.DEFAULTS[name]]
        assert re.findall(r"--web\.listen-address=([^\s\"]+)", args) == [
            f"{node.public_ipv4}:{port}", f"[{node.public_ipv6}]:{port}"
        ], args  # fmt: skip
    assert "--web.listen-address=:9154" in files[metrics.DEFAULTS[metrics.POSTFIX_EXPORTER]]


def test_the_exporter_password_is_secret_and_never_on_a_command_line() -> None:
    p = plan(True)
    password = secrets().db_metrics
    cnf = next(f for f in p.files if f.path == metrics.MYSQLD_CNF)
    assert cnf.secret and cnf.mode == "0600" and cnf.owner == metrics.EXPORTER_USER
    assert f"password={password}\n" in cnf.content
    for step in p.steps:
        assert password not in step.command, step.name
        if password in step.stdin:
            assert step.secret, step.name
    assert all(password not in f.content for f in p.files if f.path != metrics.MYSQLD_CNF)


def test_the_exporter_account_has_least_privilege_and_goes_when_off() -> None:
    topo = lab_topology("dc1")
    node = topo.node(HOST)
    on = mariadb.users_sql(HostContext(topo, node, secrets()))
    user = f"'{mariadb.EXPORTER_USER}'@'localhost'"
    grants = [line for line in on.splitlines() if line.startswith("GRANT") and user in line]
    assert grants == [
        f"GRANT PROCESS, REPLICATION CLIENT, SLAVE MONITOR ON *.* TO {user};",
        f"GRANT SELECT ON performance_schema.* TO {user};",
    ]
    assert "WITH MAX_USER_CONNECTIONS 3" in on
    off_topo = lab_topology("dc1", {"metricsCidrs": []})
    off = mariadb.users_sql(HostContext(off_topo, off_topo.node(HOST), secrets()))
    assert f"DROP USER IF EXISTS {user};" in off
    assert secrets().db_metrics not in off
