"""Helpers the render tests share."""

from __future__ import annotations

from pathlib import Path

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
