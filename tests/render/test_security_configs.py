"""Host firewall, fail2ban and the sending limit: every node's rendered files pass the tools
the nodes run (``nft -c``, ``fail2ban-client -d``, ``fail2ban-regex``,
``policyd-rate-limit --get-config``), and the jails match the lines the daemons really log."""

from __future__ import annotations

import re
import shlex
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
    # -d reads every jail, filter and action and dumps the resolved configuration.
    out = ok("fail2ban-client", "-c", str(conf), "-d")
    for jail in fail2ban.JAILS:
        assert f"['add', '{jail.name}', '{jail.backend}']" in out, jail.name
        if jail.journalmatch:
            # The jail's own match (for sshd: not Debian's default in jail.d).
            terms = ", ".join(repr(t) for t in shlex.split(jail.journalmatch))
            assert f"['set', '{jail.name}', 'addjournalmatch', {terms}]" in out, jail.name
        else:
            assert f"['set', '{jail.name}', 'addlogpath', '{jail.logpath}', 'head']" in out
        assert f"['set', '{jail.name}', 'addaction', 'mailcluster']" in out, jail.name
        action = next(
            line
            for line in out.splitlines()
            if line.startswith(f"['multi-set', '{jail.name}', 'action', 'mailcluster'")
        )
        ban = f"['actionban', '{fail2ban.BANS_SCRIPT} ban <ip> <bantime> {jail.name} <time>']"
        assert ban in action, jail.name
        # A stop or restart of fail2ban lifts nothing (the flush does not unban one by one).
        assert "['actionflush', 'true']" in action, jail.name
        assert f"['set', '{jail.name}', 'usedns', 'no']" in out
        ignore = next(line for line in out.splitlines()
                      if line.startswith(f"['set', '{jail.name}', 'addignoreip'"))  # fmt: skip
        for address in ("'192.0.2.100/32'", "'198.51.100.10/32'", "'2001:db8:1::11/128'"):
            assert address in ignore, jail.name
        assert "'192.0.2.101" not in ignore


# Lines as fail2ban's systemd backend hands them to a filter ("HOST IDENTIFIER[PID]: MESSAGE",
# filtersystemd.formatJournalEntry), with a time stamp in front for fail2ban-regex; Postfix
# Admin's is a line of Apache's error log. Dovecot's are what Dovecot 2.4.1 logs with our SQL
# passdb and auth cache (auth_verbose = yes; the syslog copy has no "Info: "), Postfix's follow
# 3.10's format ("... authentication failed: REASON, sasl_username=USER").
JOURNAL = "2026-12-06T20:22:{:02d}.123456+00:00 dc1-svr1 "
SAMPLES: dict[str, list[str]] = {
    "postfix-sasl": [
        "postfix/submission/smtpd[4242]: warning: unknown[192.0.2.101]: SASL LOGIN authentication "
        "failed: UGFzc3dvcmQ6, sasl_username=x@example.com",
        "postfix/smtps/smtpd[4243]: warning: unknown[192.0.2.101]: SASL PLAIN authentication "
        "failed: , sasl_username=x@example.com",
    ],
    "dovecot": [
        "dovecot[812]: auth-worker(x@example.com,192.0.2.101)<121><Lzno3fxhDJ9/AAAB>: "
        "request [1]: sql: Password mismatch",
        "dovecot[812]: auth-worker(nobody@example.com,192.0.2.101)<121><FDIA3vxhoqB/AAAB>: "
        "request [2]: sql: unknown user",
        "dovecot[812]: auth-worker(x@example.com,192.0.2.101)<121><aujW3vxhyrV/AAAB>: "
        "request [4]: Password mismatch",
        "dovecot[812]: auth(x@example.com,192.0.2.101,sasl:login)<CvN+E95Uf4e7eEnj>: sql: "
        "Password mismatch",
        "dovecot[812]: auth(?,192.0.2.101,sasl:plain)<EhHu3vxhzrV/AAAB>: plain: Username "
        "character disallowed by auth_username_chars: 0x2c (username: a,b)",
        # A user name that carries an address: the one Dovecot appends is taken.
        "dovecot[812]: auth-worker(a,203.0.113.9)<1><x>: request [1]: sql: Password mismatch,"
        "192.0.2.101)<121><aujW3vxhyrV/AAAB>: request [5]: sql: Password mismatch",
    ],
    "roundcube-auth": [
        "roundcube[2671]: <abcd1234> IMAP Error: Login failed for x@example.com against "
        "127.0.0.1 from 192.0.2.101. AUTHENTICATE PLAIN: Authentication failed. in "
        "/usr/share/roundcube/program/lib/Roundcube/rcube_imap.php on line 211 "
        "(POST /?_task=login&_action=login)",
    ],
    "postfixadmin": [
        "[Wed Nov 25 22:50:04.123456 2026] [php:notice] [pid 2670:tid 2670] "
        "[client 192.0.2.101:41346] "
        "PostfixAdmin admin login failed (username: x@example.com, ip_address: 192.0.2.101)",
    ],
    "sshd": [
        "sshd-session[777]: Failed password for root from 192.0.2.101 port 40001 ssh2",
        "sshd-session[778]: Invalid user admin from 192.0.2.101 port 40002",
    ],
}
# Lines that must not count: a login that worked, Dovecot's per-connection summary of failures
# (each attempt is counted from its own line), a lookup that found the user.
NOT_FAILURES = {
    "dovecot": [
        "dovecot[812]: imap-login: Login aborted: Connection closed (auth failed, 2 attempts in "
        "27 secs) (auth_failed): user=<x@example.com>, method=PLAIN, rip=192.0.2.101, "
        "lip=198.51.100.10, TLS, session=<CkDevvxhDrR/AAAB>",
        "dovecot[812]: imap-login: Logged in: user=<x@example.com>, method=PLAIN, "
        "rip=192.0.2.101, lip=198.51.100.10, mpid=125, TLS, session=<VCBc3vxhrqB/AAAB>",
    ],
    "postfix-sasl": [
        "postfix/submission/smtpd[4242]: 4Y2abc: client=unknown[192.0.2.101], "
        "sasl_method=PLAIN, sasl_username=x@example.com",
    ],
}


