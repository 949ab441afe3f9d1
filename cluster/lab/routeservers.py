"""The lab's BGP route servers: Linode's routing of shared addresses, one namespace per DC.

Each data centre gets a namespace ``<prefix>rs-<dc>`` on its LAN bridge (``.2`` and ``::2``)
holding the four route-server addresses of ``addresses.route_servers(dc)`` on ``lo`` and four
BIRDs (from the lab base), one per address (``strict bind``; one BIRD cannot hold two sessions
with the same neighbour): AS 65000, passive, eBGP multihop, a session with each node, as
Linode's route servers do. They are in the data path of the shared addresses when the DC's
``sharedIpMethod`` is bgp:

    client -> router --(shared /32 and /64 via the rs namespace)--> rs -> the node BIRD chose

- Preference: community 65000:1 (primary) gets local preference 200, 65000:2 (secondary) 100; a
  route with neither, or for anything but the DC's shared addresses, is refused.
- Ties (the same community from two nodes, i.e. the moment after a crash when the survivor
  announces while the dead node's route is still held): the older route wins (``prefer older``,
  as FRR and most routers do for eBGP). So a crashed node's route is used until its hold time
  expires, the pessimistic reading of Linode's facts.
- Timers: the route servers propose hold time ``RS_HOLD_TIME_S`` and accept any hold time from
  3 s (``min hold time``), so the node's ``bgpHoldTimeS`` is what the session runs with;
  keepalive is each side's own (the node's ``bgpKeepaliveS``).
- Each route server puts its best route into the namespace's kernel table (next hop: the
  announcing node's LAN address of the route's family), route server N with metric 31+N: the
  kernel forwards by route server 1's choice, by 2's when 1 has none, and so on (they agree
  but for the seconds in which their hold timers of a crashed node run out one after the
  other). Without any, the shared addresses are ``unreachable`` there, as a shared address
  nobody announces is on Linode.

In ``arp`` the router sends the shared addresses to the LAN itself (on-link, ARP/ND), as before;
the route servers keep running, unused.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cluster.lab import addresses as A
from cluster.lab.paths import NS_PREFIX, ROUTER_NS, SWITCH_NS, base_dir, lab_dir
from cluster.lab.run import LabError, in_ns, run
from cluster.services import bgp
from cluster.topology import SLOTS

RS_HOST = 2  # .2 / ::2 on the DC's LAN
RS_HOLD_TIME_S = 180  # FRR's default: the node's smaller hold time wins the negotiation
RS_MIN_HOLD_TIME_S = 3  # RFC 4271's smallest non-zero hold time
LOCAL_PREF = {bgp.COMMUNITY_PRIMARY: 200, bgp.COMMUNITY_SECONDARY: 100}
FALLBACK_METRIC = 4096  # the "unreachable" routes under BIRD's (metric 32)
CONF_DIR_IN_ROOT = "/run/mailcluster-rs"
BIRD_NAME = "bird"

# PID 1 of the route servers' own mount and PID namespaces: the lab base as the root (read
# only, a tmpfs /run of its own), this DC's directory on /run/mailcluster-rs, BIRD in front.
LAUNCH_SCRIPT = r"""
set -eu
base=$1 dir=$2
mount -t tmpfs -o mode=0755 tmpfs "$base/run"
mkdir -p "$base@DIR@"
mount --bind "$dir" "$base@DIR@"
mount --bind /dev "$base/dev"
exec chroot "$base" /usr/sbin/bird -f -c "@DIR@/$3.conf" -s "@DIR@/$3.ctl"
""".replace("@DIR@", CONF_DIR_IN_ROOT)


@dataclass(frozen=True)
class Peer:
    """A node as the route servers see it."""

    host: str
    ipv4: str
    ipv6: str


def namespace(dc: str) -> str:
    return f"{NS_PREFIX}rs-{dc}"


def switch_port(dc: str) -> str:
    return f"p-rs-{dc}"


def lan_address(dc: str) -> str:
    return f"{A.PUBLIC_NETS[dc]}.{RS_HOST}"


def lan_address6(dc: str) -> str:
    return A.v6(A.PUBLIC_NETS6[dc], RS_HOST)


def conf_dir(dc: str) -> Path:
    return lab_dir() / "routeservers" / dc


def peers(dc: str) -> list[Peer]:
    dc_addr = A.lab_dc_addresses(dc)
    out = []
    for slot in SLOTS:
        n = dc_addr.nodes[slot]
        assert n.public_ipv6 is not None  # every lab node is dual stack
        out.append(Peer(f"{dc}-{slot}", n.public_ipv4, n.public_ipv6))
    return out


def shared_prefixes(dc: str) -> tuple[str, str]:
    """(the shared IPv4 /32, the shared IPv6 routed range) of ``dc``."""
    return f"{A.lab_dc_addresses(dc).shared_ipv4}/32", A.v6_net(A.SHARED_RANGES6[dc])


def protocol_name(host: str, index: int) -> str:
    """BIRD's name of the session between node ``host`` and route server ``index`` (1..4)."""
    return f"{host.replace('-', '_')}_rs{index}"


