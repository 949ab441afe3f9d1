"""Heartbeat: the shared IP of a data centre and the mail role move together between svr1/svr2.

- Heartbeat v3 in haresources mode, ucast over the private network, sha1 authkeys (a cluster
  secret, 0600), ``auto_failback off`` so a returning node stays the standby.
- ``arp``: ``IPaddr2`` puts the shared IP on the LAN interface of the active node (the lab, VLANs).
  ``bgp``: the shared IP sits on ``lo`` of both nodes (persistent, via ifupdown), and Heartbeat
  starts Linode's ``lelastic`` on the active node only, which announces it by BGP. lelastic is
  not a Debian package: a Linode-only step downloads the pinned release ``LELASTIC_VERSION`` from
  GitHub to /usr/local/bin/lelastic and checks it against ``LELASTIC_SHA256`` when set.
- Split brain: ``ping`` the data centre's router (the first address of the public LAN, which is
  the default gateway on Linode and the router namespace in the lab) plus ``ipfail``, so of two
  nodes that lost each other the one that also lost its uplink gives the resources up. The other
  data centre's shared IP would be a worse ping node: when that data centre is down both nodes
  lose it and ipfail can no longer tell them apart.
- ipfail only acts while the two nodes talk. For the case it misses (a node lost its peer AND
  its uplink), Heartbeat respawns ``/usr/local/sbin/mailcluster-guard``, which fences such a node:
  Heartbeat stopped (shared IP released, demoted, Postfix stopped) until the uplink returns, then
  started again as the standby. The guard waits ``max(1 s, deadtime)`` after Heartbeat declared
  the peer dead, so the surviving node has taken over by the time the isolated one lets go.
- After the IP, Heartbeat runs ``/etc/ha.d/resource.d/mailcluster`` ->
  ``/usr/local/sbin/mailcluster-role promote|demote|status``. Before Heartbeat starts on a node,
  ``/etc/ha.d/resource.d/startstop pre-start`` demotes it, so a rebooted old master never
  serves as a second master.
- The plan's last step on every node is ``mailcluster-role reconcile``.

Also here, because Heartbeat needs them first: the host name (= node name, which Heartbeat's
``node`` lines use), /etc/mailcluster/cluster.conf and the role script.
"""

from __future__ import annotations

import ipaddress
import shlex
from typing import TYPE_CHECKING, Any

from cluster.plan import CHANGED_MARK, STATE_DIR, Step, script_step

if TYPE_CHECKING:
    from cluster.hostplan import HostContext

PACKAGES: tuple[str, ...] = (
    "heartbeat",
    "iproute2",
    "iputils-ping",
    "bsdutils",
    "util-linux",
    "curl",
)

CLUSTER_CONF = "/etc/mailcluster/cluster.conf"
ROLE_SCRIPT = "/usr/local/sbin/mailcluster-role"
GUARD_SCRIPT = "/usr/local/sbin/mailcluster-guard"
CLUSTER_CONF_STEP = f"file:{CLUSTER_CONF}"
ROLE_SCRIPT_STEP = f"file:{ROLE_SCRIPT}"
HOSTNAME_STEP = "heartbeat.hostname"
START_STEP = "heartbeat.start"
RECONCILE_STEP = "heartbeat.reconcile"
HB_MARK = f"{STATE_DIR}/heartbeat-started"
# A fenced node rejoins once its uplink has answered this many seconds in a row (not at the
# first echo of a flapping link).
GUARD_REJOIN_S = 3
# The master's MariaDB unanswered this long (a crash, or a stop without moving the role first)
# hands the role to the peer: long enough for a restart by hand to not count, short enough that
# senders see only a few 4xx.
GUARD_DB_GRACE_MS = 3000
BOOT_DROPIN = "/etc/systemd/system/heartbeat.service.d/mailcluster.conf"

# Linode's lelastic release, pinned. The sha256 of lelastic.gz of that release: fill it in (or
# override it) once fetched from a trusted machine; while empty, the step logs the digest it saw.
LELASTIC_VERSION = "v0.0.6"
LELASTIC_SHA256 = ""
LELASTIC_URL = "https://github.com/linode/lelastic/releases/download/{version}/lelastic.gz"

