"""The BGP method of sharing a data centre's IP (``sharedIpMethod: bgp``): the shared IP on
``lo`` of both nodes, and the announcer Heartbeat starts on the node that should receive it.

- The shared IP sits on ``lo`` of both nodes, persistently (ifupdown) and at once (``ip addr``).
- The announcer today is Linode's ``lelastic``, run by the Heartbeat resource
  ``/etc/ha.d/resource.d/lelastic`` on the active node only. lelastic is not a Debian package: a
  Linode-only step downloads the pinned release ``LELASTIC_VERSION`` from GitHub to
  /usr/local/bin/lelastic and checks it against ``LELASTIC_SHA256`` when set. The lab models the
  route servers and never downloads anything.

Everything that knows the announcer is here (and in the role script's ``holds_vip``), so
replacing lelastic by a Debian BGP daemon changes this module, not heartbeat.py: Heartbeat
takes ``HA_RESOURCE`` and watches ``heartbeat_inputs(ctx)``.

Step names keep the ``heartbeat.`` prefix they had when this lived in heartbeat.py (a renamed
step would re-run on every running node).
"""

from __future__ import annotations

import shlex

from cluster.hostcontext import HostContext
from cluster.plan import CHANGED_MARK, STATE_DIR, Step, StepRef, script_step, step_names
from cluster.services.role import CLUSTER_CONF

PACKAGES: tuple[str, ...] = ("iproute2", "curl")

# The Heartbeat resource (a script in /etc/ha.d/resource.d/) that announces the shared IP.
HA_RESOURCE = "lelastic"
RESOURCE_SCRIPT = f"/etc/ha.d/resource.d/{HA_RESOURCE}"
LO_CONFIG = "/etc/network/interfaces.d/mailcluster-shared-ip"
LO_STEP = "heartbeat.shared-ip-on-lo"
INSTALL_STEP = "heartbeat.lelastic"
# Undoes LO_STEP and LO_CONFIG when a later config drops them (sharedIpMethod bgp -> arp): the
# Pulumi applier runs it as those Commands' ``delete``. Guarded by the node's current
# cluster.conf, so a Command deleted for another reason (provision: false, a destroy) leaves a
# bgp node alone.
UNDO_SCRIPT = f"""conf={CLUSTER_CONF}
if [ -r "$conf" ] && . "$conf" && [ "${{SHARED_IP_METHOD:-}}" = bgp ]; then exit 0; fi
for a in $(ip -o -4 addr show dev lo scope global | awk '{{print $4}}'); do
  ip addr del "$a" dev lo
done
rm -f {LO_CONFIG}
"""

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


def enabled(ctx: HostContext) -> bool:
    return ctx.config.shared_ip_method == "bgp"


def lelastic_dcid(region: str) -> int:
    try:
        return LELASTIC_DCID[region]
    except KeyError:
        raise ValueError(
            f"sharedIpMethod bgp: no lelastic data centre id is known for region {region!r} "
            f"(known: {', '.join(sorted(LELASTIC_DCID))}); use sharedIpMethod arp there"
        ) from None


def _steps(ctx: HostContext) -> tuple[list[Step], list[StepRef]]:
    """(every step, the ones Heartbeat's start watches)."""
    if not enabled(ctx):
        return [], []
    vip = ctx.topology.shared_ip(ctx.node.dc)
    resource = ctx.file(RESOURCE_SCRIPT, mode="0755", dcid=lelastic_dcid(ctx.config.region))
    lo_config = ctx.file(LO_CONFIG, vip=vip)
    on_lo = script_step(
        LO_STEP,
        f"""if ! ip -o -4 addr show dev lo | grep -q ' inet {vip}/32'; then
  ip addr add {vip}/32 dev lo
  echo "{CHANGED_MARK} {vip}/32 on lo"
fi
""",
        watch=(lo_config,),
    )
    out = [resource, lo_config, on_lo]
    watched: list[StepRef] = [resource, on_lo]
    if ctx.platform == "linode":
        install = _lelastic_install_step()
        out.append(install)
        watched.append(install)
    return out, watched


def heartbeat_inputs(ctx: HostContext) -> tuple[str, ...]:
    """The steps Heartbeat's start watches: a changed announcer means a Heartbeat reload."""
    return step_names(_steps(ctx)[1])


def steps(ctx: HostContext) -> list[Step]:
    return _steps(ctx)[0]


def _lelastic_install_step() -> Step:
    url = LELASTIC_URL.format(version=LELASTIC_VERSION)
    stamp = f"{STATE_DIR}/lelastic.version"
    return script_step(
        INSTALL_STEP,
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
