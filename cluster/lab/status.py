"""What the lab looks like now: hosts, addresses, services, replication, shared IP holders."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from cluster.config import DC_NAMES
from cluster.lab import addresses as A
from cluster.lab import hosts, routeservers
from cluster.lab.net import host_addresses
from cluster.lab.paths import HOSTS, host_ns
from cluster.lab.run import LabError, run
from cluster.lab.stacks import stack_topology
from cluster.lab.state import HostRecord, LabState

# Process names (pgrep -x) of the daemons a node may run, by the name users know them by.
SERVICES = {
    "postfix": "master",
    "dovecot": "dovecot",
    "mariadb": "mariadbd",
    "bind9": "named",
    "apache2": "apache2",
    "heartbeat": "heartbeat",
    "rspamd": "rspamd",
    "cron": "cron",
    "rsyslog": "rsyslogd",
    "mailgraph": "mailgraph",
}
ROLE_TOOL = "/usr/local/sbin/mailcluster-role"

PROBE = r"""
echo "systemd $(systemctl is-system-running 2>/dev/null)"
systemctl list-units --failed --plain --no-legend 2>/dev/null | awk '{print "failed " $1}'
for pair in @PAIRS@; do
  pgrep -x "${pair#*=}" >/dev/null 2>&1 && echo "svc ${pair%=*}"
done
if [ -x @ROLE@ ]; then
  echo "role $(timeout 5 @ROLE@ status --json 2>/dev/null | tr -d '\n')"
elif command -v mariadb >/dev/null && pgrep -x mariadbd >/dev/null; then
  ro=$(timeout 3 mariadb -N -B -e 'SELECT @@read_only' 2>/dev/null || echo '?')
  st=$(timeout 3 mariadb -e 'SHOW SLAVE STATUS\G' 2>/dev/null | tr -d ' ' \
       | grep -E '^(Slave_IO_Running|Slave_SQL_Running|Seconds_Behind_Master|Master_Host):' \
       | tr '\n' ' ')
  echo "db read_only=$ro $st"
