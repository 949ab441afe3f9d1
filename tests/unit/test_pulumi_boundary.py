"""The layers stay visible: only ``cluster/pulumi/`` (and ``__main__.py``) imports Pulumi.

The pure core is what the lab applies without a Pulumi engine; one ``import pulumi`` in it would
tie the lab to the SDK and blur which code the mocks prove and which the lab proves.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
PULUMI_PACKAGE = CLUSTER / "pulumi"
# Outside tests, the Pulumi layer and the program's entry point may import Pulumi; nothing else.
ALLOWED = (PULUMI_PACKAGE, ROOT / "__main__.py")


def _is_pulumi(module: str) -> bool:
    """``pulumi``, ``pulumi.runtime``, ``pulumi_linode``, ``pulumi_command.remote``, ..."""
    top = module.split(".", 1)[0]
    return top == "pulumi" or top.startswith("pulumi_")


def pulumi_imports(source: str, filename: str = "<string>") -> list[str]:
    """Every absolute import of a ``pulumi*`` package in ``source``, at any depth (also inside
    functions and ``if TYPE_CHECKING:``). Relative imports (``from . import x``) name this
    project's own modules, never Pulumi."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if _is_pulumi(alias.name)]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and _is_pulumi(node.module or ""):
            found.append(str(node.module))
    return found


def test_the_detector_sees_every_form_of_import() -> None:
    source = (
        "import pulumi\n"
        "import os, pulumi_linode as linode\n"
        "from pulumi.runtime import config\n"
        "def f():\n"
        "    import pulumi_command.remote\n"
        "from . import pulumi_thing\n"
        "from cluster.pulumi import peer\n"
        "import pulumiology\n"
    )
    assert pulumi_imports(source) == [
        "pulumi",
        "pulumi_linode",
        "pulumi.runtime",
        "pulumi_command.remote",
    ]


def _outside_the_pulumi_layer() -> list[Path]:
    """Every module of ``cluster/`` and ``bench/`` and at the top level, but the allowed."""
    paths = [*CLUSTER.rglob("*.py"), *(ROOT / "bench").rglob("*.py"), *ROOT.glob("*.py")]
    return sorted(p for p in paths if not any(p.is_relative_to(a) for a in ALLOWED))


def test_the_pure_core_never_imports_pulumi() -> None:
    outside = _outside_the_pulumi_layer()
    assert len([p for p in outside if p.is_relative_to(CLUSTER)]) > 10, "is CLUSTER right?"
    offenders = {
        str(path.relative_to(ROOT)): imports
        for path in outside
        if (imports := pulumi_imports(path.read_text(), str(path)))
    }
    assert not offenders, f"only cluster/pulumi/ and __main__.py may import Pulumi: {offenders}"


def test_the_pulumi_package_is_where_pulumi_is_imported() -> None:
    # The boundary means something only if the Pulumi code really sits behind it.
    importers = [
        path.name
        for path in sorted(PULUMI_PACKAGE.glob("*.py"))
        if pulumi_imports(path.read_text(), str(path))
    ]
    assert {"config.py", "datacentre.py", "material.py", "peer.py", "provision.py"} <= set(
        importers
    )