def instance(index: int) -> str:
    """The name of route server ``index``'s BIRD (its config, socket and log file names)."""
    return f"rs{index}"


def render_config(dc: str, index: int) -> str:
    """BIRD's configuration for route server ``index`` (1..4) of ``dc`` (pure: the unit tests
    read it)."""
    v4, v6 = shared_prefixes(dc)
    primary, secondary = bgp.COMMUNITY_PRIMARY, bgp.COMMUNITY_SECONDARY
    rs_as = bgp.ROUTE_SERVER_AS
    rs = A.route_servers(dc)[index - 1]
    metric = 31 + index
    lines = [
        f"# mailcluster lab: route server {index} of {dc}, {rs} (Linode's model; routeservers.py)",
        "log stderr all;",
        f"router id {lan_address(dc)};",
        "protocol device {\n}",
        # The best route of each shared prefix into this namespace's kernel table: the data path.
        *(
            f"protocol kernel kernel{v} {{\n  ipv{v} {{ import none; export all; }};\n"
            f"  metric {metric};\n}}"
            for v in (4, 6)
        ),
    ]
    for peer in peers(dc):
        fn = peer.host.replace("-", "_")
        lines.append(
            f"""# What {peer.host} may announce: only the shared addresses, preferred by community;
# traffic for them goes to its own LAN address of the route's family.
filter from_{fn} {{
  if net.type = NET_IP4 then {{
    if net != {v4} then reject;
    gw = {peer.ipv4};
  }} else {{
    if net != {v6} then reject;
    gw = {peer.ipv6};
  }}
  if ({rs_as}, {primary}) ~ bgp_community then bgp_local_pref = {LOCAL_PREF[primary]};
  else if ({rs_as}, {secondary}) ~ bgp_community then bgp_local_pref = {LOCAL_PREF[secondary]};
  else reject;
  accept;
}}"""
        )
    lines.append(
        f"""template bgp linode_rs {{
  local {rs} as {rs_as};
  strict bind on;
  passive on;
  multihop;
  hold time {RS_HOLD_TIME_S};
  min hold time {RS_MIN_HOLD_TIME_S};
  prefer older on;
  graceful restart off;
  error wait time 1, 2;
  ipv4 {{ extended next hop on; export none; }};
  ipv6 {{ export none; }};
}}"""
    )
    for peer in peers(dc):
        fn = peer.host.replace("-", "_")
        lines.append(
            f"""protocol bgp {protocol_name(peer.host, index)} from linode_rs {{
  neighbor {peer.ipv6} as {bgp.NODE_AS};
  ipv4 {{ import filter from_{fn}; }};
  ipv6 {{ import filter from_{fn}; }};
}}"""
        )
    return "\n".join(lines) + "\n"


