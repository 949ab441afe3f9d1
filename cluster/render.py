"""Jinja2 rendering of ``templates/``, whose tree mirrors the paths files are written to."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import jinja2

from cluster.plan import CHANGED_MARK

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


@cache
def environment() -> jinja2.Environment:
    # StrictUndefined: a variable the caller forgot is an error, never an empty string in a
    # daemon's config. keep_trailing_newline: files end as their templates do.
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.globals["changed_mark"] = CHANGED_MARK  # scripts print it for a real change (plan.py)
    return env


def template_for(target_path: str) -> str:
    """``/etc/postfix/main.cf`` -> ``etc/postfix/main.cf.j2``."""
    return target_path.lstrip("/") + ".j2"


def render(target_path: str, **values: Any) -> str:
    """Render the template that mirrors ``target_path`` with exactly ``values``."""
    return environment().get_template(template_for(target_path)).render(**values)
