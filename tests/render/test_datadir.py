"""Data that must outlive an OS disk: the plan puts MariaDB's datadir and binary logs, the Postfix
queue and BIND's dynamic data on the volume (bind mounts by mailcluster-datadir), Dovecot keeps
its indexes in the maildirs; and the script itself, for real, inside the base: a running node's
migration, a second run that changes nothing, a rebuilt node where the volume wins, owners
moved to a new system's ids, and a missing volume that fails loudly."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from rendertools import in_base, write_tree

from cluster.plan import CHANGED_MARK, HostPlan
from cluster.render import render
from cluster.services import bind, dovecot, mariadb, postfix, storage
from cluster.topology import Topology

# (data step, the directories, the steps that start or reload the daemon and must come after)
EXPECTED = {
    mariadb.DATA_STEP: (("/var/lib/mysql", "/var/log/mysql"), (mariadb.SERVICE_STEP,)),
    postfix.DATA_STEP: (("/var/spool/postfix",), ("postfix.reload",)),
    bind.DATA_STEP: (("/var/lib/bind",), (bind.ZONE_DIR_STEP, "bind.reload")),
}


def test_every_data_dir_is_bound_from_the_volume_before_its_daemon_runs(
    plan: tuple[Topology, HostPlan],
) -> None:
    _, p = plan
    order = [s.name for s in p.ordered()]
    for name, (paths, later) in EXPECTED.items():
        script = p.step(name).script
        assert f"{storage.DATADIR_SCRIPT} " in script
        for path in paths:
            assert re.search(rf"'?[a-z-]+:{re.escape(path)}:", script), (name, path)
        assert order.index(storage.VOLUME_STEP) < order.index(name)
        for step in later:
            assert order.index(name) < order.index(step), (name, step)
    # MariaDB starts again after a switch only with its own configuration (binary logs on).
    assert order.index(f"file:{mariadb.CNF}") < order.index(mariadb.DATA_STEP)
    # Dovecot's sockets live in the queue directory: it is configured and running first, and
    # restarted with Postfix when the queue moves.
    assert order.index(dovecot.RELOAD_STEP) < order.index(postfix.DATA_STEP)
    assert "postfix,dovecot" in p.step(postfix.DATA_STEP).script
    # The heartbeat mark is on the volume: a rebuilt svr1 is not a new cluster's first holder.
    assert order.index(storage.NODE_STATE_STEP) < order.index("heartbeat.start")
    assert f"touch {storage.NODE_STATE_DIR}/heartbeat-started" in p.step("heartbeat.start").script


def test_units_require_their_mounts(plan: tuple[Topology, HostPlan]) -> None:
    _, p = plan
    files = {f.path: f.content for f in p.files}
    want = {
        "mariadb.service": "/var/lib/mysql /var/log/mysql",
        "postfix.service": "/var/spool/postfix",
        "dovecot.service": "/var/spool/postfix",
        "named.service": "/var/lib/bind",
    }
    # systemd reads them: tests/render/test_systemd_units.py runs systemd-analyze on each.
    for unit, paths in want.items():
        content = files[storage.dropin_path(unit)]
        assert content.startswith("# managed by mailcluster")
        assert f"\n[Unit]\nRequiresMountsFor={paths}\n" in content


@pytest.mark.checkers
def test_dovecot_indexes_and_control_files_are_in_the_maildirs(
    plan: tuple[Topology, HostPlan], tmp_path: Path
) -> None:
    _, p = plan
    root = write_tree(p, tmp_path)
    # Dovecot 2.4's settings (2.3's mail_location with INDEX=/CONTROL= became these): the
    # indexes and control files go where mail_path is, in the maildirs on the volume.
    names = ("mail_driver", "mail_index_path", "mail_index_private_path", "mail_control_path")
    proc = in_base("doveconf", "-c", str(root / "etc/dovecot/dovecot.conf"), "-h", *names)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[: len(names)] == ["maildir", "", "", ""], proc.stdout


# ---------------------------------------------------------------------------------------------
# The script, in the base's private namespaces (a fresh mount namespace per run: a reboot).

FAKE_SERVICE = """#!/bin/bash
# A stand-in for `service NAME status|stop|start`, recording what it was asked.
st=$(dirname "$0")/running.$1
echo "$1 $2" >> "$(dirname "$0")/service.log"
case $2 in
  status) [ -e "$st" ] ;;
  stop) rm -f "$st" ;;
  start) touch "$st" ;;
