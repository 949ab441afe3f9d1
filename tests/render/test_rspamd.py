"""rspamd: the rendered local.d passes ``rspamadm configtest``, signs with selector ``mail`` and the
cluster's key, and no internet-only module is on."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from rendertools import NODES, in_base, write_tree

from cluster.hostplan import build_host_plan
from cluster.material import ClusterSecrets
from cluster.services import rspamd
from cluster.topology import DKIM_SELECTOR, Topology


def rspamadm(local_confdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # The stock /etc/rspamd/rspamd.conf with our rendered local.d in place of /etc/rspamd's.
    return in_base("rspamadm", f"--var=LOCAL_CONFDIR={local_confdir}", *args)


@pytest.mark.checkers
@pytest.mark.parametrize(("stack", "node"), NODES, ids=[n for _, n in NODES])
def test_rspamadm_configtest(
    stack: str,
    node: str,
    topologies: dict[str, Topology],
    secrets: ClusterSecrets,
    tmp_path: Path,
) -> None:
    topo = topologies[stack]
    plan = build_host_plan(topo, node, secrets, "lab")
    confdir = write_tree(plan, tmp_path) / "etc/rspamd"
    test = rspamadm(confdir, "configtest", "-s")
    assert test.returncode == 0 and "syntax OK" in test.stdout, test.stdout + test.stderr
    dump = rspamadm(confdir, "configdump", "dkim_signing").stdout
    assert f'selector = "{DKIM_SELECTOR}";' in dump
    assert f'path = "{rspamd.dkim_key_path(topo.domain)}";' in dump
    proxy = rspamadm(confdir, "configdump", "worker").stdout
    assert rspamd.MILTER_BIND in proxy


@pytest.mark.checkers
def test_configtest_catches_a_broken_file(
    topologies: dict[str, Topology], secrets: ClusterSecrets, tmp_path: Path
) -> None:
    """The checker really reads our directory: a syntax error there fails it."""
    plan = build_host_plan(topologies["dc1"], "dc1-svr1", secrets, "lab")
    confdir = write_tree(plan, tmp_path) / "etc/rspamd"
    broken = confdir / "local.d/actions.conf"
    with open(broken, "a") as fh:
        fh.write("reject = ;\n")
    line = len(broken.read_text().splitlines())
    test = rspamadm(confdir, "configtest", "-s")
    # Not just "no syntax OK" (true when rspamadm does not run at all): it ran, failed, and its
    # UCL parser names our file and the line we broke.
    assert test.returncode != 0 and test.stdout == "syntax BAD\n", test.stdout + test.stderr
    assert f"error while parsing {broken}: line: {line}," in test.stderr, test.stderr


def test_dkim_key_file(topologies: dict[str, Topology], secrets: ClusterSecrets) -> None:
    paths = set()
    for stack, node in NODES:
        plan = build_host_plan(topologies[stack], node, secrets, "lab")
        files = {f.path: f for f in plan.files}
        key = files[rspamd.dkim_key_path(topologies[stack].domain)]
        assert key.secret and key.mode == "0640" and key.group == "_rspamd"
        assert key.content == secrets.dkim_private_key_pem  # identical on every node
        paths.add(key.path)
        loaded = serialization.load_pem_private_key(key.content.encode(), None)
        assert isinstance(loaded, rsa.RSAPrivateKey) and loaded.key_size >= 2048
        for module in rspamd.DISABLED_MODULES:
            assert "enabled = false;" in files[f"{rspamd.LOCAL_D}/{module}.conf"].content
    assert paths == {f"/var/lib/rspamd/dkim/{topologies['dc1'].domain}.mail.key"}
