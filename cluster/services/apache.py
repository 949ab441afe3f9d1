"""apache: not yet planned."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cluster.plan import Step

if TYPE_CHECKING:
    from cluster.hostplan import HostContext

PACKAGES: tuple[str, ...] = ()


def steps(ctx: HostContext) -> list[Step]:
    return []
