"""Read the committed ``Pulumi.<stack>.yaml`` files the way Pulumi would hand them to us."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
NAMESPACE = "mailcluster"


def stack_file(stack: str) -> Path:
    return ROOT / f"Pulumi.{stack}.yaml"


def read_stack_config(stack: str) -> dict[str, Any]:
    """The stack's ``mailcluster:`` keys, without the prefix. Secure values (``{secure: ...}``)
    are left out: they are Pulumi secrets, read where they are used."""
    data = yaml.safe_load(stack_file(stack).read_text()) or {}
    out: dict[str, Any] = {}
    for key, value in (data.get("config") or {}).items():
        namespace, _, name = key.partition(":")
        if namespace == NAMESPACE and not (isinstance(value, dict) and "secure" in value):
            out[name] = value
    return out
