"""The first deployment in one `up` per stack (issue 24), walked in the lab from nothing: four
fresh nodes, then the Pulumi order, `apply --stack dc1` (a serving dc1), `--stack dc2` (a dc2 that
replicates dc1 although dc1 does not know it yet), `--stack dc1` once more (dc1 knows dc2), then
a fourth apply of either stack runs no step. Late in the session (it wipes the nodes, as
`test_zy_backup_wipe` does after it): a drill."""

from __future__ import annotations

import re
import time

import pytest

from cluster.lab import addresses as A
from cluster.lab.driver import Lab, mesh_ip, public_ip, shared_ip
from cluster.lab.paths import HOSTS
from cluster.ports import MESH_INTERFACE
from cluster.services.storage import VMAIL_DIR

pytestmark = pytest.mark.drill

DOMAIN = "example.com"
DC1 = ("dc1-svr1", "dc1-svr2")
DC2 = ("dc2-svr1", "dc2-svr2")


def apply(lab: Lab, stack: str) -> tuple[int, float]:
    """`apply --stack STACK`: (steps run, seconds)."""
    t0 = time.monotonic()
    out = lab.run("apply", "--stack", stack, timeout=3600).stdout
    found = re.search(r"^apply: (\d+) steps run", out, re.M)
    assert found, out
    return int(found.group(1)), time.monotonic() - t0


def endpoints(lab: Lab, host: str) -> dict[str, str]:
    """Peer public key -> its endpoint in the node's WireGuard ("(none)": not known)."""
    out = lab.exec(host, "wg", "show", MESH_INTERFACE, "endpoints").stdout
    return dict(line.split() for line in out.splitlines())


def dig(lab: Lab, server: str, name: str) -> str:
    return lab.client("dig", "+short", f"@{server}", name, "A").stdout.strip()


def test_first_deployment_dc1_dc2_dc1(lab: Lab, unique: str) -> None:
    lab.run("wipe")
    lab.run("up", "--no-apply", timeout=1800)
    for host in HOSTS:  # fresh nodes: nothing of the cluster on them
        assert lab.exec(host, "test", "-e", "/etc/mailcluster/cluster.conf", check=False
                        ).returncode != 0, host  # fmt: skip
    vip1 = shared_ip("dc1")

    # 1. dc1 alone: it serves mail, and knows nothing of dc2 but its nodes' mesh keys.
    steps1, secs1 = apply(lab, "dc1")
    user = lab.new_mailbox(DOMAIN, "first")
    assert lab.send(vip1, user, unique)["ok"]
    assert lab.subjects(vip1, user, unique, 1) == {unique}
    dc2_keys = {lab.exec(h, "wg", "show", MESH_INTERFACE, "public-key", check=False).stdout
                for h in DC2}  # fmt: skip
    assert dc2_keys == {""}, "dc2 is not provisioned yet"
    ends = endpoints(lab, "dc1-svr1")
    assert len(ends) == 3 and sorted(ends.values()).count("(none)") == 2, ends
    assert dig(lab, vip1, f"dc2-svr1.{DOMAIN}") == ""

    # 2. dc2, which knows dc1: it replicates dc1's database over the mesh at once (dc1's nodes
    # learn its endpoints from its first packets), before dc1 knows dc2.
    steps2, secs2 = apply(lab, "dc2")
    for host in DC2:
        lab.wait_for(f"{host} replicating dc1 over the mesh", lambda h=host: (
            lambda r: r["master_host"] in {mesh_ip(n) for n in DC1}
            and r["io_running"] == "Yes" and r["sql_running"] == "Yes")(
                lab.role(h)["replication"]), timeout=120, interval=2)  # fmt: skip
        lab.wait_for(f"the first mailbox in {host}'s database", lambda h=host: lab.sql(
            h, f"SELECT COUNT(*) FROM postfixadmin.mailbox WHERE username='{user[0]}'"
        ) == "1", timeout=60)  # fmt: skip
    assert dig(lab, vip1, f"dc2-svr1.{DOMAIN}") == ""  # dc1 has not been told of dc2 yet

    # 3. dc1 once more: it knows dc2 (its zone, the endpoints, mailbox pushes to dc2).
    steps3, secs3 = apply(lab, "dc1")
    assert dig(lab, vip1, f"dc2-svr1.{DOMAIN}") == public_ip("dc2-svr1")
    ends = endpoints(lab, "dc1-svr1")
    assert "(none)" not in ends.values(), ends
    later = f"{unique}-after"
    assert lab.send(vip1, user, later)["ok"]
    local, domain = user[0].split("@")
    maildir = f"{VMAIL_DIR}/{domain}/{local}"
    for host in DC2:
        lab.wait_for(f"the message in {host}'s mailbox", lambda h=host: lab.exec(
            h, "grep", "-rqsF", "--", later, f"{maildir}/cur", f"{maildir}/new",
            check=False).returncode == 0, timeout=120, interval=2)  # fmt: skip
    print(f"first deployment: dc1 {steps1} steps in {secs1:.0f}s, dc2 {steps2} in {secs2:.0f}s, "
          f"dc1 again {steps3} in {secs3:.0f}s")  # fmt: skip

    # 4. A fourth apply of either stack: nothing left to do.
    for stack in ("dc1", "dc2"):
        assert apply(lab, stack)[0] == 0, stack
    # And the private network is each data centre's VPC: eth1, the fixed address.
    for host in HOSTS:
        dc, slot = host.split("-")
        want = A.lab_dc_addresses(dc).nodes[slot].private_ipv4
        out = lab.exec(host, "ip", "-o", "-4", "addr", "show", "dev", A.PRIVATE_INTERFACE).stdout
        assert f" {want}/" in out, (host, out)
