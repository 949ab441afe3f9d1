"""Heartbeat: the shared IP of a data centre and the mail role move together between svr1/svr2.

- Heartbeat v3 in haresources mode, ucast over the data centre's VPC subnet on the VPC
  interface only (Heartbeat binds both its ucast sockets to the device named in ``ucast``:
  nothing arriving on the public interface reaches it), sha1 authkeys (a cluster secret,
  0600), ``auto_failback off`` so a returning node stays the standby.
- ``arp``: ``IPaddr2`` puts the shared IPv4 on the LAN interface of the active node (the lab,
  VLANs), and ``mailcluster-ipv6`` (resource-agents' IPaddr2 agent for IPv6) the shared IPv6.
  ``bgp``: the resource of bgp.py announces the shared IP that sits on ``lo`` of both nodes.
- Split brain: ``ping`` the data centre's router (the first address of the public LAN, which is
  the default gateway on Linode and the router namespace in the lab) plus ``ipfail``, so of two
  nodes that lost each other the one that also lost its uplink gives the resources up. The other
  data centre's shared IP would be a worse ping node: when that data centre is down both nodes
  lose it and ipfail can no longer tell them apart.
- ipfail only acts while the two nodes talk. For the case it misses (a node lost its peer AND
  its uplink), Heartbeat respawns ``/usr/local/sbin/mailcluster-guard``, which fences such a node:
  Heartbeat stopped (shared IP released, demoted, Postfix stopped) until the uplink returns, then
  started again as the standby. The guard waits ``max(1 s, deadtime)`` after Heartbeat declared
  the peer dead, so the surviving node has taken over by the time the isolated one lets go. It
  is here, not in role.py: Heartbeat respawns it, and it works with Heartbeat's ping node,
  deadtime, ``cl_status`` and ``hb_standby``.
- After the IP, Heartbeat runs ``/etc/ha.d/resource.d/mailcluster`` ->
  ``/usr/local/sbin/mailcluster-role promote|demote|status`` (role.py). Before Heartbeat starts
  on a node, the drop-in of Debian's ``heartbeat.service`` (``BOOT_DROPIN``) demotes it, so a
  rebooted old master never serves as a second master; it also gives the unit the reload the
  plan uses (``heartbeat -r``: a restart in place that keeps the resources).
- The plan's last step on every node is ``mailcluster-role reconcile``, after Heartbeat's start:
  it is declared here because it waits on Heartbeat (and on MariaDB's restarts), which role.py,
  imported by those modules, cannot name without an import cycle.
"""

from __future__ import annotations

import ipaddress
import shlex
from typing import Any

from cluster.hostcontext import HostContext
from cluster.plan import (
    CHANGED_MARK,
    PACKAGES_STEP,
    STATE_DIR,
    Step,
    reload_or_start,
    script_step,
)
from cluster.services import bgp, mariadb, postfix, role, storage
from cluster.topology import VPC_INTERFACE

PACKAGES: tuple[str, ...] = ("heartbeat", "iputils-ping", "bsdutils", "util-linux")

GUARD_SCRIPT = "/usr/local/sbin/mailcluster-guard"
# The arp-mode resource of the shared IPv6 (see its template for why not Heartbeat's IPv6addr).
IPV6_RESOURCE = "mailcluster-ipv6"
IPV6_RESOURCE_SCRIPT = f"/etc/ha.d/resource.d/{IPV6_RESOURCE}"
BOOT_DROPIN = "/etc/systemd/system/heartbeat.service.d/mailcluster.conf"
BOOT_STEP = "heartbeat.boot"
START_STEP = "heartbeat.start"
RESOURCE_MANAGER = "/usr/share/heartbeat/ResourceManager"  # Heartbeat's own group start/stop
# Heartbeat's scripts send their messages to it through ha_clustermsg in this file: ours makes
# each message one locked write (the template says why: two at once lost a takeover).
SHELLFUNCS = "/etc/ha.d/shellfuncs"
CLUSTERMSG_LOCK = "/run/mailcluster-ha-clustermsg.lock"
RECONCILE_STEP = "heartbeat.reconcile"
IPV6_STEP = "heartbeat.shared-ipv6"
HB_MARK = role.HEARTBEAT_MARK
# A fenced node rejoins once its uplink has answered this many seconds in a row (not at the
# first echo of a flapping link).
GUARD_REJOIN_S = 3
# The master's MariaDB unanswered this long (a crash, or a stop without moving the role first)
# hands the role to the peer: long enough for a restart by hand to not count, short enough that
# senders see only a few 4xx.
GUARD_DB_GRACE_MS = 3000
# A holder whose promote failed at takeover (the resource reports started anyway, see
# resource.d/mailcluster) is promoted again by the guard once it has been a holder without the
# "promoted" mark this long: longer than a promote in progress ever takes (it holds the role
# lock, and the guard waits for a free lock too), and again this often until one succeeds.
GUARD_PROMOTE_GRACE_S = 10
# Touched by the guard when it fences this node, on the OS disk (it outlives the run dir's
# "fenced" mark): mailcluster-alerts reports a fence that began and ended between its runs.
FENCE_STAMP = f"{STATE_DIR}/fenced-at"


