"""The services of a node, in the order their steps are declared.

Each module has ``PACKAGES`` (Debian packages it needs) and ``steps(ctx) -> list[Step]``, and
exports the names of the steps other modules wait on (``*_STEP`` constants). A plan runs a step's
dependencies first wherever they are declared and breaks ties by this order, which lists a
module before the modules that wait on it: the node's identity and role script first, Heartbeat
(whose reconcile step is the plan's last) at the end.
"""

from __future__ import annotations

from types import ModuleType

from cluster.services import (
    access,
    alerts,
    apache,
    autoconfig,
    backup,
    base,
    bayes,
    bgp,
    bind,
    domains,
    dovecot,
    fail2ban,
    firewall,
    health,
    heartbeat,
    mailgraph,
    mariadb,
    mesh,
    metrics,
    mta_sts,
    nodepkg,
    postfix,
    postfixadmin,
    ratelimit,
    replication,
    rescue,
    role,
    rspamd,
    srs,
    storage,
    sync,
    tls,
)

SERVICES: tuple[ModuleType, ...] = (
    base,
    # The node package before every service whose programs come from it.
    nodepkg,
    role,
    access,
    firewall,
    storage,
    mesh,
    tls,
    mariadb,
    postfixadmin,
    # rspamd's Bayes store before rspamd, which connects to it.
    bayes,
    rspamd,
    # Further domains' keys and zones: after rspamd, before bind (whose steps run its command).
    domains,
    dovecot,
    # The controller Dovecot's events go to.
    replication,
    ratelimit,
    # postsrsd before the Postfix that asks it.
    srs,
    postfix,
    bind,
    mta_sts,
    # The documents Apache's site maps URLs to.
    autoconfig,
    apache,
    mailgraph,
    sync,
    fail2ban,
    health,
    metrics,
    alerts,
    backup,
    rescue,
    # Last: Heartbeat's start and reconcile (the plan's final step) need every file above.
    bgp,
    heartbeat,
)
