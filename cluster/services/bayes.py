"""rspamd's Bayes store: Valkey on every node, replicated as the database is.

What users teach rspamd (a move into Junk: spam; out of it: ham; mailnode/learn.py) must not
live on one node: after a takeover or a data-centre failover the survivor classifies with it.
rspamd keeps Bayes in Redis (Valkey here: Debian 13's BSD-licensed Redis). The design:

- The writable master's Valkey is the master; every other node's Valkey replicates from the
  node its MariaDB replicates from (``mailcluster-bayes follow``, mailnode/bayes.py): one chain
  for both stores, which the role script already moves on every promote, demote and cross-DC
  follow. A role.d hook runs ``follow`` at once, a timer every ``FOLLOW_EVERY_S`` in case a
  source moved without a promote (the other data centre's master changed).
- Replication runs inside the WireGuard mesh, to the DC peer too (its port is a ``MESH`` rule,
  as dsync's): WireGuard encrypts it and proves who sent it; Valkey adds its password.
- rspamd on every node reads and writes its local Valkey on loopback: only the active node
  learns (the moves happen there) and a replica is read-only, so a standby classifies but never
  writes.

Why not another design: rspamd's Bayes needs Redis (its sqlite backend is gone since 2.0); one
central Valkey would be a single point of failure; learning on all four nodes at once (each
move sent to every rspamd) would lose what a node missed while down, which replication does not.
"""

from __future__ import annotations

import json

from cluster import ports
from cluster.hostcontext import HostContext
from cluster.plan import Step, reload_or_start, script_step
from cluster.services import nodepkg, units
from cluster.services.role import HOOKS_DIR, ROLE_SCRIPT_STEP

PACKAGES: tuple[str, ...] = ("valkey-server",)

CONF = "/etc/valkey/valkey.conf"
PORT = ports.VALKEY_PORT
CONFIG = "/etc/mailcluster/bayes.json"
SECRET = "/etc/mailcluster/secrets/valkey"
COMMAND = "mailcluster-bayes"
SCRIPT = f"/usr/local/sbin/{COMMAND}"
ROLE_HOOK = f"{HOOKS_DIR}/bayes"
ROLE_HOOK_TIMEOUT_S = 10
UNIT = "mailcluster-bayes-follow"
FOLLOW_EVERY_S = 30
# Bayes tokens of a small organisation take tens of MB; the bound only stops a runaway.
MAXMEMORY = "512mb"
RELOAD_STEP = "bayes.valkey"
MYSQL_SOCKET = "/run/mysqld/mysqld.sock"  # the role script's (mailcluster-role)


def config(ctx: HostContext) -> dict[str, object]:
    """mailnode/bayes.py's settings: where Valkey is, and every address a node's MariaDB may
    replicate from (private and mesh) to that node's mesh address."""
    topo = ctx.topology
    mesh = {}
    for node in topo.nodes:
        for address in (node.private_ipv4, topo.mesh_address(node)):
            mesh[address] = topo.mesh_address(node)
    return {
        "host": "127.0.0.1",
        "port": PORT,
        "password_file": SECRET,
        "db_query": [
            "mariadb",
            f"--socket={MYSQL_SOCKET}",
            "-uroot",
            "-N",
            "-B",
            "--connect-timeout=3",
            "-e",
            "SELECT @@global.read_only; SHOW SLAVE STATUS",
        ],
        "mesh_by_address": mesh,
    }


def steps(ctx: HostContext) -> list[Step]:
    conf = ctx.file(
        CONF,
        mode="0640",
        group="valkey",
        secret=True,
        mesh_address=ctx.topology.mesh_address(ctx.node),
        port=PORT,
        password=ctx.secrets.valkey,
        maxmemory=MAXMEMORY,
    )
    valkey = script_step(
        RELOAD_STEP,
        # Valkey has no reload: a restart (rspamd reconnects; a replica resyncs from its
        # source, partially when it can).
        reload_or_start("valkey-server", restart=True),
        watch=(conf,),
    )
    settings = ctx.literal_file(CONFIG, json.dumps(config(ctx), indent=1) + "\n")
    secret = ctx.literal_file(SECRET, ctx.secrets.valkey + "\n", mode="0600", secret=True)
    command = nodepkg.entry_point(ctx, COMMAND, "bayes")
    hook = ctx.file(ROLE_HOOK, mode="0755", after=(command, valkey), command=SCRIPT,
                    timeout_s=ROLE_HOOK_TIMEOUT_S)  # fmt: skip
    follow = units.periodic(
        ctx,
        UNIT,
        f"{SCRIPT} follow",
        description="mailcluster: Valkey (Bayes) follows the database's replication source",
        every_s=FOLLOW_EVERY_S,
        timeout_s=60,
        after=(command, settings, secret, valkey, ROLE_SCRIPT_STEP),
    )
    return [conf, valkey, settings, secret, command, hook, *follow]