def gateway(ctx: HostContext) -> str:
    """The first address of the node's public LAN: the default gateway on Linode, the router
    namespace in the lab."""
    dc_addr = ctx.topology.dcs[ctx.node.dc]
    net = ipaddress.ip_network(f"{ctx.node.public_ipv4}/{dc_addr.public_prefixlen}", strict=False)
    return str(next(net.hosts()))


def resources(ctx: HostContext) -> list[str]:
    """haresources' resources, started left to right and stopped right to left.

    arp: the shared IPv4 (``IPaddr2``: the address on the LAN interface, gratuitous ARP), the
    shared IPv6 (``IPV6_RESOURCE``: the address on the same interface, unsolicited neighbour
    advertisements), then the mail role. Both addresses come before the role: Postfix and
    Dovecot already listen on them (ip_nonlocal_bind), so clients are answered as soon as the
    addresses arrive, while the role's promotion (seconds under load) goes on. The IPv6 start
    costs the role a fraction of a second (no DAD, advertisements in the background); measured
    with it after the role instead, IPv6 answered 16 s after IPv4 on a loaded machine.
    """
    if bgp.enabled(ctx):
        return [bgp.HA_RESOURCE, "mailcluster"]
    dc_addr = ctx.topology.dcs[ctx.node.dc]
    vip = ctx.topology.shared_ip(ctx.node.dc)
    out = [f"IPaddr2::{vip}/{dc_addr.public_prefixlen}/{dc_addr.interface}"]
    vip6 = ctx.topology.shared_ipv6(ctx.node.dc)
    if vip6:
        out.append(f"{IPV6_RESOURCE}::{ipv6_resource_address(vip6)}/"
                   f"{dc_addr.shared_ipv6_prefixlen}/{dc_addr.interface}")  # fmt: skip
    return [*out, "mailcluster"]


