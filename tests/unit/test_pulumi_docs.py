"""The README documents every config key and the deploy commands (and docs/, if any)."""

from __future__ import annotations

from pathlib import Path

from cluster.config import KEYS, SECRET_KEYS

ROOT = Path(__file__).resolve().parents[2]


def _docs() -> str:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return "\n".join(f.read_text() for f in files if f.exists())


def test_every_config_key_is_documented() -> None:
    text = _docs()
    missing = [k for k in (*KEYS, *SECRET_KEYS) if f"`{k}`" not in text
               and f"`mailcluster:{k}`" not in text]  # fmt: skip
    assert not missing


def test_deploy_commands_are_documented() -> None:
    text = _docs()
    for command in (
        "pulumi login --local",
        "export LINODE_TOKEN=",  # the token lives in the environment, not in stack config
        "pulumi up -s dc1",
        "pulumi up -s dc2",
    ):
        assert command in text
    assert text.index("pulumi up -s dc1") < text.index("pulumi up -s dc2")
