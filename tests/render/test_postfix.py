"""Postfix: every node of both lab stacks renders a config that Postfix's own tools accept, and
that keeps the rules (submission with SASL, no spoofing, no open relay, TLS 1.2+, size limit)."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest
from rendertools import NODES, in_base, write_tree

from cluster.hostplan import build_host_plan
from cluster.material import ClusterSecrets
from cluster.plan import HostPlan
from cluster.services import postfix, rspamd, srs
from cluster.topology import Topology


def run(*args: str) -> str:
    """Run a checker; any failure or warning fails the test."""
    proc = in_base(*args)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout}{proc.stderr}"
    assert proc.stderr == "", f"{' '.join(args)} warned:\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(params=NODES, ids=[n for _, n in NODES])
def rendered(
    request: pytest.FixtureRequest,
    topologies: dict[str, Topology],
    secrets: ClusterSecrets,
    tmp_path: Path,
) -> tuple[Topology, HostPlan, Path]:
    stack, node = request.param
    plan = build_host_plan(topologies[stack], node, secrets, "lab")
    confdir = write_tree(plan, tmp_path) / "etc/postfix"
    # Postfix reads a file again when it changed within the last second ("hot", dict_file.c's
    # dict_load_file_xt), and postconf -c DIR loses DIR as $config_directory on that second read
    # (3.10: it then opens /etc/postfix/mysql/*.cf). On a node the directory is /etc/postfix
    # anyway; the checkers get files as old as a node's.
    past = time.time() - 10
    for path in (confdir, *confdir.rglob("*")):
        os.utime(path, (past, past))
    return topologies[stack], plan, confdir


def postconf(confdir: Path, *args: str) -> str:
    return run("postconf", "-c", str(confdir), *args)


@pytest.mark.checkers
def test_postfix_checkers_accept_config(rendered: tuple[Topology, HostPlan, Path]) -> None:
    _, _, confdir = rendered
    postconf(confdir, "-n")  # also opens and validates every mysql map file
    run("postfix", "-c", str(confdir), "check")


@pytest.mark.checkers
def test_postfix_rules(rendered: tuple[Topology, HostPlan, Path]) -> None:
    topo, plan, confdir = rendered
    vip = topo.shared_ip(topo.node(plan.host).dc)
    vip6 = topo.shared_ipv6(topo.node(plan.host).dc)
    assert vip6, "the lab is dual stack"

    def param(name: str) -> str:
        return postconf(confdir, "-h", name).strip()

    # The level of the Postfix installed (3.10 in Debian 13): no backwards-compatible default
    # in use, none logged.
    version = postconf(confdir, "-h", "mail_version").strip()
    assert param("compatibility_level") == ".".join(version.split(".")[:2]), version
    assert param("mynetworks") == "127.0.0.0/8"
    relay = [r.strip() for r in param("smtpd_relay_restrictions").split(",")]
    assert relay == ["permit_mynetworks", "permit_sasl_authenticated", "defer_unauth_destination"]
    assert "reject_unauth_destination" in param("smtpd_recipient_restrictions")
    assert param("smtpd_sasl_auth_enable") == "no"  # port 25 offers no AUTH
    for name in ("smtpd_tls_protocols", "smtpd_tls_mandatory_protocols"):
        value = param(name)
        for old in ("!SSLv2", "!SSLv3", "!TLSv1", "!TLSv1.1"):
            assert old in value, (name, value)
    assert int(param("message_size_limit")) == topo.config.message_size_limit_mb * 1024 * 1024
    assert param("myhostname") == f"mail.{topo.domain}"
    assert param("smtp_bind_address") == vip
    # Dual stack: both families, and mail to IPv6 leaves from the shared IPv6 (SPF ip6:).
    assert param("inet_protocols") == "all"
    assert param("smtp_bind_address6") == vip6
    assert param("virtual_transport") == "lmtp:unix:private/dovecot-lmtp"
    assert param("smtpd_sasl_type") == "dovecot"
    assert param("smtpd_milters") == postfix.MILTER
    assert param("milter_default_action") == "accept"
    assert param("postscreen_dnsbl_sites") == ""
    # Several postscreen listeners share one cache: through proxymap, never a locked btree.
    assert param("postscreen_cache_map").startswith("proxy:btree:")
    assert "$postscreen_cache_map" in param("proxy_write_maps")
    for name in ("virtual_mailbox_domains", "virtual_alias_maps", "virtual_mailbox_maps",
                 "smtpd_sender_login_maps"):  # fmt: skip
        for ref in param(name).split(","):
            assert ref.strip().startswith("proxy:mysql:"), (name, ref)

    services = postconf(confdir, "-M")
    # Every listener on the shared IPv4, the shared IPv6 (bracketed) and loopback; nothing on
    # a wildcard address.
    assert f"[{vip6}]:smtp " in services
    inet = [line.split()[0] for line in services.splitlines() if line.split()[1:2] == ["inet"]]
    assert inet and all(s.startswith((f"{vip}:", f"[{vip6}]:", "127.0.0.1:")) for s in inet), inet
    for address in (vip, f"[{vip6}]", "127.0.0.1"):
        assert f"{address}:smtp " in services and "postscreen" in services
        for svc in ("submission", "submissions"):
            opts = postconf(confdir, "-P", f"{address}:{svc}/inet/smtpd_sasl_auth_enable")
            assert opts.strip().endswith("= yes"), opts
            senders = postconf(confdir, "-P", f"{address}:{svc}/inet/smtpd_sender_restrictions")
            assert "reject_sender_login_mismatch" in senders
            relay_sub = postconf(confdir, "-P", f"{address}:{svc}/inet/smtpd_relay_restrictions")
            assert relay_sub.strip().endswith("= permit_sasl_authenticated,reject")
    assert "encrypt" in postconf(confdir, "-P", f"{vip}:submission/inet/smtpd_tls_security_level")
    assert "yes" in postconf(confdir, "-P", f"{vip}:submissions/inet/smtpd_tls_wrappermode")


@pytest.mark.checkers
def test_only_forwarded_copies_take_the_srs_pass(rendered: tuple[Topology, HostPlan, Path]) -> None:
    """The transport of a recipient in another domain, by sender, as Postfix's own postmap
    reads the rendered regexp table (our own domains come first, from MariaDB: see the lab's
    test_mailbox_features); the pass's cleanup rewrites senders with postsrsd and drops what
    rspamd marked as spam, and the reverse map is global."""
    _, _, confdir = rendered

    def param(name: str) -> str:
        return postconf(confdir, "-h", name).strip()

    route = f"regexp:{confdir}/{postfix.FORWARD_ROUTE}"

    def lookup(table: str, key: str) -> str:
        proc = in_base("postmap", "-c", str(confdir), "-q", key, table)
        assert proc.returncode in (0, 1) and proc.stderr == "", proc
        return proc.stdout.strip()

    forward = f"srsfwd:[127.0.0.1]:{srs.REINJECT_PORT}"
    assert lookup(route, "someone@gmail.example") == forward
    assert lookup(route, "<>") == "smtp:"
    assert lookup(route, "SRS0=HHH=TT=gmail.example=someone@example.com") == "smtp:"
    refs = [r.strip() for r in param("sender_dependent_default_transport_maps").split(",")]
    assert refs == [postfix.map_refs("own_sender_domain"),
                    f"regexp:${{config_directory}}/{postfix.FORWARD_ROUTE}"]  # fmt: skip
    assert param("recipient_canonical_maps") == srs.REVERSE_MAP
    assert param("sender_canonical_maps") == ""  # local copies keep their sender
    cleanup = "srscleanup/unix"
    assert (
        postconf(confdir, "-P", f"{cleanup}/sender_canonical_maps")
        .strip()
        .endswith(srs.FORWARD_MAP)
    )
    checks = f"regexp:{confdir}/{postfix.FORWARD_CHECKS}"
    assert lookup(checks, f"{rspamd.SPAM_HEADER}: Yes").startswith("DISCARD")
    assert lookup(checks, f"{rspamd.SPAM_HEADER}: No") == ""
    listener = f"127.0.0.1:{srs.REINJECT_PORT}/inet"
    for option, value in (("cleanup_service_name", "srscleanup"), ("content_filter", "smtp:"),
                          ("smtpd_milters", ""), ("mynetworks", "127.0.0.0/8")):  # fmt: skip
        got = postconf(confdir, "-P", f"{listener}/{option}").strip()
        assert got == f"{listener}/{option} = {value}".rstrip(), got


def test_map_files_are_secret_and_readable_by_postfix(
    topologies: dict[str, Topology], secrets: ClusterSecrets
) -> None:
    plan = build_host_plan(topologies["dc1"], "dc1-svr1", secrets, "lab")
    maps = [f for f in plan.files if f.path.startswith(postfix.MAP_DIR + "/")]
    assert len(maps) == len(postfix.MAPS)
    for spec in maps:
        assert (
            spec.secret
            and spec.mode == "0640"
            and (spec.owner, spec.group)
            == (
                "root",
                "postfix",
            )
        )
        assert stat.S_IMODE(int(spec.mode, 8)) & 0o007 == 0
        assert f"password = {secrets.db_postfix}" in spec.content
        assert "hosts = inet:127.0.0.1:3306" in spec.content


def test_reload_never_starts_postfix(
    topologies: dict[str, Topology], secrets: ClusterSecrets
) -> None:
    plan = build_host_plan(topologies["dc2"], "dc2-svr2", secrets, "lab")
    reload = plan.step("postfix.reload")
    assert "postfix check" in reload.script
    assert "service postfix start" not in reload.script and "postfix start" not in reload.script
    assert "if postfix status" in reload.script
    assert set(reload.watch) >= {f"file:{p}" for p in postfix.MAIN_FILES}