fi
""".replace("@PAIRS@", " ".join(f"{k}={v}" for k, v in SERVICES.items())).replace(
    "@ROLE@", ROLE_TOOL
)


def addresses_on(host: str) -> list[str]:
    """IPv4 addresses on the host's eth0 and eth1 (its VPC interface), read from outside (works
    while the host is down)."""
    found: list[str] = []
    for dev in (A.INTERFACE, A.PRIVATE_INTERFACE):
        out = run(["ip", "-n", host_ns(host), "-o", "-4", "addr", "show", "dev", dev],
                  check=False).stdout.split()  # fmt: skip
        found += [out[i + 1].split("/")[0] for i, w in enumerate(out) if w == "inet"]
    return found


def route_servers_prefer(dc: str) -> dict[str, str | None]:
    """The node the route servers of ``dc`` send each shared address to (None: no route, or
    the route servers do not run)."""
    try:
        return routeservers.preferred(dc)
    except LabError:
        return {"ipv4": None, "ipv6": None}


def vip_holder(dc: str, state: LabState) -> str | None:
    """The running host of ``dc`` that receives the DC's shared IPv4: with bgp, the one the
    route servers prefer; with arp, the one whose eth0 holds it."""
    if stack_topology(state, dc).config.shared_ip_method == "bgp":
        host = route_servers_prefer(dc)["ipv4"]
        alive = host is not None and hosts.alive(state.hosts.get(host, HostRecord()))
        return host if alive else None
    vip = A.lab_dc_addresses(dc).shared_ipv4
    for host in HOSTS:
        rec = state.hosts.get(host, HostRecord())
        if host.startswith(dc + "-") and hosts.alive(rec) and vip in addresses_on(host):
            return host
    return None


def _probe(host: str, rec: HostRecord) -> dict[str, Any]:
    info: dict[str, Any] = {
        "services": [], "replication": None, "role": None, "systemd": None, "failed_units": [],
    }  # fmt: skip
    try:
        proc = hosts.exec_in(host, rec, ["bash", "-c", PROBE], timeout=20)
    except Exception as e:  # a host dying under us is a status, not an error
        info["error"] = str(e)
        return info
    for line in proc.stdout.splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "svc":
            info["services"].append(rest)
        elif kind == "systemd":
            info["systemd"] = rest or "offline"
        elif kind == "failed":
            info["failed_units"].append(rest)
        elif kind == "role" and rest:
            try:
                info["role"] = json.loads(rest)
            except ValueError:
                info["role"] = rest
            if isinstance(info["role"], dict):
                info["replication"] = info["role"].get("replication")
        elif kind == "db":
            fields = dict(w.split("=", 1) if "=" in w else w.split(":", 1) for w in rest.split())
            info["replication"] = fields
    return info


def collect(state: LabState) -> dict[str, Any]:
    topo = stack_topology(state, "dc1")
    active_dc = state.active_dc or topo.active_dc
    up = {h: hosts.alive(state.hosts.get(h, HostRecord())) for h in HOSTS}
    with ThreadPoolExecutor(len(HOSTS)) as pool:
        probes = dict(
            zip(
                HOSTS,
                pool.map(
                    lambda h: _probe(h, state.hosts[h]) if up[h] else {"services": []},
                    HOSTS,
                ),
                strict=True,
            )
        )
    out: dict[str, Any] = {"domain": topo.domain, "active_dc": active_dc, "dcs": {}}
    for dc in DC_NAMES:
        vip = A.lab_dc_addresses(dc).shared_ipv4
        holder = vip_holder(dc, state)
        dc_info: dict[str, Any] = {
            "shared_ip": vip,
            "shared_ipv6": A.lab_dc_addresses(dc).shared_ipv6,
            "shared_ip_method": stack_topology(state, dc).config.shared_ip_method,
            # Who the route servers route each family to (asked with birdc; bgp only).
            "route_servers_prefer": route_servers_prefer(dc),
            "active": holder,
            "cut": dc in state.cut,
            "config_active_dc": stack_topology(state, dc).active_dc,
            "overrides": state.sets.get(dc, {}),  # `apply --stack dc --set k=v`, kept
            "hosts": {},
        }
        for host in (h for h in HOSTS if h.startswith(dc + "-")):
            public, private = host_addresses(host)
            dc_info["hosts"][host] = {
                "public_ip": public,
                "private_ip": private,
                "up": up[host],
                "cut": host in state.cut,
                "holds_shared_ip": holder == host,
                "addresses": addresses_on(host),
                **probes[host],
            }
        out["dcs"][dc] = dc_info
    return out


def render_text(data: dict[str, Any]) -> str:
    lines = [f"domain {data['domain']}, active data centre {data['active_dc']}"]
    for dc, info in data["dcs"].items():
        cut = " (CUT from the router)" if info["cut"] else ""
        lines.append(
            f"{dc}: shared IP {info['shared_ip']} / {info['shared_ipv6']} "
            f"({info['shared_ip_method']}) held by {info['active'] or 'nobody'}{cut}; "
            f"its stack says activeDc={info['config_active_dc']}"
        )
        for host, h in info["hosts"].items():
            state = "up" if h["up"] else "DOWN"
            if h["cut"]:
                state += " (cable cut)"
            role = h.get("role")
            role_name = role.get("role") if isinstance(role, dict) else None
            lines.append(
                f"  {host:9} {state:5} public {h['public_ip']:15} private {h['private_ip']:13}"
                f" {'[shared IP] ' if h['holds_shared_ip'] else ''}"
                f"{f'role {role_name}; ' if role_name else ''}"
                f"services: {', '.join(h['services']) or '-'}"
            )
            if h.get("systemd") not in (None, "running"):
                failed = ", ".join(h.get("failed_units") or []) or "none"
                lines.append(f"            systemd: {h['systemd']}; failed units: {failed}")
            if h.get("replication"):
                lines.append(f"            replication: {json.dumps(h['replication'])}")
    return "\n".join(lines)