def _regex(jail: str, lines: list[str], tmp_path: Path, conf: Path) -> str:
    spec = next(j for j in fail2ban.JAILS if j.name == jail)
    name = spec.filter or spec.name
    filter_path = conf / "filter.d" / f"{name.split('[')[0]}.conf"
    args = name[name.index("[") + 1 : -1] if "[" in name else ""
    log = tmp_path / f"{jail}.log"
    stamped = [ln if ln.startswith("[") else JOURNAL.format(i) + ln for i, ln in enumerate(lines)]
    log.write_text("\n".join(stamped) + "\n")
    target = f"{filter_path}[{args}]" if args else str(filter_path)
    return ok("fail2ban-regex", "-v", str(log), target)


@pytest.mark.checkers
@pytest.mark.parametrize("jail", [j.name for j in fail2ban.JAILS])
def test_each_jail_counts_each_failed_login_once(
    jail: str, topologies: dict[str, Topology], secrets: ClusterSecrets, tmp_path: Path
) -> None:
    plan = build_host_plan(topologies["dc1"], "dc1-svr1", secrets, "lab")
    conf = _fail2ban_dir(write_tree(plan, tmp_path))
    lines = SAMPLES[jail] + NOT_FAILURES.get(jail, [])
    out = _regex(jail, lines, tmp_path, conf)
    failures = len(SAMPLES[jail])
    assert f"Lines: {len(lines)} lines, 0 ignored, {failures} matched, " in out, out
    # Every match names the client, never an address from the user's text.
    found = re.findall(r"^\|\s+(\S+)\s+\w{3} \w{3} \d\d \d\d:", out, re.MULTILINE)
    assert found == ["192.0.2.101"] * failures, out


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


@pytest.mark.checkers
def test_policyd_sets_up_its_database(rendered: tuple[HostPlan, Path]) -> None:
    """Reading one key proves little: the daemon reads many more when it starts. ``--clean``
    sets up the database as a start does (1.2 failed there on a key our file lacked, and said
    so on stderr only: the exit code stays 0)."""
    _, root = rendered
    out = ok("policyd-rate-limit", "--file", str(root / ratelimit.CONF.lstrip("/")), "--clean")
    assert "Fail to initialize database" not in out, out


@pytest.mark.checkers
def test_each_journal_jail_reads_a_unit_the_node_runs() -> None:
    """A journalmatch on a unit that never runs matches nothing, silently: Debian 12 ran Postfix
    as postfix@-.service, Debian 13 runs postfix.service itself (its template postfix@.service
    is for other instances). Each unit must be one the base ships as such, not a template's."""
    units = [term.split("=", 1)[1] for j in fail2ban.JAILS for term in j.journalmatch.split()
             if term.startswith("_SYSTEMD_UNIT=")]  # fmt: skip
    assert units, "no jail reads a unit's journal"
    for unit in units:
        assert "@" not in unit, unit
        ok("test", "-f", f"/usr/lib/systemd/system/{unit}")