esac
"""


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.fail("chattr +i needs real root (CI runs as root)")
    (tmp_path / "vol").mkdir()
    fstab = f"UUID=1 / ext4 defaults 0 1\nUUID=2 {tmp_path}/vol ext4 x 0 2\n"
    (tmp_path / "fstab").write_text(fstab)
    svc = tmp_path / "svc"
    svc.write_text(FAKE_SERVICE)
    svc.chmod(0o755)
    script = tmp_path / "mailcluster-datadir"
    script.write_text(render(storage.DATADIR_SCRIPT))
    try:
        yield tmp_path
    finally:
        # The placeholders are immutable on this machine's /tmp: let pytest remove them.
        subprocess.run(["chattr", "-R", "-i", str(tmp_path)], check=False, capture_output=True)


def run_datadir(
    t: Path, *, mount_volume: bool = True, then: str = "", fixup: str = "echo fixup"
) -> tuple[int, str, str]:
    """One boot: the volume (a bind of t/vol onto itself) and the fstab's bind lines mounted, as
    the node's init does, then the script, then ``then`` (assertions' shell, in the same boot)."""
    boot = f"mount --bind {t}/vol {t}/vol\n" if mount_volume else ""
    boot += f"""awk '$3 == "none" {{ print $1, $2 }}' {t}/fstab | while read -r s d; do
  mount --bind "$s" "$d" 2>/dev/null || true
done
"""
    spec = f"data:{t}/os/data:root:root:0755"
    cmd = f"""set -e
{boot}
set +e
MAILCLUSTER_SERVICE={t}/svc RUN_DIR={t}/run bash {t}/mailcluster-datadir \\
  --fixup '{fixup} >> {t}/service.log' {t}/vol {t}/fstab db {spec}
