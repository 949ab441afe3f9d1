"""The node's identity and role machinery: host name, /etc/mailcluster/cluster.conf and the
``mailcluster-role`` script.

- The host name is the node name (Heartbeat's ``node`` lines and the lab name hosts by it).
- ``cluster.conf``: shell-quoted facts about this node's place in the cluster (no secrets), read
  by the role script, the guard and the scripts the timers run.
- ``/usr/local/sbin/mailcluster-role promote|demote|reconcile|reconcile-db|is-writer|...``: the
  one place that turns a node into the mail-serving master or back into a standby replica.
  Heartbeat calls it (heartbeat.py); the services ask it ``is-writer`` before one-time writes;
  the plan's last step runs ``mailcluster-role reconcile`` (heartbeat.py: it must follow
  Heartbeat's start).

Step names keep the ``heartbeat.`` prefix they had when this lived in heartbeat.py: a step's
name is its Pulumi resource name and the lab's applied-marker, so renaming one would re-run it
on every running node.
"""

from __future__ import annotations

import shlex

from cluster.hostcontext import HostContext
from cluster.plan import CHANGED_MARK, PACKAGES_STEP, Step, file_step_name, script_step
from cluster.services import storage

PACKAGES: tuple[str, ...] = ("bsdutils", "util-linux", "iproute2")

CLUSTER_CONF = "/etc/mailcluster/cluster.conf"
ROLE_SCRIPT = "/usr/local/sbin/mailcluster-role"
# The role script's and the guard's run-time marks (promoted, fenced, locks).
RUN_DIR = "/run/mailcluster"
ROLE_LOCK = f"{RUN_DIR}/role.lock"  # held by every promote, demote and reconcile
# Left by a promote that failed at takeover until one succeeds (resource.d/mailcluster).
PROMOTE_FAILED_MARK = f"{RUN_DIR}/promote-failed"
CLUSTER_CONF_STEP = file_step_name(CLUSTER_CONF)
ROLE_SCRIPT_STEP = file_step_name(ROLE_SCRIPT)
HOSTNAME_STEP = "heartbeat.hostname"
# Heartbeat has run on this node (so it is not a new cluster's first holder): on the volume.
HEARTBEAT_MARK = f"{storage.NODE_STATE_DIR}/heartbeat-started"
# sharedIpMethod bgp: present while this node announces the shared addresses (BIRD includes it;
# Heartbeat's resource in bgp.py writes and removes it). On /run: gone after a reboot.
BGP_ANNOUNCE_FILE = "/run/bird/mailcluster-announce.conf"
# How often a replica in the standby data centre checks that it reads from the active data
# centre's master (``mailcluster-role follow``): a takeover there costs it at most this.
FOLLOW_INTERVAL_S = 3
# The most one question to another node's MariaDB may take, connect to answer (a path that dies
# mid-query must not hold the role lock). A `follow` asks at most three (its source, then the
# active data centre's two nodes): with the kill's grace, 18 s, well inside the 60 s a promote,
# demote or reconcile waits for the lock.
REMOTE_SQL_TIMEOUT_S = 5
# Executables here run after every promote and demote (``run-parts --arg=promote|demote``).
HOOKS_DIR = "/etc/mailcluster/role.d"


def cluster_conf(ctx: HostContext) -> dict[str, str]:
    """The keys of /etc/mailcluster/cluster.conf (shell-quoted values; no secrets)."""
    topo, node, peer = ctx.topology, ctx.node, ctx.peer
    dc_addr = topo.dcs[node.dc]
    others = [n.public_ipv4 for n in topo.nodes if n.name != node.name]
    values = {
        "NODE": node.name,
        "DC": node.dc,
        "SLOT": node.slot,
        "PEER": peer.name,
        "ACTIVE_DC": topo.active_dc,
        "DOMAIN": topo.domain,
        "MAIL_HOST": topo.mail_host,
        "PUBLIC_IP": node.public_ipv4,
        "PRIVATE_IP": node.private_ipv4,
        "PEER_PRIVATE_IP": peer.private_ipv4,
        "VIP": topo.shared_ip(node.dc),
        "VIP_PREFIXLEN": str(dc_addr.public_prefixlen),
        "VIP_IFACE": dc_addr.interface,
        "ACTIVE_VIP": topo.shared_ip(topo.active_dc),
        "SHARED_IP_METHOD": ctx.config.shared_ip_method,
        # MariaDB across data centres, over the mesh: the active data centre's nodes, of which
        # the role script follows the writable one (see its cross_dc_source).
        "ACTIVE_DB_NODES": " ".join(topo.mesh_addresses(topo.active_dc)),
        "MESH_IP": topo.mesh_address(node),
        "SERVER_ID": str(node.server_id),
        "DNS_ROLE": "master" if topo.is_dns_master(node) else "slave",
        "OTHER_NODES": " ".join(others),
        # mailcluster-websync: every other node, over the mesh.
        "WEB_SYNC_TARGETS": " ".join(
            topo.mesh_address(n) for n in topo.nodes if n.name != node.name
        ),
    }
    return {k: shlex.quote(v) for k, v in values.items()}


def steps(ctx: HostContext) -> list[Step]:
    conf = ctx.file(CLUSTER_CONF, conf=cluster_conf(ctx))
    return [
        script_step(
            HOSTNAME_STEP,
            f"""want={shlex.quote(ctx.node.name)}
if [ "$(cat /etc/hostname 2>/dev/null)" != "$want" ]; then
  echo "$want" > /etc/hostname
  echo "{CHANGED_MARK} /etc/hostname $want"
fi
if [ "$(hostname)" != "$want" ]; then
  hostname "$want"
  echo "{CHANGED_MARK} hostname $want"
fi
""",
        ),
        conf,
        ctx.file(
            ROLE_SCRIPT,
            mode="0755",
            after=(PACKAGES_STEP, conf),
            node_state_dir=storage.NODE_STATE_DIR,
            bgp_announce_file=BGP_ANNOUNCE_FILE,
            follow_interval=FOLLOW_INTERVAL_S,
            remote_sql_timeout=REMOTE_SQL_TIMEOUT_S,
            hooks_dir=HOOKS_DIR,
        ),
    ]
