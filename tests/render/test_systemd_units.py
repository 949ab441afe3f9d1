"""Every systemd unit file and drop-in the plan installs, read by the base's own systemd: the
node's rendered files are copied onto the base (a scratch overlay: nothing stays), then
``systemd-analyze verify`` loads each unit of ours and each package unit we extend, with its
drop-ins, as the node's systemd would. A warning about one of our files fails the test like an
error; the packages' own complaints about their own files do not (they are not ours to fix)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from rendertools import in_base, write_tree

from cluster.plan import HostPlan
from cluster.services import heartbeat, mesh, storage, units
from cluster.topology import Topology

pytestmark = pytest.mark.checkers

UNIT_SUFFIXES = (".service", ".timer", ".socket", ".path", ".target", ".mount")
# Where the packages' own units live: what systemd-analyze says about those files is theirs.
PACKAGE_UNIT_DIRS = ("/usr/lib/systemd/system/", "/lib/systemd/system/")

VERIFY = r"""set -euo pipefail
tree=$1; shift
cp -a "$tree/." /
systemd-analyze verify --man=no "$@" 2>&1
"""


def units_to_verify(plan: HostPlan) -> list[str]:
    """Our unit files by path, and by name each unit a drop-in of ours extends (a template's as
    an instance of it)."""
    out: list[str] = []
    for path in sorted(f.path for f in plan.files if f.path.startswith(units.UNIT_DIR + "/")):
        rel = path.removeprefix(units.UNIT_DIR + "/")
        if "/" not in rel and rel.endswith(UNIT_SUFFIXES):
            out.append(path)
        elif rel.split("/")[0].endswith(".d"):
            unit = rel.split("/")[0].removesuffix(".d").replace("@.", "@check.")
            if unit not in out:
                out.append(unit)
    return out


def verify(plan: HostPlan, root: Path) -> list[str]:
    """systemd-analyze verify on the plan's units in the base: the lines that are not the
    packages' own; an exit status other than 0 is a line too."""
    write_tree(plan, root)
    for spec in plan.files:
        os.chmod(root / spec.path.lstrip("/"), int(spec.mode, 8))
    return _verify(root, units_to_verify(plan))


def _verify(root: Path, targets: list[str]) -> list[str]:
    proc = in_base("bash", "-c", VERIFY, "verify", str(root), *targets)
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    ours = [ln for ln in lines if not ln.startswith(PACKAGE_UNIT_DIRS)]
    if proc.returncode != 0:
        ours.append(f"systemd-analyze exited {proc.returncode}")
    return ours


def test_every_unit_and_drop_in_passes_systemd_analyze(
    plan: tuple[Topology, HostPlan], tmp_path: Path
) -> None:
    _, hp = plan
    targets = units_to_verify(hp)
    # Not vacuous: the units of ours, and the packages' units with our drop-ins, are all there.
    for unit in (mesh.UNIT_FILE, "heartbeat.service", "mariadb.service", "named.service",
                 "postfix.service", "mailgraph.service"):  # fmt: skip
        assert unit in targets, (unit, targets)
    dropins = [f.path for f in hp.files if f.path.endswith("/mailcluster-volume.conf")]
    assert len(dropins) == 4, dropins
    volume_units = ("mariadb.service", "postfix.service", "dovecot.service", "named.service")
    assert {storage.dropin_path(u) for u in volume_units} == set(dropins)
    timers = [t for t in targets if t.endswith(".timer")]
    assert len(timers) >= 4, targets
    assert verify(hp, tmp_path / "root") == []


def test_the_check_catches_what_systemd_refuses(tmp_path: Path) -> None:
    """The same check on files with known faults reports each of them: it can fail."""
    root = tmp_path / "root"
    unit_dir = root / units.UNIT_DIR.lstrip("/")
    (unit_dir / "heartbeat.service.d").mkdir(parents=True)
    # A drop-in's relative mount path and unknown key: systemd only warns, and ignores them.
    (unit_dir / "heartbeat.service.d/broken.conf").write_text(
        "[Unit]\nRequiresMountsFor=srv/mail\nRequiresMountFor=/srv/mail\n"
    )
    # A unit whose program does not exist: an error.
    (unit_dir / "mailcluster-broken.service").write_text(
        "[Service]\nType=oneshot\nExecStart=/usr/local/sbin/mailcluster-nothing\n"
    )
    out = _verify(root, [f"{units.UNIT_DIR}/mailcluster-broken.service", "heartbeat.service"])
    text = "\n".join(out)
    assert "RequiresMountsFor= path is not absolute" in text, text
    assert "Unknown key" in text and "RequiresMountFor" in text, text
    assert "mailcluster-nothing" in text and "exited" in text, text
    assert heartbeat.BOOT_DROPIN not in text  # the real drop-in was not copied here
