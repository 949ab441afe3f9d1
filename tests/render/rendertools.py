"""Helpers the render tests share."""

from __future__ import annotations

import functools
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from cluster.lab import checkroot
from cluster.lab.run import Progress
from cluster.plan import HostPlan

NODES = [("dc1", "dc1-svr1"), ("dc1", "dc1-svr2"), ("dc2", "dc2-svr1"), ("dc2", "dc2-svr2")]


def files(plan: HostPlan) -> dict[str, str]:
    """Target path -> rendered content."""
    return {f.path: f.content for f in plan.files}


def write_tree(plan: HostPlan, root: Path) -> Path:
    """Write every rendered file under ``root`` at its target path."""
    for spec in plan.files:
        target = root / spec.path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(spec.content)
    return root


@functools.cache
def base() -> checkroot.CheckRoot:
    """The lab's base root filesystem, where every checker runs (built or unpacked once per
    session; see cluster/lab/checkroot.py). The tests' files live under /tmp, which the runner
    shares at the same path."""
    tmp = Path(tempfile.gettempdir()).resolve()
    if not tmp.is_relative_to("/tmp"):
        raise RuntimeError(f"the checkers see only /tmp of this machine; TMPDIR is {tmp}")
    return checkroot.ensure(Progress())


def in_base(
    *argv: str,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a checker (or a rendered script) in the base: captured, text, never raising."""
    return base().run(argv, env=env, cwd=cwd, input=input)
