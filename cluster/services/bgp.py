"""The BGP method of sharing a data centre's IP (``sharedIpMethod: bgp``), as Linode routes it:
the shared addresses on ``lo`` of both nodes, BIRD (Debian's ``bird2``) on both nodes with
sessions to the data centre's four route servers, and the Heartbeat resource that makes the
active node announce them.

- The shared IPv4 (/32) and the shared IPv6 (/128, from the routed range) sit on ``lo`` of both
  nodes, persistently (ifupdown) and at once (``ip addr``).
- BIRD runs on both nodes (AS 65001 towards AS 65000, eBGP multihop, extended next hop, hold
  time ``bgpHoldTimeS``, keepalive ``bgpKeepaliveS``), like Linode's FRR guide. It announces
  nothing by itself: Heartbeat's resource ``HA_RESOURCE`` copies the static routes of the shared
  IPv4 /32 and the shared IPv6 routed range (the /64 Linode routes) to ``role.BGP_ANNOUNCE_FILE``
  and reconfigures BIRD on start (community 65000:1, primary); on stop it removes them first,
  so a planned switchover withdraws the old route before the peer announces.
- The route servers: the four of the region (``LINODE_DCID``, Linode's IP failover guide) or,
  in the lab, the data centre's own (``DcAddresses.route_servers``). A region without a known
  id is refused.
- In ``arp`` the step ``LEAVE_STEP`` undoes all of it on a node that ran bgp before.

Everything that knows the announcer is here (and in the role script's ``holds_vip``):
Heartbeat takes ``HA_RESOURCE`` and watches ``heartbeat_inputs(ctx)``. Step names keep the
``heartbeat.`` prefix they had when this lived in heartbeat.py (a renamed step would re-run on
every running node).
"""

from __future__ import annotations

import ipaddress
import textwrap
from typing import Any

from cluster.hostcontext import HostContext
from cluster.plan import (
    CHANGED_MARK,
    Step,
    StepRef,
    file_step_name,
    reload_or_start,
    script_step,
    step_names,
)
from cluster.services.role import BGP_ANNOUNCE_FILE, CLUSTER_CONF

PACKAGES: tuple[str, ...] = ("iproute2", "bird2")

# The Heartbeat resource (a script in /etc/ha.d/resource.d/) that announces the shared IP.
HA_RESOURCE = "mailcluster-bgp"
RESOURCE_SCRIPT = f"/etc/ha.d/resource.d/{HA_RESOURCE}"
BIRD_CONF = "/etc/bird/bird.conf"
# What the resource copies to BGP_ANNOUNCE_FILE: the static routes of the shared addresses.
SHARED_ROUTES = "/etc/bird/mailcluster-shared.conf"
# The package's own default, restored when a node leaves bgp.
BIRD_DEFAULT_CONF = "/usr/share/bird2/bird.conf"
LO_CONFIG = "/etc/network/interfaces.d/mailcluster-shared-ip"
LO_STEP = "heartbeat.shared-ip-on-lo"
BIRD_STEP = "heartbeat.bird"
LEAVE_STEP = "heartbeat.bgp-leave"

# Linode's BGP facts (LINODE-FACTS.md; Linode's guide "Configuring IP Failover over BGP using
# FRR": AS 65001 for the nodes, the route servers AS 65000, ebgp-multihop 10).
NODE_AS = 65001
ROUTE_SERVER_AS = 65000
COMMUNITY_PRIMARY = 1
COMMUNITY_SECONDARY = 2
MULTIHOP = 10
ROUTE_SERVERS_PER_DC = 4

