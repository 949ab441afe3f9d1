"""TLS files and the data volume; and the rule that no secret leaks into a plain file or a step's
command line, on every node of both stacks."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from rendertools import NODES, in_base

from cluster.hostplan import build_host_plan
from cluster.lab.model import lab_topology
from cluster.material import PASSWORD_FIELDS, ClusterSecrets, generate
from cluster.render import render
from cluster.services import storage, tls
from cluster.topology import Topology


def secret_strings(secrets: ClusterSecrets) -> dict[str, str]:
    out = {name: getattr(secrets, name) for name in PASSWORD_FIELDS}

    def body(pem: str) -> str:
        return pem.strip().splitlines()[1]  # a line of the base64 body is enough to match

    out["dkim_private_key_pem"] = body(secrets.dkim_private_key_pem)
    for dc, pair in secrets.tls.items():
        out[f"tls[{dc}].key_pem"] = body(pair.key_pem)
    return out


@pytest.mark.parametrize(("stack", "node"), NODES, ids=[n for _, n in NODES])
def test_no_secret_outside_secret_files_or_in_commands(
    stack: str, node: str, topologies: dict[str, Topology], secrets: ClusterSecrets
) -> None:
    plan = build_host_plan(topologies[stack], node, secrets, "lab")
    needles = secret_strings(secrets)
    for step in plan.steps:
        for name, value in needles.items():
            assert value not in step.command, f"{step.name}: command holds {name}"
            if not step.secret:
                assert value not in step.stdin, f"{step.name}: plain stdin holds {name}"
        if step.file is not None and step.file.secret:
            assert step.secret and int(step.file.mode, 8) & 0o007 == 0, step.name


def test_tls_files(topologies: dict[str, Topology], secrets: ClusterSecrets) -> None:
    for stack, node in NODES:
        plan = build_host_plan(topologies[stack], node, secrets, "lab")
        files = {f.path: f for f in plan.files}
        dc = topologies[stack].node(node).dc
        assert files[tls.CA].content == secrets.ca_cert_pem and not files[tls.CA].secret
        assert files[tls.CHAIN].content == secrets.tls[dc].cert_pem
        for path in (tls.KEY, tls.CLUSTER_KEY):
            key = files[path]
            assert key.content == secrets.tls[dc].key_pem
            assert key.secret and key.mode == "0640"
            assert (key.owner, key.group) == ("root", tls.KEY_GROUP)


def test_letsencrypt_mode_asks_only_on_the_active_dc(secrets: ClusterSecrets) -> None:
    sets = {"tlsMode": "letsencrypt", "letsencryptEmail": "admin@example.com"}
    for stack, node in NODES:
        topo = lab_topology(stack, sets)
        plan = build_host_plan(topo, node, secrets, "lab")
        paths = {f.path for f in plan.files}
        assert tls.KEY not in paths  # certbot's copy must not be overwritten by the plan
        certbot = plan.step("tls.certbot").script
        if topo.node(node).dc == topo.active_dc:
            assert "certbot certonly" in certbot and f"-d mail.{topo.domain}" in certbot
            assert topo.shared_ip(topo.active_dc) in certbot
        else:
            assert "certbot" not in certbot.replace("# standby", "")
        assert "tls.bootstrap" in plan.step("postfix.reload").watch


def test_volume_path_and_vmail_ids(
    topologies: dict[str, Topology], secrets: ClusterSecrets
) -> None:
    plan = build_host_plan(topologies["dc2"], "dc2-svr2", secrets, "lab")
    volume = plan.step("storage.volume").script
    assert "/dev/disk/by-id/scsi-0Linode_Volume_dc2-svr2-mail /srv/mail /etc/fstab" in volume
    vmail = plan.step("storage.vmail").script
    assert "--uid 5000" in vmail and "--gid 5000" in vmail
    assert "mountpoint -q /srv/mail" in vmail
    assert plan.ordered().index(plan.step("storage.vmail")) < plan.ordered().index(
        plan.step("dovecot.reload")
    )


# ---------------------------------------------------------------------------------------------
# The volume script, for real, on a loop device: this one runs on this machine, as root (a loop
# device and a mount that the test checks from outside cannot live in the checkers' namespace).


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0 or shutil.which("losetup") is None:
        pytest.fail("the volume test needs root and losetup (CI runs as root)")
    image = tmp_path / "volume.img"
    with open(image, "wb") as fh:
        fh.truncate(64 * 1024 * 1024)  # sparse
    dev = subprocess.run(
        ["losetup", "--find", "--show", str(image)], capture_output=True, text=True, check=True
    ).stdout.strip()
    link = tmp_path / "scsi-0Linode_Volume_test-mail"
    link.symlink_to(dev)
    try:
        yield link
    finally:
        mnt = tmp_path / "mnt"
        if subprocess.run(["mountpoint", "-q", str(mnt)], check=False).returncode == 0:
            subprocess.run(["umount", str(mnt)], check=True)
        subprocess.run(["losetup", "-d", dev], check=True)


@pytest.mark.checkers
@pytest.mark.root
def test_volume_script_makes_fs_once_and_is_idempotent(loop_device: Path, tmp_path: Path) -> None:
    script = tmp_path / "mailcluster-volume"
    script.write_text(render(storage.VOLUME_SCRIPT))
    fstab = tmp_path / "fstab"
    fstab.write_text("# existing\nUUID=1234 / ext4 defaults 0 1\n")
    mnt = tmp_path / "mnt"

    def apply() -> str:
        args = ["bash", str(script), str(loop_device), str(mnt), str(fstab), "5"]
        return subprocess.run(args, capture_output=True, text=True, check=True).stdout

    first = apply()
    assert "made ext4" in first and "mounted" in first
    uuid = subprocess.run(
        ["blkid", "-p", "-o", "value", "-s", "UUID", str(loop_device)],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert fstab.read_text() == (
        f"# existing\nUUID=1234 / ext4 defaults 0 1\nUUID={uuid} {mnt} ext4 "
        "defaults,nofail,noatime 0 2\n"
    )
    assert subprocess.run(["mountpoint", "-q", str(mnt)], check=False).returncode == 0
    (mnt / "keep").write_text("mail")

    second = apply()
    assert "mailcluster: changed" not in second

    # Unmounted, the filesystem is found again and mounted, never remade.
    subprocess.run(["umount", str(mnt)], check=True)
    third = apply()
    assert "made ext4" not in third and "mounted" in third
    assert (mnt / "keep").read_text() == "mail"


@pytest.mark.checkers
def test_volume_script_gives_up_on_a_missing_device(tmp_path: Path) -> None:
    script = tmp_path / "mailcluster-volume"
    script.write_text(render(storage.VOLUME_SCRIPT))
    proc = in_base(
        "bash", str(script), str(tmp_path / "absent"), str(tmp_path / "m"),
        str(tmp_path / "fstab"), "1",
    )  # fmt: skip
    assert proc.returncode != 0 and "did not appear within 1s" in proc.stderr


@pytest.mark.checkers
def test_letsencrypt_lineage_expanded_only_for_a_missing_name(
    secrets: ClusterSecrets, tmp_path: Path
) -> None:
    """A lineage issued before a name joined the plan (autodiscover.<domain>) is asked again
    with --expand; one that has every name is left to certbot.timer. certbot and ip are stubs."""
    sets = {"tlsMode": "letsencrypt", "letsencryptEmail": "admin@example.com"}
    topo = lab_topology("dc1", sets)
    lineage, bin_dir, calls = tmp_path / "live", tmp_path / "bin", tmp_path / "certbot.args"
    script = build_host_plan(topo, "dc1-svr1", secrets, "lab").step("tls.certbot").script
    script = script.replace(tls.LINEAGE, str(lineage))
    script = script.replace(tls.ACME_WEBROOT, str(tmp_path / "acme"))
    bin_dir.mkdir()
    lineage.mkdir()
    vip = topo.shared_ip("dc1")
    (bin_dir / "ip").write_text(f"#!/bin/sh\necho '1: lo    inet {vip}/32 scope global lo'\n")
    (bin_dir / "certbot").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin"}
    wanted = tls.public_names_of(topo)
    assert f"autodiscover.{topo.domain}" in wanted and topo.domain in wanted
    old = generate(topo.domain, ["dc1"], {"dc1": wanted[:4]}).tls["dc1"].cert_pem
    (lineage / "cert.pem").write_text(old)
    proc = in_base("bash", "-euo", "pipefail", "-c", script, env=env)
    assert proc.returncode == 0, proc.stderr
    assert f"lacks autodiscover.{topo.domain} {topo.domain}: expanding" in proc.stderr
    args = calls.read_text().split()
    assert "--expand" in args and f"autodiscover.{topo.domain}" in args, args
    # Every name present (the cluster certificate carries them all): nothing asked.
    calls.unlink()
    (lineage / "cert.pem").write_text(secrets.tls["dc1"].cert_pem)
    proc = in_base("bash", "-euo", "pipefail", "-c", script, env=env)
    assert (proc.returncode, proc.stdout, calls.exists()) == (0, "", False), proc.stderr