# Linode data centre ids for lelastic -dcid (Linode's "Configure IP failover" guide). Regions
# not listed have no documented BGP failover id: use sharedIpMethod arp there.
LELASTIC_DCID = {
    "us-central": 2,
    "us-west": 3,
    "us-southeast": 4,
    "us-east": 6,
    "eu-west": 7,
    "ap-south": 9,
    "eu-central": 10,
    "ap-northeast": 11,
    "ap-west": 14,
    "ca-central": 15,
    "ap-southeast": 16,
    "us-iad": 17,
    "us-ord": 18,
    "fr-par": 19,
}


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
        "DB_MASTER": topo.db_master_address,
        "SERVER_ID": str(node.server_id),
        "DNS_ROLE": "master" if topo.is_dns_master(node) else "slave",
        "OTHER_NODES": " ".join(others),
        # mailcluster-websync: the peer over the private network, the other DC over the public.
        "WEB_SYNC_TARGETS": " ".join(
            [peer.private_ipv4] + [n.public_ipv4 for n in topo.nodes if n.dc != node.dc]
        ),
    }
    return {k: shlex.quote(v) for k, v in values.items()}


def gateway(ctx: HostContext) -> str:
    """The first address of the node's public LAN: the default gateway on Linode, the router
    namespace in the lab."""
    dc_addr = ctx.topology.dcs[ctx.node.dc]
    net = ipaddress.ip_network(f"{ctx.node.public_ipv4}/{dc_addr.public_prefixlen}", strict=False)
    return str(next(net.hosts()))


def resources(ctx: HostContext) -> list[str]:
    dc_addr = ctx.topology.dcs[ctx.node.dc]
    vip = ctx.topology.shared_ip(ctx.node.dc)
    if ctx.config.shared_ip_method == "bgp":
        return ["lelastic", "mailcluster"]
    return [f"IPaddr2::{vip}/{dc_addr.public_prefixlen}/{dc_addr.interface}", "mailcluster"]


def lelastic_dcid(region: str) -> int:
    try:
        return LELASTIC_DCID[region]
    except KeyError:
        raise ValueError(
            f"sharedIpMethod bgp: no lelastic data centre id is known for region {region!r} "
            f"(known: {', '.join(sorted(LELASTIC_DCID))}); use sharedIpMethod arp there"
        ) from None


