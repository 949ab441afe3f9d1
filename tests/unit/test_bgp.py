"""sharedIpMethod bgp, the pure parts: the timer keys, Linode's route servers by region, the
values of a node's BIRD configuration and the lab route servers' configuration."""

from __future__ import annotations

from typing import Any

import pytest

from cluster.config import ConfigError
from cluster.hostcontext import HostContext
from cluster.lab import addresses as A
from cluster.lab import routeservers
from cluster.lab.model import lab_topology
from cluster.pulumi import config as pulumi_config
from cluster.services import bgp

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHm2X0Y5mC1n0Xh3bq3wG5c6l4Qh0dC9GmN8m4b2m5Xy a@b"


def good(**changes: Any) -> dict[str, Any]:
    return {
        "domain": "example.com",
        "sshKeys": [KEY],
        "adminCidrs": ["203.0.113.7/32"],
        "peerStack": "dc2",
        **changes,
    }


def test_timer_defaults_are_lelastics() -> None:
    cfg = pulumi_config.load(good(), "dc1")
    assert (cfg.bgp_hold_time_s, cfg.bgp_keepalive_s) == (9, 3)


@pytest.mark.parametrize(
    ("changes", "key", "says"),
    [
        ({"bgpHoldTimeS": 2}, "bgpHoldTimeS", "from 3"),
        ({"bgpHoldTimeS": "nine"}, "bgpHoldTimeS", "whole number"),
        ({"bgpKeepaliveS": 0}, "bgpKeepaliveS", "from 1"),
        ({"bgpHoldTimeS": 9, "bgpKeepaliveS": 4}, "bgpKeepaliveS", "a third of bgpHoldTimeS"),
        ({"bgpHoldTimeS": 3, "bgpKeepaliveS": 2}, "bgpKeepaliveS", "at most 1 s"),
    ],
)
def test_bad_timers_name_the_key(changes: dict[str, Any], key: str, says: str) -> None:
    with pytest.raises(ConfigError) as err:
        pulumi_config.load(good(**changes), "dc1")
    assert f"mailcluster:{key}:" in str(err.value) and says in str(err.value)


@pytest.mark.parametrize(("hold", "keepalive"), [(3, 1), (9, 3), (30, 10), (180, 60)])
def test_good_timers_load(hold: int, keepalive: int) -> None:
    cfg = pulumi_config.load(good(bgpHoldTimeS=hold, bgpKeepaliveS=keepalive), "dc1")
    assert (cfg.bgp_hold_time_s, cfg.bgp_keepalive_s) == (hold, keepalive)


def test_linode_route_servers_by_region() -> None:
    assert bgp.linode_route_servers("us-east") == tuple(f"2600:3c0f:6:34::{i}" for i in range(1, 5))
    assert bgp.linode_route_servers("us-ord")[0] == "2600:3c0f:18:34::1"
    # Every region that config.py lets share by bgp has a documented id.
    from cluster.config import IP_SHARING

    for region, method in IP_SHARING.items():
        if method == "bgp":
            assert bgp.linode_dcid(region) > 0


def test_unknown_region_is_refused_clearly() -> None:
    with pytest.raises(ValueError, match="se-sto") as err:
        bgp.linode_route_servers("se-sto")
    assert "sharedIpMethod arp" in str(err.value)


def _ctx(host: str, **sets: Any) -> HostContext:
    topo = lab_topology(host.split("-")[0], sets)
    return HostContext(topo, topo.node(host), None, "lab")  # type: ignore[arg-type]


def test_bird_values_of_a_lab_node() -> None:
    values = bgp.bird_values(_ctx("dc2-svr2", bgpHoldTimeS=30, bgpKeepaliveS=10))
    assert values["router_id"] == "203.0.113.12"
    assert values["local_address"] == "2001:db8:2::12 "
    assert values["route_servers"] == A.route_servers("dc2")
    assert (values["hold_time"], values["keepalive"]) == (30, 10)
    assert (values["node_as"], values["rs_as"], values["community_primary"]) == (65001, 65000, 1)
    assert bgp.shared_v6_range(_ctx("dc2-svr2")) == "2001:db8:2:a::/64"


def test_route_server_config_prefers_primary_and_older() -> None:
    conf = routeservers.render_config("dc1", 1)
    assert "bgp_local_pref = 200" in conf and "bgp_local_pref = 100" in conf
    assert conf.index("(65000, 1)") < conf.index("(65000, 2)")
    assert "prefer older on;" in conf and "min hold time 3;" in conf
    # One BIRD per route-server address, with a session to each node, in metric order.
    for index, rs in enumerate(A.route_servers("dc1"), start=1):
        conf_i = routeservers.render_config("dc1", index)
        for host in ("dc1-svr1", "dc1-svr2"):
            assert f"protocol bgp {routeservers.protocol_name(host, index)} from" in conf_i
        assert f"local {rs} as 65000;" in conf_i and "strict bind on;" in conf_i
        assert f"metric {31 + index};" in conf_i
    # Only the DC's own shared addresses are accepted, sent to the announcing node.
    assert "if net != 198.51.100.10/32 then reject;" in conf
    assert "if net != 2001:db8:1:a::/64 then reject;" in conf
    assert "gw = 198.51.100.11;" in conf and "gw = 2001:db8:1::12;" in conf
    assert "203.0.113" not in conf  # nothing of dc2
