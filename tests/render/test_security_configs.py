"""Host firewall, fail2ban and the sending limit: every node's rendered files pass the tools
the nodes run (``nft -c``, ``fail2ban-client --test``, ``fail2ban-regex``, ``bash -n``,
``policyd-rate-limit --get-config``), and the jails match the lines the daemons really log."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from rendertools import NODES, base, in_base, write_tree

from cluster.hostplan import build_host_plan
from cluster.lab.model import LAB_SUBMISSION_LIMIT
from cluster.material import ClusterSecrets
from cluster.plan import HostPlan
from cluster.services import fail2ban, firewall, ratelimit
from cluster.topology import Topology


@pytest.fixture(params=NODES, ids=[n for _, n in NODES])
def rendered(
    request: pytest.FixtureRequest,
    topologies: dict[str, Topology],
    secrets: ClusterSecrets,
    tmp_path: Path,
) -> tuple[HostPlan, Path]:
    stack, node = request.param
    plan = build_host_plan(topologies[stack], node, secrets, "lab")
    return plan, write_tree(plan, tmp_path)


def ok(*argv: str, input: str | None = None) -> str:
    proc = in_base(*argv, input=input)
    assert proc.returncode == 0, f"{' '.join(argv)}:\n{proc.stdout}{proc.stderr}"
    return proc.stdout + proc.stderr


@pytest.mark.checkers
def test_nft_accepts_the_host_firewall(rendered: tuple[HostPlan, Path]) -> None:
    _, root = rendered
    ok("nft", "-c", "-f", str(root / firewall.RULES.lstrip("/")))


def _fail2ban_dir(root: Path) -> Path:
    """Debian's /etc/fail2ban from the base, with the rendered files laid over it."""
    conf = root / "fail2ban"
    shutil.copytree(base().root / "etc/fail2ban", conf)
    shutil.copytree(root / "etc/fail2ban", conf, dirs_exist_ok=True)
    return conf


@pytest.mark.checkers
def test_fail2ban_accepts_the_jails(rendered: tuple[HostPlan, Path]) -> None:
    _, root = rendered
    conf = _fail2ban_dir(root)
    # --test reads every jail, filter and action; -d dumps the resolved configuration.
    out = ok("fail2ban-client", "-c", str(conf), "-d")
    for jail in fail2ban.JAILS:
        assert f"['add', '{jail.name}', 'polling']" in out, jail.name
        assert f"['set', '{jail.name}', 'addaction', 'mailcluster']" in out, jail.name
        ban = f"['actionban', '{fail2ban.BANS_SCRIPT} ban <ip> <bantime> {jail.name}']"
        assert ban in out, jail.name
        ignore = next(line for line in out.splitlines()
                      if line.startswith(f"['set', '{jail.name}', 'addignoreip'"))  # fmt: skip
        for address in ("'192.0.2.100/32'", "'198.51.100.10/32'", "'2001:db8:1::11/128'"):
            assert address in ignore, jail.name
        assert "'192.0.2.101" not in ignore


# Lines in the shape the lab's daemons write them (rsyslog's RFC 3339 time stamps), one failed
# login each.
SAMPLES = {
    "postfix-sasl": (
        "2026-11-25T22:50:01.123456+00:00 dc1-svr1 postfix/submission/smtpd[4242]: warning: "
        "unknown[192.0.2.101]: SASL PLAIN authentication failed: "
        "UGFzc3dvcmQ6"
    ),
    "dovecot": (
        "2026-11-25T22:50:02.123456+00:00 dc1-svr1 dovecot: imap-login: Disconnected: "
        "Connection closed (auth failed, 1 attempts in 2 secs): user=<x@example.com>, "
        "method=PLAIN, "
        "rip=192.0.2.101, lip=198.51.100.10, TLS, session=<abcdEFGH>"
    ),
    "roundcube-auth": (
        "2026-11-25T22:50:03.123456+00:00 dc1-svr1 roundcube: <abcd1234> IMAP Error: "
        "Login failed for x@example.com against 198.51.100.10 from 192.0.2.101. "
        "AUTHENTICATE PLAIN: "
        "Authentication failed. in /usr/share/roundcube/program/lib/Roundcube/rcube_imap.php "
        "on line 211 (POST /?_task=login&_action=login)"
    ),
    "postfixadmin": (
        "[Wed Nov 25 22:50:04.123456 2026] [php:notice] [pid 2670:tid 2670] "
        "[client 192.0.2.101:41346] "
        "PostfixAdmin admin login failed (username: x@example.com, ip_address: 192.0.2.101)"
    ),
    "sshd": (
        "2026-11-25T22:50:05.123456+00:00 dc1-svr1 sshd[777]: Failed password for root "
        "from 192.0.2.101 port 40001 ssh2"
    ),
}


@pytest.mark.checkers
@pytest.mark.parametrize("jail", [j.name for j in fail2ban.JAILS])
def test_each_jail_matches_a_failed_login(
    jail: str, topologies: dict[str, Topology], secrets: ClusterSecrets, tmp_path: Path
) -> None:
    plan = build_host_plan(topologies["dc1"], "dc1-svr1", secrets, "lab")
    conf = _fail2ban_dir(write_tree(plan, tmp_path))
    spec = next(j for j in fail2ban.JAILS if j.name == jail)
    name = spec.filter or spec.name
    filter_path = conf / "filter.d" / f"{name.split('[')[0]}.conf"
    args = name[name.index("[") + 1 : -1] if "[" in name else ""
    log = tmp_path / "sample.log"
    log.write_text(SAMPLES[jail] + "\n")
    target = f"{filter_path}[{args}]" if args else str(filter_path)
    out = ok("fail2ban-regex", "-v", str(log), target)
    assert "192.0.2.101" in out and "Failregex: 1 total" in out, out


@pytest.mark.checkers
def test_bans_script_is_valid_bash(rendered: tuple[HostPlan, Path]) -> None:
    _, root = rendered
    ok("bash", "-n", str(root / fail2ban.BANS_SCRIPT.lstrip("/")))


@pytest.mark.checkers
def test_policyd_reads_the_limit(rendered: tuple[HostPlan, Path]) -> None:
    _, root = rendered
    conf = str(root / ratelimit.CONF.lstrip("/"))
    limit = LAB_SUBMISSION_LIMIT  # the lab's submissionRateLimitPerHour (cluster/lab/model.py)
    assert ok("policyd-rate-limit", "--file", conf, "--get-config", "limits").strip() in (
        f"[[{limit}, 3600]]",
        f"[({limit}, 3600)]",
    )
    assert ok("policyd-rate-limit", "--file", conf, "--get-config", "SOCKET").strip() in (
        "['127.0.0.1', 8552]",
        "('127.0.0.1', 8552)",
    )