def _timings(ctx: HostContext) -> dict[str, Any]:
    keepalive = ctx.config.heartbeat_keepalive_ms
    deadtime = ctx.config.heartbeat_deadtime_ms
    return {
        "keepalive_ms": keepalive,
        "deadtime_ms": deadtime,
        # warntime between keepalive and deadtime; initdead at least twice deadtime and 10 s
        # (Heartbeat warns below that), so two nodes booting together find each other first.
        "warntime_ms": max(keepalive, deadtime // 2),
        "initdead_ms": max(2 * deadtime, 10000),
    }


def steps(ctx: HostContext) -> list[Step]:
    node = ctx.node
    bgp = ctx.config.shared_ip_method == "bgp"
    out: list[Step] = [
        script_step(
            HOSTNAME_STEP,
            f"""want={shlex.quote(node.name)}
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
        ctx.file(CLUSTER_CONF, conf=cluster_conf(ctx)),
        ctx.file(ROLE_SCRIPT, mode="0755", after=("packages", CLUSTER_CONF_STEP)),
        ctx.file(
            "/etc/ha.d/ha.cf",
            interface=ctx.topology.dcs[node.dc].interface,
            node_names=sorted([node.name, ctx.peer.name]),
            ping_node=gateway(ctx),
            guard=GUARD_SCRIPT,
            **_timings(ctx),
        ),
        ctx.file(
            "/etc/ha.d/authkeys", mode="0600", secret=True, authkey=ctx.secrets.heartbeat_authkey
        ),
        ctx.file(
            "/etc/ha.d/haresources",
            preferred=f"{node.dc}-svr1",
            resources=resources(ctx),
        ),
        ctx.file("/etc/ha.d/resource.d/mailcluster", mode="0755"),
        ctx.file("/etc/ha.d/resource.d/startstop", mode="0755"),
        ctx.file(
            GUARD_SCRIPT,
            mode="0755",
            after=("packages", CLUSTER_CONF_STEP),
            ping_node=gateway(ctx),
            grace_ms=max(1000, ctx.config.heartbeat_deadtime_ms),
            rejoin_s=GUARD_REJOIN_S,
            db_grace_ms=GUARD_DB_GRACE_MS,
        ),
        ctx.file(BOOT_DROPIN),
        # Postfix runs only where mailcluster-role starts it: never by itself at boot, or a
        # rebooted standby would accept mail next to the active node. (systemctl exists only on
        # systemd hosts such as Linode's; the lab has none and uses update-rc.d.)
        script_step(
            "heartbeat.boot",
            f"""if [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  if systemctl is-enabled --quiet postfix 2>/dev/null; then
    systemctl disable --quiet postfix
    echo "{CHANGED_MARK} postfix not started at boot"
  fi
elif ls /etc/rc[2-5].d/S*postfix >/dev/null 2>&1; then
  update-rc.d postfix disable >/dev/null 2>&1
  echo "{CHANGED_MARK} postfix not started at boot"
fi
""",
            watch=(f"file:{BOOT_DROPIN}",),
        ),
    ]
    watched = [
        "file:/etc/ha.d/ha.cf",
        "file:/etc/ha.d/authkeys",
        "file:/etc/ha.d/haresources",
        "file:/etc/ha.d/resource.d/mailcluster",
        "file:/etc/ha.d/resource.d/startstop",
        f"file:{GUARD_SCRIPT}",
    ]
    if bgp:
        vip = ctx.topology.shared_ip(node.dc)
        out.append(
            ctx.file(
                "/etc/ha.d/resource.d/lelastic",
                mode="0755",
                dcid=lelastic_dcid(ctx.config.region),
            )
        )
        watched.append("file:/etc/ha.d/resource.d/lelastic")
        out.append(ctx.file("/etc/network/interfaces.d/mailcluster-shared-ip", vip=vip))
        out.append(
            script_step(
                "heartbeat.shared-ip-on-lo",
                f"""if ! ip -o -4 addr show dev lo | grep -q ' inet {vip}/32'; then
  ip addr add {vip}/32 dev lo
  echo "{CHANGED_MARK} {vip}/32 on lo"
fi
""",
                watch=("file:/etc/network/interfaces.d/mailcluster-shared-ip",),
            )
        )
        watched.append("heartbeat.shared-ip-on-lo")
        if ctx.platform == "linode":
            out.append(_lelastic_install_step())
            watched.append("heartbeat.lelastic")
    wait_tenths = (_timings(ctx)["initdead_ms"] + 15000) // 100
    out.append(
        script_step(
            START_STEP,
            f"""# Reload (heartbeat -r keeps the resources) when running; a restart would move them.
if cl_status hbstatus >/dev/null 2>&1; then
  service heartbeat reload >/dev/null
  echo "{CHANGED_MARK} heartbeat reloaded"
else
  service heartbeat start >/dev/null
  echo "{CHANGED_MARK} heartbeat started"
fi
touch {HB_MARK}
# svr1, the preferred holder, waits (bounded: initdead and a little) until Heartbeat gave it
# the resources, so the reconcile step after this one sees the outcome, not the transition.
# (measured: the first node holds the IP about initdead + 11 s after both started.)
if [ {shlex.quote(node.slot)} = svr1 ]; then
  for _ in $(seq 1 {wait_tenths}); do
    {ROLE_SCRIPT} is-holder && break
    sleep 0.1
  done
fi
""",
            after=(HOSTNAME_STEP, ROLE_SCRIPT_STEP, "heartbeat.boot"),
            watch=tuple(watched),
        )
    )
    out.append(
        script_step(
            RECONCILE_STEP,
            f"{ROLE_SCRIPT} reconcile\n",
            after=(START_STEP,),
            # A MariaDB restart brings read_only back: the master must lift it again.
            watch=(CLUSTER_CONF_STEP, ROLE_SCRIPT_STEP, "mariadb.service"),
        )
    )
    return out


def _lelastic_install_step() -> Step:
    url = LELASTIC_URL.format(version=LELASTIC_VERSION)
    stamp = f"{STATE_DIR}/lelastic.version"
    return script_step(
        "heartbeat.lelastic",
        f"""want={shlex.quote(LELASTIC_VERSION + " " + LELASTIC_SHA256)}
if [ -x /usr/local/bin/lelastic ] && [ "$(cat {stamp} 2>/dev/null)" = "$want" ]; then
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
curl -fsSL --retry 3 -o "$tmp/lelastic.gz" {shlex.quote(url)}
got=$(sha256sum "$tmp/lelastic.gz" | cut -d' ' -f1)
expected={shlex.quote(LELASTIC_SHA256)}
if [ -n "$expected" ] && [ "$got" != "$expected" ]; then
  echo "lelastic.gz sha256 $got, expected $expected" >&2
  exit 1
fi
[ -n "$expected" ] || logger -t mailcluster "lelastic {LELASTIC_VERSION} unpinned sha256 $got"
gunzip "$tmp/lelastic.gz"
install -m 0755 "$tmp/lelastic" /usr/local/bin/lelastic
echo "$want" > {stamp}
echo "{CHANGED_MARK} lelastic {LELASTIC_VERSION}"
""",
    )
