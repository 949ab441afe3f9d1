"""The shared addresses as Linode routes them (sharedIpMethod bgp, the lab's default): each
data centre's four route servers hold a session with both nodes, with the node's hold time;
only Heartbeat's holder announces; the route servers route both families to it, and `status
--json` says so."""

from __future__ import annotations

import re

from cluster.config import DC_NAMES
from cluster.lab import addresses as A
from cluster.lab import routeservers
from cluster.lab.driver import Lab

DCS = {dc: (f"{dc}-svr1", f"{dc}-svr2") for dc in DC_NAMES}


def test_status_reports_method_v6_and_the_route_servers_choice(lab: Lab) -> None:
    status = lab.status()
    for dc, info in status["dcs"].items():
        assert info["shared_ip_method"] == "bgp"
        assert info["shared_ipv6"] == A.lab_dc_addresses(dc).shared_ipv6
        holders = lab.holders(DCS[dc])
        assert len(holders) == 1, (dc, holders)
        lab.wait_routed(dc, holders[0], timeout=30)
        info = lab.status()["dcs"][dc]
        assert info["route_servers_prefer"] == {"ipv4": holders[0], "ipv6": holders[0]}
        assert info["active"] == holders[0]


def test_every_route_server_has_both_nodes_with_their_hold_time(lab: Lab) -> None:
    for dc, nodes in DCS.items():
        hold = lab.stack_config(dc).bgp_hold_time_s
        for index in range(1, len(A.route_servers(dc)) + 1):
            for node in nodes:
                name = routeservers.protocol_name(node, index)

                def established(i: int = index, n: str = name, d: str = dc) -> str:
                    out = routeservers.birdc(d, i, "show", "protocols", "all", n)
                    return out if "Established" in out else ""

                out = lab.wait_for(f"{name} established", established, timeout=30)
                # BIRD shows the negotiated hold time as "Hold timer: left/total".
                m = re.search(r"Hold timer:\s+[\d.]+/(\d+)", out)
                assert m and int(m.group(1)) == hold, out


def test_only_the_holder_announces(lab: Lab) -> None:
    for dc, nodes in DCS.items():
        (holder,) = lab.holders(nodes)
        for node in nodes:
            # What the node exports to its first route server: both shared prefixes, or none.
            out = lab.exec(node, "birdc", "show", "route", "export", "rs1").stdout
            announced = {p for p in routeservers.shared_prefixes(dc) if p in out}
            assert announced == (set(routeservers.shared_prefixes(dc)) if node == holder
                                 else set()), (node, out)  # fmt: skip