# -- the namespace and its BIRD --------------------------------------------------------------


def _bird_pid(dc: str, index: int) -> int | None:
    """Route server ``index``'s BIRD pid (this machine's view), found among the namespace's
    processes by its configuration file."""
    pids = run(["ip", "netns", "pids", namespace(dc)], check=False).stdout.split()
    want = f"{CONF_DIR_IN_ROOT}/{instance(index)}.conf"
    for pid in pids:
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            argv = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
        except OSError:
            continue
        if comm == BIRD_NAME and want in argv:
            return int(pid)
    return None


def birdc(dc: str, index: int, *args: str, check: bool = True) -> str:
    """``birdc ARGS`` against route server ``index`` of ``dc`` (inside BIRD's own root)."""
    pid = _bird_pid(dc, index)
    if pid is None:
        raise LabError(f"route server {index} of {dc} does not run")
    proc = run(
        ["nsenter", "-t", str(pid), "-m", "-n", "-r", "-w", "--", "/usr/sbin/birdc",
         "-s", f"{CONF_DIR_IN_ROOT}/{instance(index)}.ctl", *args],
        check=check, timeout=10,
    )  # fmt: skip
    return proc.stdout


def ensure(dc: str) -> None:
    """The namespace of ``dc``'s route servers, its cable, addresses and routes, and BIRD with
    the current configuration (started, or reconfigured when it runs). Idempotent."""
    ns = namespace(dc)
    if not Path(f"/run/netns/{ns}").exists():
        run(["ip", "netns", "add", ns])
    run(["ip", "-n", ns, "link", "set", "lo", "up"])
    port = switch_port(dc)
    if run(["ip", "-n", SWITCH_NS, "link", "show", "dev", port], check=False).returncode != 0:
        run(["ip", "-n", SWITCH_NS, "link", "add", port, "type", "veth",
             "peer", "name", A.INTERFACE, "netns", ns])  # fmt: skip
    run(["ip", "-n", SWITCH_NS, "link", "set", port, "master", dc])
    run(["ip", "-n", SWITCH_NS, "link", "set", port, "up"])
    run(["ip", "-n", ns, "link", "set", A.INTERFACE, "up"])
    run(in_ns(ns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1",
              "net.ipv6.conf.all.forwarding=1", "net.ipv4.conf.all.send_redirects=0",
              f"net.ipv4.conf.{A.INTERFACE}.send_redirects=0"))  # fmt: skip
    _address(ns, A.INTERFACE, f"{lan_address(dc)}/{A.PREFIXLEN}")
    _address(ns, A.INTERFACE, f"{lan_address6(dc)}/{A.PREFIXLEN6}")
    for rs in A.route_servers(dc):
        _address(ns, "lo", f"{rs}/128")
    # The nodes (BGP sessions come from their public IPv6) are on the LAN; the rest of the lab
    # (the client's answers go back the way they came: the router) is behind the router.
    run(["ip", "-n", ns, "-4", "route", "replace", "default",
         "via", A.router_address(A.PUBLIC_NETS[dc])])  # fmt: skip
    run(["ip", "-n", ns, "-6", "route", "replace", "default",
         "via", A.router_address6(A.PUBLIC_NETS6[dc])])  # fmt: skip
    for prefix in shared_prefixes(dc):
        family = "-6" if ":" in prefix else "-4"
        run(["ip", "-n", ns, family, "route", "replace", "unreachable", prefix,
             "metric", str(FALLBACK_METRIC)])  # fmt: skip
    # The nodes reach the route servers through their gateway, the router (multihop).
    run(["ip", "-n", ROUTER_NS, "-6", "route", "replace",
         A.v6_net(A.ROUTE_SERVER_NETS6[dc]), "via", lan_address6(dc)])  # fmt: skip
    for index in range(1, len(A.route_servers(dc)) + 1):
        _start_or_reconfigure(dc, index)


