"""The lab's own machinery: hosts, network, isolation from this machine, exec/client, apply."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from cluster.lab import addresses as A
from cluster.lab import routeservers
from cluster.lab.driver import Lab
from cluster.lab.model import volume_path
from cluster.lab.paths import CLIENT_NS, HOSTS, INIT_NAME, ROUTER_NS, host_ns, lab_dir
from cluster.ports import MESH_INTERFACE

LAB_NETS = (*A.PUBLIC_NETS.values(), *A.PRIVATE_NETS.values())


def _lab_addresses() -> set[str]:
    out = {f"{A.CLIENT_NET}.{A.CLIENT_HOST}"}
    for dc in A.PUBLIC_NETS:
        d = A.lab_dc_addresses(dc)
        out.add(d.shared_ipv4)
        out.add(A.router_address(A.PUBLIC_NETS[dc]))
        for n in d.nodes.values():
            out |= {n.public_ipv4, n.private_ipv4}
    return out


def test_up_is_quick_and_all_hosts_run(lab: Lab) -> None:
    status = lab.status()
    for dc, info in status["dcs"].items():
        for host, h in info["hosts"].items():
            assert h["up"], f"{host} is down"
            assert h["public_ip"] == A.lab_dc_addresses(dc).nodes[host.split("-")[1]].public_ipv4
            assert {h["public_ip"], h["private_ip"]} <= set(h["addresses"])
            assert "rsyslog" in h["services"]
    assert status["domain"] == "example.com"
    assert status["active_dc"] in ("dc1", "dc2")


def test_hosts_are_named_and_have_their_volume(lab: Lab) -> None:
    for host in HOSTS:
        script = f"hostname; test -b {volume_path(host)} && echo volume"
        out = lab.exec(host, "sh", "-c", script + "; cat /proc/1/comm").stdout.split()
        assert out == [host, "volume", INIT_NAME[:15]]  # comm: the first 15 bytes


def test_exec_passes_stdin_and_exit_code(lab: Lab) -> None:
    assert lab.run("exec", "dc1-svr2", "--", "cat", input="hello\n").stdout == "hello\n"
    assert lab.exec("dc1-svr2", "sh", "-c", "exit 7", check=False).returncode == 7


def test_client_is_the_internet(lab: Lab) -> None:
    out = lab.client("ip", "-o", "-4", "addr", "show", "dev", "eth0").stdout
    assert f"{A.client_address()}/24" in out
    # The client reaches every host's public address through the router...
    for host in HOSTS:
        dc, slot = host.split("-")
        addr = A.lab_dc_addresses(dc).nodes[slot].public_ipv4
        lab.client("ping", "-c", "1", "-W", "2", addr)
        # ...but no private address: those are per data centre, as on Linode.
        private = A.lab_dc_addresses(dc).nodes[slot].private_ipv4
        assert lab.client("ping", "-c", "1", "-W", "1", private, check=False).returncode != 0


def test_router_joins_the_data_centres_but_not_their_private_networks(lab: Lab) -> None:
    lab.exec("dc1-svr1", "ping", "-c", "1", "-W", "2", "203.0.113.12")
    lab.exec("dc2-svr2", "ping", "-c", "1", "-W", "2", "198.51.100.11")
    lab.exec("dc1-svr1", "ping", "-c", "1", "-W", "2", "198.18.1.12")  # own DC: private works
    assert (
        lab.exec("dc1-svr1", "ping", "-c", "1", "-W", "1", "198.18.2.11", check=False).returncode
        != 0
    )


def test_nothing_reaches_this_machines_network() -> None:
    # No lab address, interface or route in this machine's own namespace...
    addrs = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
    for addr in _lab_addresses():
        assert re.search(rf"inet {re.escape(addr)}/", addrs) is None, addr
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert not re.search(r"^\d+: (p-|r-)", links, re.M)
    routes = subprocess.run(["ip", "route"], capture_output=True, text=True).stdout
    for net in LAB_NETS:
        assert net not in routes
    # The hosts' mounts (overlay, /proc, volumes) live in their private mount namespaces.
    assert str(lab_dir()) not in Path("/proc/self/mountinfo").read_text()


def test_lab_namespaces_have_only_their_own_links(lab: Lab) -> None:
    def links(ns: str) -> set[str]:
        out = subprocess.run(["ip", "-n", ns, "-o", "link"], capture_output=True, text=True)
        return {m.split("@")[0] for m in re.findall(r"^\d+: (\S+):", out.stdout, re.M)}

    for host in HOSTS:
        # eth0, and the WireGuard mesh's interface (a tun device the host's wireguard-go made).
        assert links(host_ns(host)) == {"lo", "eth0", MESH_INTERFACE}
    assert links(CLIENT_NS) == {"lo", "eth0"}
    assert links(ROUTER_NS) == {"lo", "dc1", "dc2", "inet"}
    # The router forwards between lab networks only: no default route, so nothing leaves.
    routes = subprocess.run(["ip", "-n", ROUTER_NS, "route"], capture_output=True, text=True).stdout
    assert "default" not in routes
    # Its own networks, and per DC in bgp the shared IP through the DC's route servers.
    shared = [A.lab_dc_addresses(dc).shared_ipv4 for dc in A.PUBLIC_NETS
              if routeservers.routed_method(dc) == "bgp"]  # fmt: skip
    assert sorted(line.split()[0] for line in routes.splitlines()) == sorted(
        [f"{net}.0/24" for net in (*A.PUBLIC_NETS.values(), A.CLIENT_NET)] + shared
    )
    for dc in A.PUBLIC_NETS:
        assert links(routeservers.namespace(dc)) == {"lo", "eth0"}


def test_hosts_cannot_change_this_machines_kernel_settings(lab: Lab) -> None:
    proc = lab.exec("dc1-svr2", "sh", "-c", "echo 1 > /proc/sys/kernel/sysrq", check=False)
    assert proc.returncode != 0
    lab.exec("dc1-svr2", "sysctl", "-q", "-w", "net.ipv4.ip_nonlocal_bind=1")


def test_second_apply_runs_no_step(lab: Lab) -> None:
    out = lab.run("apply").stdout
    assert re.search(r"^apply: 0 steps run, 0 changes$", out, re.M), out
    again = lab.run("apply").stdout
    assert re.search(r"^apply: 0 steps run, 0 changes$", again, re.M), again


def test_up_again_reuses_everything(lab: Lab) -> None:
    before = {h: lab.exec(h, "cat", "/proc/1/stat").stdout.split()[21] for h in HOSTS}
    out = lab.run("up").stdout
    assert "0 steps run" in out
    after = {h: lab.exec(h, "cat", "/proc/1/stat").stdout.split()[21] for h in HOSTS}
    assert before == after  # same PID 1 start times: nothing was restarted


def test_set_is_validated_and_kept_per_stack(lab: Lab) -> None:
    dc1_before = lab.status()["dcs"]["dc1"]["overrides"]
    bad = lab.run("apply", "--stack", "dc2", "--set", "activeDc=dc3", check=False)
    assert bad.returncode != 0 and "mailcluster:activeDc" in bad.stderr
    assert "activeDc" not in lab.status()["dcs"]["dc2"]["overrides"]
    ttl = lab.status()["dcs"]["dc2"]["overrides"].get("dnsTtl", 300)  # the default: no change
    out = lab.run("apply", "--stack", "dc2", "--set", f"dnsTtl={ttl}").stdout
    assert re.search(r"^apply: 0 steps run", out, re.M), out
    assert lab.status()["dcs"]["dc2"]["overrides"]["dnsTtl"] == ttl
    assert lab.status()["dcs"]["dc1"]["overrides"] == dc1_before  # the other stack's own
