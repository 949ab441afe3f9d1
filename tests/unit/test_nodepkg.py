"""The node package (``mailnode/``): what the plan installs on every node, and what it may import.

A node has Debian's python3 and nothing from PyPI, and never this repository's ``cluster``
package: a module of ``mailnode`` that imported either would work here and fail on a node.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from cluster.hostplan import build_host_plan
from cluster.material import ClusterSecrets
from cluster.plan import CHANGED_MARK
from cluster.services import nodepkg
from cluster.topology import Topology

# Debian packages that provide Python modules a node may import (python3-* in a service's
# PACKAGES); none yet.
DEBIAN_MODULES: frozenset[str] = frozenset()


def top_level_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_the_package_imports_only_the_standard_library_and_itself() -> None:
    allowed = set(sys.stdlib_module_names) | DEBIAN_MODULES | {"mailnode", "__future__"}
    offenders = {
        str(m): sorted(top_level_imports(nodepkg.SOURCE / m) - allowed) for m in nodepkg.modules()
    }
    assert nodepkg.modules(), "the package has no module"
    assert {m: bad for m, bad in offenders.items() if bad} == {}


def test_every_module_is_installed_and_the_package_step_watches_them(
    topologies: dict[str, Topology], secrets: ClusterSecrets
) -> None:
    plan = build_host_plan(topologies["dc1"], "dc1-svr1", secrets)
    by_path = {f.path: f for f in plan.files}
    package = plan.step(nodepkg.PACKAGE_STEP)
    for module in nodepkg.modules():
        path = nodepkg.installed_path(module)
        assert by_path[path].content == (nodepkg.SOURCE / module).read_text()
        assert f"file:{path}" in package.watch


def test_entry_points_name_a_module_with_main(
    topologies: dict[str, Topology], secrets: ClusterSecrets
) -> None:
    plan = build_host_plan(topologies["dc1"], "dc1-svr1", secrets)
    shims = [f for f in plan.files if f"sys.path.insert(0, {nodepkg.INSTALL_DIR!r})" in f.content]
    for shim in shims:
        module = shim.content.split("from mailnode.", 1)[1].split(" import", 1)[0]
        source = nodepkg.SOURCE / (module.replace(".", "/") + ".py")
        tree = ast.parse(source.read_text())
        assert any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body), shim


def test_package_step_removes_stale_modules_and_is_idempotent(
    tmp_path: Path, topologies: dict[str, Topology], secrets: ClusterSecrets
) -> None:
    """Run the step for real against a copy of the package in a temporary directory."""
    plan = build_host_plan(topologies["dc1"], "dc1-svr1", secrets)
    root = tmp_path / "pkg"
    script = plan.step(nodepkg.PACKAGE_STEP).command.replace(nodepkg.PACKAGE_DIR, str(root))
    for module in nodepkg.modules():
        target = root / module
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text((nodepkg.SOURCE / module).read_text())
    (root / "gone.py").write_text("x = 1\n")
    first = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True)
    second = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True)
    assert f"{CHANGED_MARK} {root}/gone.py removed" in first.stdout
    assert not (root / "gone.py").exists()
    assert second.stdout == ""
    assert (root / "__init__.py").exists()