def _address(ns: str, dev: str, cidr: str) -> None:
    have = run(["ip", "-n", ns, "-o", "addr", "show", "dev", dev]).stdout
    if f" {cidr} " not in have:
        extra = ["nodad"] if ":" in cidr else []
        run(["ip", "-n", ns, "addr", "add", cidr, "dev", dev, *extra])


def _start_or_reconfigure(dc: str, index: int) -> None:
    d = conf_dir(dc)
    d.mkdir(parents=True, exist_ok=True)
    name = instance(index)
    (d / f"{name}.conf").write_text(render_config(dc, index))
    if _bird_pid(dc, index) is not None:
        out = birdc(dc, index, "configure")
        if "Reconfigur" not in out:
            raise LabError(f"route server {index} of {dc}: birdc configure: {out.strip()}")
        return
    with open(d / f"{name}.log", "ab") as log:
        subprocess.Popen(
            in_ns(namespace(dc), "unshare", "--mount", "--pid", "--fork", "--propagation",
                  "private", "sh", "-c", LAUNCH_SCRIPT, "rs", str(base_dir()), str(d), name),
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if _bird_pid(dc, index) is not None and (d / f"{name}.ctl").exists():
            return
        time.sleep(0.05)
    raise LabError(f"route server {index} of {dc} did not start; see {d / name}.log")


def route_shared(dc: str, method: str) -> None:
    """The router's path to ``dc``'s shared addresses: through the route servers (bgp) or
    on-link on the DC's LAN, where the holder answers ARP/ND (arp)."""
    v4, v6 = shared_prefixes(dc)
    if method == "bgp":
        run(["ip", "-n", ROUTER_NS, "-4", "route", "replace", v4, "via", lan_address(dc)])
        run(["ip", "-n", ROUTER_NS, "-6", "route", "replace", v6, "via", lan_address6(dc)])
    else:
        run(["ip", "-n", ROUTER_NS, "-4", "route", "del", v4], check=False)
        run(["ip", "-n", ROUTER_NS, "-6", "route", "replace", v6, "dev", dc])
    # Cached neighbour and route decisions for the old path must not outlive it.
    run(["ip", "-n", ROUTER_NS, "-4", "route", "flush", "cache"], check=False)


def routed_method(dc: str) -> str:
    """How the router reaches ``dc``'s shared addresses now: "bgp" or "arp"."""
    v4, _ = shared_prefixes(dc)
    out = run(["ip", "-n", ROUTER_NS, "-4", "route", "show", "exact", v4], check=False).stdout
    return "bgp" if f"via {lan_address(dc)}" in out else "arp"


_BEST = re.compile(r"^\S+\s+\S+\s+\[(\S+)\s.*\*")


def best_route(dc: str, index: int, prefix: str) -> str | None:
    """The node route server ``index`` of ``dc`` routes ``prefix`` to (``birdc show route``),
    or None."""
    names = {p.host.replace("-", "_"): p.host for p in peers(dc)}
    for line in birdc(dc, index, "show", "route", prefix, check=False).splitlines():
        m = _BEST.match(line)
        if m:
            return names.get(m.group(1).rsplit("_rs", 1)[0])
    return None


def preferred(dc: str) -> dict[str, str | None]:
    """Which node the route servers send each shared prefix to: ``{"ipv4": host or None,
    "ipv6": host or None}``, the first route server (in the kernel's metric order) that has a
    route deciding, as it does for the traffic."""
    out: dict[str, str | None] = {}
    for family, prefix in zip(("ipv4", "ipv6"), shared_prefixes(dc), strict=True):
        out[family] = None
        for index in range(1, len(A.route_servers(dc)) + 1):
            host = best_route(dc, index, prefix)
            if host is not None:
                out[family] = host
                break
    return out
