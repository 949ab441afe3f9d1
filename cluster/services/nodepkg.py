"""The node package: ``mailnode/`` of this repository, installed on every node.

Every module of ``mailnode/`` becomes one file step under ``INSTALL_DIR`` (so a changed module
re-runs only its own step, and ``pulumi preview --diff`` shows its lines); ``PACKAGE_STEP``
watches them all, removes modules that are no longer part of the package and byte-compiles the
rest. A service whose program comes from the package watches ``PACKAGE_STEP`` (it is restarted
when any module changed) and gets its command from ``entry_point``: a small executable in
``/usr/local/sbin`` that runs ``main()`` of one module.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from cluster.hostcontext import HostContext
from cluster.plan import CHANGED_MARK, PACKAGES_STEP, Step, StepRef, script_step

PACKAGES: tuple[str, ...] = ("python3",)

SOURCE = Path(__file__).resolve().parents[2] / "mailnode"
INSTALL_DIR = "/usr/local/lib/mailcluster/python"
PACKAGE_DIR = f"{INSTALL_DIR}/mailnode"
PACKAGE_STEP = "nodepkg.installed"


def modules() -> list[Path]:
    """The package's modules, relative to ``mailnode/``, sorted (caches and tests excluded)."""
    return sorted(
        p.relative_to(SOURCE) for p in SOURCE.rglob("*.py") if "__pycache__" not in p.parts
    )


def installed_path(module: Path) -> str:
    return f"{PACKAGE_DIR}/{module.as_posix()}"


def steps(ctx: HostContext) -> list[Step]:
    files = [
        ctx.literal_file(installed_path(m), (SOURCE / m).read_text(), after=(PACKAGES_STEP,))
        for m in modules()
    ]
    keep = " ".join(shlex.quote(installed_path(m)) for m in modules())
    installed = script_step(
        PACKAGE_STEP,
        f"""keep=({keep})
# Modules no longer in the package go (a stale one could still be imported).
while IFS= read -r -d '' f; do
  case " ${{keep[*]}} " in *" $f "*) continue ;; esac
  rm -f "$f"
  echo "{CHANGED_MARK} $f removed"
done < <(find {PACKAGE_DIR} -name '*.py' -print0)
find {PACKAGE_DIR} -name __pycache__ -prune -exec rm -rf {{}} +
python3 -m compileall -q {PACKAGE_DIR} >/dev/null
""",
        watch=files,
    )
    return [*files, installed]


def entry_point(
    ctx: HostContext, command: str, module: str, *, after: tuple[StepRef, ...] = ()
) -> Step:
    """``/usr/local/sbin/<command>``: runs ``mailnode.<module>.main()`` with its arguments."""
    content = f"""#!/usr/bin/python3
# managed by mailcluster; edits are overwritten
# {command}: mailnode.{module} (the node package, {INSTALL_DIR}).
import sys

sys.path.insert(0, {INSTALL_DIR!r})
from mailnode.{module} import main  # noqa: E402

sys.exit(main())
"""
    return ctx.literal_file(
        f"/usr/local/sbin/{command}", content, mode="0755", after=(PACKAGE_STEP, *after)
    )