def ipv6_resource_address(address: str) -> str:
    """``address`` as haresources can carry it: without "::". Heartbeat's ResourceManager
    splits a resource's arguments at every "::" (``IPaddr2::addr/24/eth0``), so a compressed
    IPv6 address would arrive as two arguments; the full form (every group written out, as
    ``ipaddress`` explodes it) has none, and ``ip`` reads it all the same."""
    return ipaddress.IPv6Address(address).exploded


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
    files = [
        ctx.file(
            "/etc/ha.d/ha.cf",
            interface=VPC_INTERFACE,
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
        ctx.file(
            "/etc/ha.d/resource.d/mailcluster",
            mode="0755",
            guard=GUARD_SCRIPT,
            role_script=role.ROLE_SCRIPT,
            promote_failed_mark=role.PROMOTE_FAILED_MARK,
        ),
        ctx.file(IPV6_RESOURCE_SCRIPT, mode="0755"),
        ctx.file(
            GUARD_SCRIPT,
            mode="0755",
            after=(PACKAGES_STEP, role.CLUSTER_CONF_STEP),
            ping_node=gateway(ctx),
            grace_ms=max(1000, ctx.config.heartbeat_deadtime_ms),
            rejoin_s=GUARD_REJOIN_S,
            db_grace_ms=GUARD_DB_GRACE_MS,
            promote_grace_s=GUARD_PROMOTE_GRACE_S,
            role_lock=role.ROLE_LOCK,
            promote_failed_mark=role.PROMOTE_FAILED_MARK,
            fence_stamp=FENCE_STAMP,
        ),
    ]
    # Not among the start step's inputs: Heartbeat's scripts read it afresh at every run, so a
    # change needs no reload of Heartbeat.
    shellfuncs = ctx.file(SHELLFUNCS, lock=CLUSTERMSG_LOCK)
    dropin = ctx.file(BOOT_DROPIN, role_script=role.ROLE_SCRIPT)
    # systemd reads the drop-in (demote before Heartbeat starts, the reload) only after a
    # daemon-reload.
    boot = script_step(BOOT_STEP, "systemctl daemon-reload\n", watch=(dropin,))
    wait_tenths = (_timings(ctx)["initdead_ms"] + 15000) // 100
    start = script_step(
        START_STEP,
        f"""first=yes
[ -e {HB_MARK} ] && first=no
# Reload (heartbeat -r keeps the resources) when running; a restart would move them.
"""
        + reload_or_start("heartbeat", running="cl_status hbstatus >/dev/null 2>&1")
        + f"""touch {HB_MARK}
# At the cluster's first start, svr1, the preferred holder, waits (bounded: initdead and a
# little) until Heartbeat gave it the resources, so the reconcile step after this one sees the
# outcome, not the transition. (measured: the first node holds the IP about initdead + 11 s
# after both started.) Later (a rebuilt svr1: the mark is on its volume) it rejoins as the
# standby (auto_failback off), and there is nothing to wait for.
if [ {shlex.quote(node.slot)} = svr1 ] && [ "$first" = yes ]; then
  for _ in $(seq 1 {wait_tenths}); do
    {role.ROLE_SCRIPT} is-holder && break
    sleep 0.1
  done
  # Heartbeat 3 could lose its own resource request (seen in the lab: "msg2string: Message with
  # zero fields", no ip-request-resp followed, and it counted itself the holder of a group it
  # never started): Debian's ha_clustermsg interleaved two messages (see SHELLFUNCS). Should it
  # happen still, run what Heartbeat would have run: its ResourceManager takes the group
  # (starting only what is not running), then check again.
  if ! {role.ROLE_SCRIPT} is-holder; then
    for key in $({RESOURCE_MANAGER} listkeys {shlex.quote(node.name)}); do
      {RESOURCE_MANAGER} takegroup "$key"
    done
    if ! {role.ROLE_SCRIPT} is-holder; then
      echo "{node.name}: Heartbeat did not start its resources" >&2
      exit 1
    fi
    echo "{CHANGED_MARK} the resources taken again (Heartbeat lost its own request)"
  fi
fi
""",
        # Postfix must not start at boot by itself on a node Heartbeat may make the standby.
        after=(
            role.HOSTNAME_STEP,
            role.ROLE_SCRIPT_STEP,
            boot,
            shellfuncs,
            postfix.BOOT_STEP,
            storage.NODE_STATE_STEP,
        ),
        watch=(*files, *bgp.heartbeat_inputs(ctx)),
        after_remote=_first_start_order(ctx),
    )
    extra: list[Step] = []
    v6 = _ipv6_resource_arg(ctx)
    if v6:
        extra.append(_ipv6_catch_up_step(v6, start))
    reconcile = script_step(
        RECONCILE_STEP,
        f"{role.ROLE_SCRIPT} reconcile\n",
        after=(start, *extra),
        # A MariaDB restart brings read_only back: the master must lift it again.
        watch=(role.CLUSTER_CONF_STEP, role.ROLE_SCRIPT_STEP, mariadb.SERVICE_STEP),
    )
    return [*files, shellfuncs, dropin, boot, start, *extra, reconcile]


def _first_start_order(ctx: HostContext) -> tuple[tuple[str, str], ...]:
    """svr2 starts Heartbeat after svr1's start step, which at a cluster's first start returns
    once svr1 holds the resources. Started first (a slower svr1, a loaded machine), svr2 would
    declare svr1 dead after initdead and take the shared IP and the master role while svr1,
    the first apply's writable master, still held writes svr2 never received: their databases
    diverge (the lab showed it: "GTID ... not in the master's binlog" on every replica)."""
    if ctx.node.slot == "svr1":
        return ()
    return ((ctx.peer.name, START_STEP),)


def _ipv6_resource_arg(ctx: HostContext) -> str | None:
    """The argument of the shared IPv6's resource in haresources, or None (bgp, no IPv6)."""
    for resource in resources(ctx):
        name, _, arg = resource.partition("::")
        if name == IPV6_RESOURCE:
            return arg
    return None


def _ipv6_catch_up_step(arg: str, start: Step) -> Step:
    """A running Heartbeat reloads a changed haresources (the start step) but acquires nothing
    new: on a cluster that gains its shared IPv6 the holder of the shared IPv4 would serve
    IPv6 only from the next takeover. It takes the IPv6 now, as Heartbeat would have with the
    group; a later release (takeover, standby) stops it with the rest of the group."""
    res = f"{IPV6_RESOURCE_SCRIPT} {shlex.quote(arg)}"
    return script_step(
        IPV6_STEP,
        f"""# Heartbeat may be acquiring the group right now (a first start): let it finish first.
for _ in $(seq 1 150); do
  [ "$(cl_status rscstatus 2>/dev/null)" = transition ] || break
  sleep 0.1
done
if {role.ROLE_SCRIPT} is-holder && [ "$({res} status)" != running ]; then
  {res} start >/dev/null
  echo "{CHANGED_MARK} shared IPv6 taken beside the shared IPv4"
fi
""",
        after=(start,),
    )
