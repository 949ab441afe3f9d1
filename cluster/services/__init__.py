"""The services of a node, in the order their steps are declared.

Each module has ``PACKAGES`` (Debian packages it needs) and ``steps(ctx) -> list[Step]``.
"""

from __future__ import annotations

from types import ModuleType

from cluster.services import (
    access,
    apache,
    base,
    bind,
    dovecot,
    heartbeat,
    mailgraph,
    mariadb,
    postfix,
    postfixadmin,
    rspamd,
    storage,
    sync,
    tls,
)

SERVICES: tuple[ModuleType, ...] = (
    base,
    access,
    storage,
    tls,
    mariadb,
    postfixadmin,
    rspamd,
    dovecot,
    postfix,
    bind,
    apache,
    mailgraph,
    sync,
    heartbeat,
)
