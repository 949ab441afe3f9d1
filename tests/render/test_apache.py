"""Apache, Roundcube, Postfix Admin config and the MTA-STS policy: apache2ctl -t on the rendered
tree (modules enabled by the plan's own step), php -l on every PHP file, the policy's format."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from rendertools import base, files, in_base

from cluster.material import ClusterSecrets
from cluster.plan import HostPlan, file_step_name
from cluster.services import apache, autoconfig, mta_sts, postfixadmin
from cluster.services.tls import TLS_DIR
from cluster.topology import Topology


def run(*args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> str:
    proc = in_base(*args, env=env, input=stdin)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout}{proc.stderr}"
    return proc.stdout + proc.stderr


@pytest.mark.checkers
def test_apache2ctl_accepts_rendered_tree(
    plan: tuple[Topology, HostPlan], secrets: ClusterSecrets, tmp_path: Path
) -> None:
    topo, hp = plan
    conf = tmp_path / "apache2"
    shutil.copytree(base().path("/etc/apache2"), conf, symlinks=True)
    # The certificate paths point into the test directory (same files the tls service installs).
    tls = tmp_path / "tls"
    tls.mkdir()
    dc = topo.node(hp.host).dc
    (tls / "fullchain.pem").write_text(secrets.tls[dc].cert_pem)
    (tls / "privkey.pem").write_text(secrets.tls[dc].key_pem)
    site = files(hp)[apache.SITE].replace(TLS_DIR, str(tls))
    (conf / "sites-available/mailcluster.conf").write_text(site)
    env = {"APACHE_CONFDIR": str(conf)}
    enable = hp.step("apache.enable")
    first = run("bash", "-c", enable.script, env=env)
    assert "mailcluster: changed" in first
    second = run("bash", "-c", enable.script, env=env)
    assert second == ""  # idempotent: nothing to enable the second time
    # Apache 2.4 on Debian 13 without a warning; the MTA-STS and autoconfig webroots are made
    # by their own steps (the reload waits for the autoconfig one).
    assert file_step_name(autoconfig.CONFIG_XML) in hp.step("apache.reload").after
    webroots = f"{mta_sts.WEBROOT} {autoconfig.WEBROOT}"
    checked = run("bash", "-c", f"install -d {webroots} && apache2ctl -t", env=env)
    assert checked == "Syntax OK\n", checked
    vhosts = run("apache2ctl", "-t", "-D", "DUMP_VHOSTS", env=env)
    assert f"namevhost {topo.mail_host}" in vhosts
    assert f"namevhost mta-sts.{topo.domain}" in vhosts
    assert f"namevhost autoconfig.{topo.domain}" in vhosts
    assert f"alias autodiscover.{topo.domain}" in vhosts
    # Dual stack: the vhosts are on every address of both families (the shared IPv6 included),
    # never on one IPv4 address, and Debian's ports.conf listens on all of them.
    assert "*:443" in vhosts and "*:80" in vhosts
    assert not re.search(r"^\s*\d+\.\d+\.\d+\.\d+:443", vhosts, re.M), vhosts
    ports = (conf / "ports.conf").read_text()
    assert re.search(r"^\s*Listen 443$", ports, re.M), ports
    assert not (conf / "sites-enabled/000-default.conf").exists()
    modules = run("apache2ctl", "-t", "-D", "DUMP_MODULES", env=env)
    for mod in ("ssl_module", "rewrite_module", "headers_module", "cgi_module", "php_module"):
        assert mod in modules


def test_site_rules(plan: tuple[Topology, HostPlan]) -> None:
    _, hp = plan
    site = files(hp)[apache.SITE]
    assert "RewriteCond %{REQUEST_URI} !^/\\.well-known/" in site
    assert "SSLProtocol -all +TLSv1.2 +TLSv1.3" in site
    assert "Alias /postfixadmin /usr/share/postfixadmin/public" in site
    assert "DocumentRoot /var/lib/roundcube/public_html" in site
    assert "ScriptAlias /graphs/mailgraph.cgi /usr/share/mailgraph/mailgraph.cgi" in site
    assert f"SSLCertificateFile {TLS_DIR}/fullchain.pem" in site


def test_mta_sts_policy(plan: tuple[Topology, HostPlan]) -> None:
    topo, hp = plan
    policy = files(hp)[mta_sts.POLICY]
    lines = dict(ln.split(": ", 1) for ln in policy.splitlines())
    assert lines == {
        "version": "STSv1",
        "mode": topo.config.mta_sts_mode,
        "mx": topo.mail_host,
        "max_age": str(mta_sts.MAX_AGE[topo.config.mta_sts_mode]),
    }
    # The TXT id is tied to the text: another mode, another id.
    other = topo.config.with_values(mta_sts_mode="enforce")
    assert mta_sts.policy_id(other) != mta_sts.policy_id(topo.config)
    assert re.fullmatch(r"[0-9a-f]{20}", mta_sts.policy_id(topo.config))


@pytest.mark.checkers
def test_php_files_lint(plan: tuple[Topology, HostPlan], tmp_path: Path) -> None:
    _, hp = plan
    rendered = files(hp)
    for path in (apache.ROUNDCUBE_CONFIG, postfixadmin.CONFIG, postfixadmin.MAILBOX_PHP):
        target = tmp_path / path.rsplit("/", 1)[1]
        target.write_text(rendered[path])
        assert "No syntax errors detected" in run("php", "-l", str(target))
        assert rendered[path].splitlines()[1].startswith("// managed by mailcluster")


def test_php_configs_are_secret(plan: tuple[Topology, HostPlan], secrets: ClusterSecrets) -> None:
    _, hp = plan
    for path, value in (
        (apache.ROUNDCUBE_CONFIG, secrets.db_roundcube),
        (postfixadmin.CONFIG, secrets.db_postfixadmin),
    ):
        step = hp.step(f"file:{path}")
        assert step.secret and step.file is not None
        assert step.file.mode == "0640" and step.file.group == "www-data"
        assert value in step.file.content


@pytest.mark.checkers
def test_setup_password_hash(plan: tuple[Topology, HostPlan], secrets: ClusterSecrets) -> None:
    _, hp = plan
    config = files(hp)[postfixadmin.CONFIG]
    (hashed,) = re.findall(r"\$CONF\['setup_password'\] = '([^']+)';", config)
    assert secrets.postfixadmin_setup not in config
    check = "var_dump(password_verify($argv[1], $argv[2]));"
    assert "bool(true)" in run("php", "-r", check, secrets.postfixadmin_setup, hashed)
    assert "bool(false)" in run("php", "-r", check, "wrong", hashed)
    # Deterministic: the same secret gives the same file on every apply.
    assert postfixadmin.setup_password_hash(secrets.postfixadmin_setup) == hashed
