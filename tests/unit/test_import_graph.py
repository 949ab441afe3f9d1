"""The modules of ``cluster/`` form layers: no import cycle, however the import is written.

The graph is read with ``ast``, so it sees every import the code states: at module level, under
``if TYPE_CHECKING:``, and inside functions. ``from pkg import name`` is an edge to ``pkg.name``
when that is a module of ``cluster/``, else to ``pkg``. A package's ``__init__`` running before
its modules is Python's mechanics, not a dependency the code states, so it is not an edge (a
package that lists its own modules, as ``cluster.services`` does, would otherwise be a cycle
with each of them).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "cluster"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported(node: ast.AST, module: str, is_package: bool, known: set[str]) -> Iterator[str]:
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            # Relative: "." is this module's package (or the package itself for __init__).
            base = module.split(".")
            drop = node.level - 1 if is_package else node.level
            base = base[: len(base) - drop] if drop else base
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        for alias in node.names:
            candidate = f"{source}.{alias.name}"
            yield candidate if candidate in known else source


def import_graph(root: Path, package: str = PACKAGE) -> dict[str, set[str]]:
    """``{module: modules of the package it imports}`` for every module under ``root/package``."""
    files = {module_name(p, root): p for p in sorted((root / package).rglob("*.py"))}
    known = set(files)
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        edges: set[str] = set()
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            for target in _imported(node, module, path.name == "__init__.py", known):
                # "import cluster.a.b" names cluster.a.b; keep the longest known prefix.
                while target and target not in known:
                    target = target.rpartition(".")[0]
                if target and target != module:
                    edges.add(target)
        graph[module] = edges
    return graph


def find_cycle(graph: Mapping[str, set[str]]) -> list[str] | None:
    """One cycle as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_cluster_has_no_import_cycle() -> None:
    graph = import_graph(ROOT)
    assert "cluster.hostplan" in graph and "cluster.services.postfix" in graph
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def _write(root: Path, files: Mapping[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.mark.parametrize(
    ("files", "cycle"),
    [
        # The circle this test was written for: a context type in the module that imports
        # every service, imported back by the services for type checking only.
        (
            {
                "pkg/__init__.py": "",
                "pkg/hostplan.py": "from pkg.services import svc\nclass Ctx: ...\n",
                "pkg/services/__init__.py": "",
                "pkg/services/svc.py": (
                    "from typing import TYPE_CHECKING\n"
                    "if TYPE_CHECKING:\n    from pkg.hostplan import Ctx\n"
                ),
            },
            ["pkg.hostplan", "pkg.services.svc", "pkg.hostplan"],
        ),
        # Around a loop, relative and function-local.
        (
            {
                "pkg/__init__.py": "",
                "pkg/a.py": "from . import b\n",
                "pkg/b.py": "import pkg.c\n",
                "pkg/c.py": "def f():\n    from .a import X\n",
            },
            ["pkg.a", "pkg.b", "pkg.c", "pkg.a"],
        ),
    ],
)
def test_a_cycle_is_found_and_named(
    tmp_path: Path, files: dict[str, str], cycle: list[str]
) -> None:
    _write(tmp_path, files)
    assert find_cycle(import_graph(tmp_path, "pkg")) == cycle


def test_a_package_listing_its_modules_is_no_cycle(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/services/__init__.py": "from pkg.services import a, b\n",
            "pkg/services/a.py": "from pkg.services import b\n",
            "pkg/services/b.py": "X = 1\n",
        },
    )
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.services.a"] == {"pkg.services.b"}
    assert find_cycle(graph) is None