rc=$?
set -e
{then}
exit $rc
"""
    proc = in_base("bash", "-c", cmd)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.checkers
@pytest.mark.root
def test_migrates_once_then_changes_nothing(lab: Path) -> None:
    t = lab
    data = t / "os/data"
    (data / "queue").mkdir(parents=True)
    (data / "queue/msg1").write_text("acknowledged mail")
    os.chown(data / "queue/msg1", 106, 107)
    os.chmod(data / "queue", 0o2730)
    os.setxattr(data / "queue/msg1", "user.mc", b"kept")
    (t / "running.db").touch()

    rc, out, err = run_datadir(
        t, then=f"stat -c %d:%i {data} {t}/vol/data; echo probe > {data}/written-while-mounted"
    )
    assert rc == 0, err
    assert "stopped to move its data" in out and "copied to" in out and "mounted on" in out
    log = (t / "service.log").read_text().split("\n")
    assert log.index("db stop") < log.index("fixup") < log.index("db start")
    vol = t / "vol/data"
    msg = vol / "queue/msg1"
    assert msg.read_text() == "acknowledged mail"
    assert (msg.stat().st_uid, msg.stat().st_gid) == (106, 107)
    assert oct((vol / "queue").stat().st_mode & 0o7777) == "0o2730"
    assert os.getxattr(msg, "user.mc") == b"kept"
    assert (vol / "written-while-mounted").exists()  # the bind was live
    inodes = out.strip().splitlines()[-2:]
    assert inodes[0] == inodes[1]
    assert (t / "running.db").exists()  # started again
    # The original stays on the OS disk; the mount point there is empty and immutable.
    assert len(list((t / "os").glob("data.pre-volume-*"))) == 1
    assert list(data.iterdir()) == []
    lines = (t / "fstab").read_text().splitlines()
    assert lines[2] == (
        f"{t}/vol/data {data} none bind,nofail,x-systemd.requires-mounts-for={t}/vol 0 0"
    )
    with pytest.raises(PermissionError):
        (data / "x").write_text("must not land on the OS disk")
    owners = (t / "vol/mailcluster/owners.data").read_text().splitlines()
    assert "user root 0" in owners and "group root 0" in owners
    assert len([o for o in owners if o.endswith(" 106") and o.startswith("user ")]) == 1

    # A second boot: mounted from fstab, nothing to do, nothing stopped.
    (t / "service.log").unlink()
    rc, out, err = run_datadir(t)
    assert rc == 0, err
    assert CHANGED_MARK not in out
    assert not (t / "service.log").exists()


@pytest.mark.checkers
@pytest.mark.root
def test_rebuilt_node_the_volume_wins_and_owners_follow_names(lab: Path) -> None:
    t = lab
    # The volume from the old node: data owned by its "bind" (uid 4242 there).
    old = t / "vol/data"
    (old / "zones").mkdir(parents=True)
    (old / "zones/db.example.com").write_text("serial 2026112507")
    os.chown(old / "zones/db.example.com", 4242, 0)
    (t / "vol/mailcluster").mkdir()
    (t / "vol/mailcluster/owners.data").write_text("group root 0\nuser bind 4242\nuser root 0\n")
    # The fresh OS disk: the package's own empty copy, and the daemon running on it.
    fresh = t / "os/data"
    fresh.mkdir(parents=True)
    (fresh / "fresh-from-package").write_text("")
    (t / "running.db").touch()

    rc, out, err = run_datadir(t, then=f"ls {fresh}; stat -c %U {fresh}/zones/db.example.com")
    assert rc == 0, err
    assert "the OS-disk copy is set aside" in out and "owners moved" in out
    listing = out.strip().splitlines()
    assert listing[-2:] == ["zones", "bind"]  # the volume's data, now owned by this "bind"
    aside = list((t / "os").glob("data.os-disk-*"))
    assert len(aside) == 1 and (aside[0] / "fresh-from-package").exists()
    assert not (old / "fresh-from-package").exists()  # never merged
    assert "user bind 4242" not in (t / "vol/mailcluster/owners.data").read_text()


@pytest.mark.checkers
@pytest.mark.root
def test_without_the_volume_it_refuses_and_nothing_lands_on_the_os_disk(lab: Path) -> None:
    t = lab
    (t / "os/data").mkdir(parents=True)
    (t / "os/data/row").write_text("1")
    rc, _, err = run_datadir(t)
    assert rc == 0, err
    # Next boot without the volume: the script fails loudly, the OS-disk path takes no write.
    rc, _, err = run_datadir(t, mount_volume=False, then=f"! touch {t}/os/data/new 2>/dev/null")
    assert rc != 0 and "is not mounted" in err
    assert not (t / "os/data/new").exists()


@pytest.mark.checkers
@pytest.mark.root
def test_a_failed_fixup_leaves_the_daemon_stopped_and_the_next_run_starts_it(lab: Path) -> None:
    t = lab
    (t / "os/data").mkdir(parents=True)
    (t / "running.db").touch()
    rc, _, err = run_datadir(t, fixup="false")
    assert rc != 0 and "failed" in err
    assert not (t / "running.db").exists()  # switched, but not started on a half-done move
    rc, out, err = run_datadir(t)
    assert rc == 0, err
    assert "db started" in out and (t / "running.db").exists()
    rc, out, err = run_datadir(t)
    assert rc == 0 and CHANGED_MARK not in out, (out, err)