# Linode data centre ids: the route servers of a region are 2600:3c0f:<id>:34::1..4 (Linode's
# "Configure IP failover" guide, the table "IP Sharing Availability", and lelastic's -dcid).
# Regions not listed have no documented BGP failover id: use sharedIpMethod arp there.
LINODE_DCID = {
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


# Heartbeat's resources file: on a switch of method, the node that held the shared addresses
# the old way starts the new way's resources itself (a Heartbeat reload does not).
HARESOURCES = "/etc/ha.d/haresources"


def _start_resources_script(skip: tuple[str, ...]) -> str:
    """Shell lines that start the resources of HARESOURCES but ``skip``, as Heartbeat would
    (``name::arg1::arg2`` -> ``resource.d/name arg1 arg2 start``)."""
    words = "awk '!/^#/ && NF {for (i = 2; i <= NF; i++) print $i}'"
    return f"""for r in $({words} {HARESOURCES}); do
  case "${{r%%::*}}" in {"|".join(skip)}) continue ;; esac
  # shellcheck disable=SC2046
  set -- $(echo "$r" | sed 's/::/ /g')
  name=$1; shift
  /etc/ha.d/resource.d/"$name" "$@" start >/dev/null
  echo "{CHANGED_MARK} this node held the shared IP: started $r"
done
"""


def _leave_script(*, drop_announce: bool = True) -> str:
    """Shell lines that undo bgp on a node: the shared addresses off lo, the announcement gone,
    BIRD back to the package's default configuration (no sessions). Idempotent. Without
    ``drop_announce`` the mark of the announcing node stays for LEAVE_STEP to read (Pulumi may
    run a removed Command's delete before the new step)."""
    return f"""held=no
[ -e {BGP_ANNOUNCE_FILE} ] && held=yes
for a in $(ip -o -4 addr show dev lo scope global | awk '{{print $4}}') \\
         $(ip -o -6 addr show dev lo scope global | awk '{{print $4}}'); do
  ip addr del "$a" dev lo
  echo "{CHANGED_MARK} $a off lo"
done
if [ -e {LO_CONFIG} ]; then
  rm -f {LO_CONFIG}
  echo "{CHANGED_MARK} {LO_CONFIG} removed"
fi
rm -f {BGP_ANNOUNCE_FILE if drop_announce else ""} {SHARED_ROUTES}
if grep -qs 'managed by mailcluster' {BIRD_CONF}; then
  cp {BIRD_DEFAULT_CONF} {BIRD_CONF}
  if birdc show status >/dev/null 2>&1; then
    birdc configure >/dev/null
  fi
  echo "{CHANGED_MARK} BIRD back to the package's configuration (no BGP sessions)"
fi
"""


def _leave_step() -> Step:
    """arp: undo bgp; the node that announced starts arp's resources (the shared IP on the LAN)
    before anything else can tell it apart no more."""
    return script_step(
        LEAVE_STEP,
        _leave_script()
        + f"""if [ "$held" = yes ]; then
{textwrap.indent(_start_resources_script((HA_RESOURCE, "mailcluster")), "  ")}fi
""",
        after=(file_step_name(HARESOURCES),),
    )


# Undoes LO_STEP and LO_CONFIG when a later config drops them (sharedIpMethod bgp -> arp): the
# Pulumi applier runs it as those Commands' ``delete``. Guarded by the node's current
# cluster.conf, so a Command deleted for another reason (provision: false, a destroy) leaves a
# bgp node alone. (In arp, LEAVE_STEP runs the same lines as a step of its own.)
UNDO_SCRIPT = f"""conf={CLUSTER_CONF}
if [ -r "$conf" ] && . "$conf" && [ "${{SHARED_IP_METHOD:-}}" = bgp ]; then exit 0; fi
""" + _leave_script(drop_announce=False)


def enabled(ctx: HostContext) -> bool:
    return ctx.config.shared_ip_method == "bgp"


def linode_dcid(region: str) -> int:
    try:
        return LINODE_DCID[region]
    except KeyError:
        raise ValueError(
            f"sharedIpMethod bgp: no Linode data centre id (route servers) is known for region "
            f"{region!r} (known: {', '.join(sorted(LINODE_DCID))}); use sharedIpMethod arp there"
        ) from None


def linode_route_servers(region: str) -> tuple[str, ...]:
    """Linode's four route servers of ``region``: 2600:3c0f:<dcid>:34::1..4."""
    dcid = linode_dcid(region)
    return tuple(f"2600:3c0f:{dcid}:34::{i}" for i in range(1, ROUTE_SERVERS_PER_DC + 1))


def route_servers(ctx: HostContext) -> tuple[str, ...]:
    given = ctx.topology.dcs[ctx.node.dc].route_servers
    return given if given else linode_route_servers(ctx.config.region)


def shared_v6_range(ctx: HostContext) -> str | None:
    """The shared IPv6 routed range (what is announced): the network of the shared IPv6."""
    dc_addr = ctx.topology.dcs[ctx.node.dc]
    if dc_addr.shared_ipv6 is None:
        return None
    net = ipaddress.IPv6Network(
        f"{dc_addr.shared_ipv6}/{dc_addr.shared_ipv6_prefixlen}", strict=False
    )
    return str(net)


def bird_values(ctx: HostContext) -> dict[str, Any]:
    """The values of /etc/bird/bird.conf (a function of its own: the unit tests read them)."""
    v6 = ctx.node.public_ipv6
    return {
        "router_id": ctx.node.public_ipv4,
        "local_address": f"{v6} " if v6 else "",
        "node_as": NODE_AS,
        "rs_as": ROUTE_SERVER_AS,
        "community_primary": COMMUNITY_PRIMARY,
        "multihop": MULTIHOP,
        "hold_time": ctx.config.bgp_hold_time_s,
        "keepalive": ctx.config.bgp_keepalive_s,
        "route_servers": route_servers(ctx),
        "resource": RESOURCE_SCRIPT,
        "announce_file": BGP_ANNOUNCE_FILE,
        # A glob: BIRD includes nothing (and no error) while the file is absent.
        "announce_glob": BGP_ANNOUNCE_FILE.removesuffix(".conf") + "*.conf",
    }


def _steps(ctx: HostContext) -> tuple[list[Step], list[StepRef]]:
    """(every step, the ones Heartbeat's start watches)."""
    if not enabled(ctx):
        return [_leave_step()], []
    vip = ctx.topology.shared_ip(ctx.node.dc)
    vip6 = ctx.topology.shared_ipv6(ctx.node.dc)
    iface = ctx.topology.dcs[ctx.node.dc].interface
    resource = ctx.file(
        RESOURCE_SCRIPT, mode="0755", shared_routes=SHARED_ROUTES, announce_file=BGP_ANNOUNCE_FILE
    )
    bird_conf = ctx.file(BIRD_CONF, mode="0640", group="bird", **bird_values(ctx))
    shared = ctx.file(
        SHARED_ROUTES,
        resource=RESOURCE_SCRIPT,
        announce_file=BGP_ANNOUNCE_FILE,
        shared_v4=vip,
        shared_v6_range=shared_v6_range(ctx),
    )
    lo_config = ctx.file(LO_CONFIG, vip=vip, vip6=vip6)
    wanted = [f"{vip}/32"] + ([f"{vip6}/128"] if vip6 else [])
    bird = script_step(
        BIRD_STEP,
        # BIRD's include (a glob) needs its directory, which the init script makes at start.
        # A holder announces the routes as they are now (its copy was made at takeover).
        f"""install -d -o bird -g bird -m 0775 {BGP_ANNOUNCE_FILE.rsplit("/", 1)[0]}
if [ -e {BGP_ANNOUNCE_FILE} ] && ! cmp -s {SHARED_ROUTES} {BGP_ANNOUNCE_FILE}; then
  cp {SHARED_ROUTES} {BGP_ANNOUNCE_FILE}
  echo "{CHANGED_MARK} {BGP_ANNOUNCE_FILE} renewed"
fi
"""
        + reload_or_start(
            "bird",
            check=f"bird -p -c {BIRD_CONF}",
            running="birdc show status >/dev/null 2>&1",
            reload="""out=$(birdc configure 2>&1)
case "$out" in *Reconfigur*) ;; *) echo "$out" >&2; exit 1 ;; esac""",
        ),
        watch=(bird_conf, shared),
    )
    on_lo = script_step(
        LO_STEP,
        "".join(
            # replace, not add: the boot's ifup of LO_CONFIG may add it between the check and
            # here (a rebuilt node's first apply failed with "Address already assigned").
            f"""if ! ip -o addr show dev lo | grep -q ' {cidr} '; then
  ip addr replace {cidr} dev lo
  echo "{CHANGED_MARK} {cidr} on lo"
fi
"""
            for cidr in wanted
        )
        # Left on the LAN by arp (IPaddr2/IPv6addr) before a switch to bgp: in bgp nobody may
        # answer ARP/ND for a shared address; the route servers' next hop carries it. The node
        # that held it that way is the holder: it announces now (a Heartbeat reload would not).
        + "held=no\n"
        + "".join(
            f"""if ip -o addr show dev {iface} | grep -q ' {addr}/'; then
  ip addr del "$(ip -o addr show dev {iface} | awk '$4 ~ "^{addr}/" {{print $4}}')" dev {iface}
  echo "{CHANGED_MARK} {addr} off {iface}"
  held=yes
fi
"""
            for addr in [vip] + ([vip6] if vip6 else [])
        )
        + f"""if [ "$held" = yes ]; then
  {RESOURCE_SCRIPT} start
  echo "{CHANGED_MARK} this node held the shared IP: announcing it"
fi
""",
        after=(resource, bird),
        watch=(lo_config,),
    )
    out = [resource, bird_conf, shared, lo_config, on_lo, bird]
    return out, [resource, on_lo, bird]


def heartbeat_inputs(ctx: HostContext) -> tuple[str, ...]:
    """The steps Heartbeat's start watches: a changed announcer means a Heartbeat reload."""
    return step_names(_steps(ctx)[1])


def steps(ctx: HostContext) -> list[Step]:
    return _steps(ctx)[0]
