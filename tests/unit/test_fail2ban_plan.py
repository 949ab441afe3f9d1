"""The plan's side of the bans (cluster/services/fail2ban.py): the loader is a systemd service of
the node package, its configuration is what mailnode.bans reads, every jail reads one source."""

from __future__ import annotations

import ipaddress
import json

import pytest

from cluster.hostplan import build_host_plan
from cluster.lab import addresses as A
from cluster.lab.driver import mesh_ip
from cluster.material import ClusterSecrets
from cluster.plan import HostPlan
from cluster.services import fail2ban, firewall, nodepkg, units
from cluster.topology import Topology
from mailnode import bans

NODES = [("dc1", "dc1-svr1"), ("dc2", "dc2-svr2")]


@pytest.fixture(params=NODES, ids=[n for _, n in NODES])
def plan(
    request: pytest.FixtureRequest, topologies: dict[str, Topology], secrets: ClusterSecrets
) -> HostPlan:
    stack, node = request.param
    return build_host_plan(topologies[stack], node, secrets, "lab")


def test_the_plans_configuration_is_what_the_node_program_reads(plan: HostPlan) -> None:
    files = {f.path: f.content for f in plan.files}
    cfg = bans.parse_config(json.loads(files[fail2ban.BANS_CONFIG]))
    assert cfg.node == plan.host
    assert (cfg.table, cfg.set4, cfg.set6) == (firewall.TABLE, firewall.BAN_SET4, firewall.BAN_SET6)
    assert cfg.sql_table == f"{fail2ban.DB}.{fail2ban.DB_TABLE}"
    assert cfg.poll_s <= 2, "a ban reaches every node within a couple of seconds"
    # The admin, loopback and the cluster's nodes are never banned, by the program either.
    never = [str(n) for n in cfg.never_ban]
    # The mesh too: a node's syncs and ssh to another come from its mesh address (seen in the
    # lab: dc1-svr2's banned on dc2-svr2, so no sync reached dc2-svr2).
    meshes = [mesh_ip(h) for h in ("dc1-svr1", "dc1-svr2", "dc2-svr1", "dc2-svr2")]
    for address in ("127.0.0.1", "::1", A.client_address(), A.client_address6(), *meshes):
        assert any(ipaddress.ip_address(address) in ipaddress.ip_network(n) for n in never), address
    assert not any(ipaddress.ip_address("192.0.2.150") in ipaddress.ip_network(n) for n in never)


def test_the_loader_is_a_service_of_the_node_package_and_no_cron_job(plan: HostPlan) -> None:
    files = {f.path: f.content for f in plan.files}
    unit = files[units.unit_path(f"{fail2ban.LOADER_UNIT}.service")]
    assert f"ExecStart={fail2ban.BANS_SCRIPT} loop\n" in unit
    assert "Restart=always" in unit
    assert "from mailnode.bans import main" in files[fail2ban.BANS_SCRIPT]
    enabled = plan.step(f"{fail2ban.LOADER_UNIT}.enabled")
    # Restarted when the program or its configuration changes.
    for watched in (nodepkg.PACKAGE_STEP, f"file:{fail2ban.BANS_CONFIG}"):
        assert watched in enabled.watch, enabled.watch
    assert not [p for p in files if p.startswith("/etc/cron.d/") and "bans" in p]
    assert not [s.name for s in plan.steps if "mailcluster-bans" in s.script and "cron" in s.script]


def test_every_jail_reads_the_journal_or_one_file() -> None:
    for jail in fail2ban.JAILS:
        assert bool(jail.journalmatch) != bool(jail.logpath), jail
    # Only Postfix Admin, whose failures are in Apache's error log, polls a file.
    assert [j.name for j in fail2ban.JAILS if j.logpath] == ["postfixadmin"]


def test_dovecot_logs_every_failed_login_for_its_jail(plan: HostPlan) -> None:
    """The dovecot jail counts Dovecot's per-attempt lines, which only auth_verbose writes
    (templates/etc/dovecot/dovecot.conf.j2)."""
    conf = next(f.content for f in plan.files if f.path == "/etc/dovecot/dovecot.conf")
    assert "\nauth_verbose = yes\n" in conf
    assert "\nauth_verbose_passwords" not in conf, "a failed password must never be logged"
