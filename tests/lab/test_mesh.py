"""The WireGuard mesh (issue 10, parts 1 and 3): up between every pair, internal services only
on mesh, private or loopback addresses, replication of every kind across it, least-privilege web
sync, and back after a crash."""

from __future__ import annotations

import json
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from cluster.lab import addresses as A
from cluster.lab.driver import Lab, mesh_ip, private_ip, public_ip, shared_ip
from cluster.lab.secrets import load_secrets
from cluster.ports import HEARTBEAT_PORT, MESH_INTERFACE, MESH_PORT
from cluster.services.replication import SCRIPT as REPLICATION_SCRIPT
from cluster.services.storage import VMAIL_DIR
from cluster.services.sync import CLIENT_KEY
from cluster.topology import VPC_INTERFACE

HOSTS = ("dc1-svr1", "dc1-svr2", "dc2-svr1", "dc2-svr2")
DC1 = HOSTS[:2]
DC2 = HOSTS[2:]
# Node-to-node ports: MariaDB, Dovecot's doveadm (dsync), the old rsync daemon.
INTERNAL_TCP = {3306, 12345, 873}
DOMAIN = "example.com"
ADMIN = A.client_address()  # the client's address, in the lab's adminCidrs


def handshakes(lab: Lab, host: str) -> dict[str, int]:
    """Peer public key -> seconds since its latest handshake (None: never)."""
    out = lab.exec(host, "wg", "show", MESH_INTERFACE, "latest-handshakes").stdout
    now = int(lab.exec(host, "date", "+%s").stdout)
    ages = {}
    for line in out.splitlines():
        key, stamp = line.split()
        ages[key] = now - int(stamp) if int(stamp) else 10**9
    return ages


def test_handshakes_between_every_pair(lab: Lab) -> None:
    secrets = load_secrets()
    for host in HOSTS:
        own = lab.exec(host, "wg", "show", MESH_INTERFACE, "public-key").stdout.strip()
        assert own == secrets.mesh_public_key(host), host
        others = {secrets.mesh_public_key(h) for h in HOSTS if h != host}

        def fresh(h: str = host, want: set[str] = others) -> bool:
            ages = handshakes(lab, h)
            return set(ages) == want and all(a < 180 for a in ages.values())

        lab.wait_for(f"{host}: a handshake with every peer", fresh, timeout=60, interval=2)
        for other in HOSTS:
            if other != host:
                lab.exec(host, "ping", "-n", "-q", "-c", "1", "-W", "2", mesh_ip(other))
    # The lab kernel has no WireGuard: the userspace wireguard-go carries the mesh.
    assert lab.exec("dc1-svr1", "pgrep", "-x", "wireguard-go", check=False).returncode == 0


def listeners(lab: Lab, host: str) -> list[tuple[str, str, int]]:
    """(proto, local address, port) of every listening TCP socket and bound UDP socket."""
    out = lab.exec(host, "ss", "-H", "-ltnu").stdout
    found = []
    for line in out.splitlines():
        f = line.split()
        proto, local = f[0], f[4]
        addr, port = local.rsplit(":", 1)
        addr = re.sub(r"%.*$", "", addr.strip("[]"))
        found.append((proto, addr, int(port)))
    return found


def test_internal_ports_listen_only_on_mesh_private_or_loopback(lab: Lab) -> None:
    for host in HOSTS:
        allowed = {"127.0.0.1", "::1", private_ip(host), mesh_ip(host)}
        socks = listeners(lab, host)
        internal = [(p, a, port) for p, a, port in socks if port in INTERNAL_TCP]
        assert {port for _, _, port in internal} == {3306, 12345}, (host, internal)
        bad = [s for s in internal if s[1] not in allowed]
        assert not bad, (host, bad)
        # The rsync daemon is gone; the mesh port is WireGuard's (UDP, every address: it
        # authenticates every packet itself).
        assert not [s for s in socks if s[2] == 873], host
        assert ("udp", "0.0.0.0", MESH_PORT) in socks or ("udp", "*", MESH_PORT) in socks


def test_heartbeat_listens_on_the_vpc_interface_only(lab: Lab) -> None:
    """Heartbeat binds its ucast sockets to the VPC interface (ha.cf's ``ucast eth1 ...``): no
    packet arriving on the public interface reaches it, whatever the firewalls say. And it
    talks to its peer over that interface: each node sees the other active."""
    for host in HOSTS:
        out = lab.exec(host, "ss", "-H", "-uan", f"sport = :{HEARTBEAT_PORT}").stdout
        locals_ = [line.split()[3] for line in out.splitlines()]
        assert locals_, f"{host}: no Heartbeat socket (is it running?)"
        assert all(a.endswith(f"%{VPC_INTERFACE}:{HEARTBEAT_PORT}") for a in locals_), (host, out)
        peer = next(h for h in HOSTS if h != host and h[:3] == host[:3])
        status = lab.exec(host, "cl_status", "nodestatus", peer).stdout.strip()
        assert status == "active", (host, peer, status)
    # Its peer's address is the one the program fixed in the VPC subnet.
    assert (
        f"ucast {VPC_INTERFACE} {private_ip('dc1-svr2')}"
        in lab.exec("dc1-svr1", "cat", "/etc/ha.d/ha.cf").stdout
    )


def tcp_open(lab: Lab, host: str, address: str, port: int) -> bool:
    probe = f"timeout 3 bash -c 'exec 3<>/dev/tcp/{address}/{port}'"
    return lab.exec(host, "bash", "-c", probe, check=False).returncode == 0


def test_from_the_other_dc_internal_ports_answer_only_on_the_mesh(lab: Lab) -> None:
    for port in (3306, 12345):
        for target in DC1:
            assert not tcp_open(lab, "dc2-svr1", public_ip(target), port), (target, port)
            assert tcp_open(lab, "dc2-svr1", mesh_ip(target), port), (target, port)
    assert not tcp_open(lab, "dc2-svr1", public_ip("dc1-svr1"), 873)


def active_master(lab: Lab) -> str:
    return next(h for h in DC1 if lab.role(h)["role"] == "active")


def test_replication_of_every_kind_crosses_the_mesh(lab: Lab, unique: str) -> None:
    master = active_master(lab)
    # MariaDB: the other data centre's replicas read from the master's mesh address.
    for host in DC2:
        lab.wait_for(f"{host} replicating from {master} over the mesh",
                     lambda h=host: (lambda r: r["master_host"] == mesh_ip(master)
                                     and r["io_running"] == "Yes")(lab.role(h)["replication"]),
                     timeout=30, interval=1)  # fmt: skip
    user = lab.new_mailbox(DOMAIN, "mesh")
    for host in DC2:
        lab.wait_for(f"the new mailbox in {host}'s database", lambda h=host: lab.sql(
            h, f"SELECT COUNT(*) FROM postfixadmin.mailbox WHERE username='{user[0]}'"
        ) == "1", timeout=20)  # fmt: skip
    # Mailboxes: a message taken in dc1 reaches the mailbox in dc2 (the active node's
    # replication controller syncs it to the other data centre's mesh addresses at once). Read
    # in the maildir itself: opening the mailbox with doveadm before the first push would create
    # an INBOX of its own in dc2 (another mailbox GUID), which a standby data centre never does.
    assert lab.send(shared_ip("dc1"), user, unique)["ok"]
    local, domain = user[0].split("@")
    maildir = f"{VMAIL_DIR}/{domain}/{local}"
    for host in DC2:
        lab.wait_for(f"the message in {host}'s mailbox", lambda h=host: lab.exec(
            h, "grep", "-rqsF", "--", unique, f"{maildir}/cur", f"{maildir}/new",
            check=False).returncode == 0, timeout=30, interval=0.5)  # fmt: skip

    # Zone transfers: dc2's secondaries hold the primary's serial, transferred over the mesh;
    # a transfer asked from outside the mesh is refused.
    def serial(host: str, server: str) -> str:
        out = lab.exec(host, "dig", "+short", f"@{server}", DOMAIN, "SOA").stdout.split()
        return out[2] if len(out) > 2 else ""

    want = serial(master, "127.0.0.1")
    assert want
    for host in DC2:
        lab.wait_for(f"{host} serves serial {want}", lambda h=host: serial(h, "127.0.0.1") == want,
                     timeout=30)  # fmt: skip
        axfr = lab.exec(host, "dig", "+short", f"@{mesh_ip(master)}", DOMAIN, "AXFR").stdout
        assert "SOA" in axfr or DOMAIN in axfr, axfr
        refused = lab.exec(host, "dig", f"@{public_ip(master)}", DOMAIN, "AXFR").stdout
        # dig's own line for a transfer the server answered with REFUSED (not a timeout).
        assert "; Transfer failed." in refused, refused
    log = lab.exec(master, "sh", "-c", "grep -h 'transfer of' /var/log/syslog | tail -n 20"
                   ).stdout  # fmt: skip
    assert any(mesh_ip(h) in log for h in DC2), log


def inbox(lab: Lab, host: str, user: str) -> tuple[str, set[str]]:
    """(INBOX GUID, subjects) of ``user`` on ``host``."""
    guid = lab.exec(host, "doveadm", "-f", "tab", "mailbox", "status", "-u", user, "guid",
                    "INBOX").stdout.split()[-1]  # fmt: skip
    out = lab.exec(host, "doveadm", "-f", "tab", "fetch", "-u", user, "hdr.subject", "mailbox",
                   "INBOX", "all").stdout  # fmt: skip
    return guid, {line.removeprefix("Subject: ").strip() for line in out.splitlines()[1:]}


def replication_state(lab: Lab, host: str) -> dict[str, Any]:
    out = lab.exec(host, REPLICATION_SCRIPT, "status", "--json").stdout
    state: dict[str, Any] = json.loads(out)
    return state


def test_an_inbox_made_twice_is_merged(lab: Lab, unique: str) -> None:
    """An INBOX made in dc2 before the first push reached it (a doveadm command on a standby
    node) has another GUID than the active node's. Dovecot 2.4's dsync gives both the higher
    GUID at the first sync, but when both copies also have one UIDVALIDITY, a normal sync sees
    nothing to do and each node keeps only its own messages. The controller's sweeps are full
    syncs, which merge them: one GUID and both messages on every node."""
    master = active_master(lab)
    user = lab.new_mailbox(DOMAIN, "twice")[0]
    mail = {host: f"{unique} on {host}" for host in (master, DC2[0])}
    # The standby data centre's copy first: the master's own save is synced there at once.
    for host in (DC2[0], master):
        # doveadm save creates the INBOX on each node, each with its own GUID.
        lab.exec(host, "doveadm", "save", "-u", user, input=f"Subject: {mail[host]}\n\nbody\n")
    validity = lab.exec(master, "doveadm", "-f", "tab", "mailbox", "status", "-u", user,
                        "uidvalidity", "INBOX").stdout.split()[-1]  # fmt: skip
    # The hardest case (CI once made it by chance: both created in the same second): the same
    # UIDVALIDITY on both, so each copy's UID 1 is another message.
    lab.exec(DC2[0], "doveadm", "mailbox", "update", "-u", user, "--uid-validity", validity,
             "INBOX")  # fmt: skip
    t0 = time.monotonic()

    def merged() -> bool:
        seen = [inbox(lab, host, user) for host in HOSTS]
        return len({guid for guid, _ in seen}) == 1 and all(
            subjects == set(mail.values()) for _, subjects in seen
        )

    # The next sweep is up to ten minutes away: ask for one (what a sweep does on its own).
    for _ in range(3):
        lab.exec(master, REPLICATION_SCRIPT, "sweep", "--wait", "120")
        if merged():
            break
    assert merged(), [inbox(lab, host, user) for host in HOSTS]
    print(f"mesh: an INBOX made twice merged {time.monotonic() - t0:.1f}s later")
    # And the active node's pushes all succeed.
    targets = replication_state(lab, master)["targets"]
    assert {n: t["consecutive_failures"] for n, t in targets.items() if t["current"]} == {
        h: 0 for h in HOSTS if h != master}  # fmt: skip


def test_standby_dc_follows_a_takeover(lab: Lab) -> None:
    """A takeover inside the active data centre: the other data centre's replicas move to the
    new master's mesh address by themselves (mailcluster-role follow), and back."""
    first = active_master(lab)
    second = DC1[1] if first == DC1[0] else DC1[0]
    for target, other in ((second, first), (first, second)):
        t0 = time.monotonic()
        lab.exec(other, "/usr/share/heartbeat/hb_standby", "all", check=False)
        lab.wait_for(f"{target} active", lambda t=target: lab.role(t)["role"] == "active",
                     timeout=60, interval=0.5)  # fmt: skip
        for host in DC2:
            lab.wait_for(f"{host} follows {target}", lambda h=host, t=target: (
                lambda r: r["master_host"] == mesh_ip(t) and r["io_running"] == "Yes"
                and r["sql_running"] == "Yes")(lab.role(h)["replication"]),
                timeout=60, interval=1)  # fmt: skip
        print(f"mesh: dc2 follows {target} {time.monotonic() - t0:.1f}s after hb_standby")
        row = f"{time.time_ns()}"
        lab.sql(target, "CREATE DATABASE IF NOT EXISTS mcdrill; CREATE TABLE IF NOT EXISTS "
                "mcdrill.follow (id BIGINT PRIMARY KEY)")  # fmt: skip
        lab.sql(target, f"INSERT INTO mcdrill.follow VALUES ({row})")
        for host in DC2:
            lab.wait_for(f"row on {host}", lambda h=host, r=row: lab.sql(
                h, f"SELECT COUNT(*) FROM mcdrill.follow WHERE id={r}") == "1",
                timeout=20, interval=0.5)  # fmt: skip


def test_web_sync_over_the_mesh_with_least_privilege(lab: Lab, unique: str) -> None:
    master = active_master(lab)
    page = f"/var/www/html/{unique}.html"
    lab.exec(master, "sh", "-c", f"echo {unique} > {page}")
    lab.exec(master, "/usr/local/sbin/mailcluster-websync")
    for host in HOSTS:
        if host == master:
            continue
        got = lab.exec(host, "stat", "-c", "%U %s", page).stdout.split()
        assert got == ["websync", str(len(unique) + 1)], (host, got)
        # No root daemon receives it: no rsync daemon runs anywhere.
        assert lab.exec(host, "pgrep", "-f", "rsync --daemon", check=False).returncode == 1
    opts = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=5"]  # fmt: skip
    ssh = ["ssh", "-i", CLIENT_KEY, *opts]
    target = next(h for h in DC2)
    # The key runs rrsync and nothing else: no shell, no other directory (rrsync's own
    # refusals, after a login that worked).
    shell = lab.exec(master, *ssh, f"websync@{mesh_ip(target)}", "id", check=False)
    assert "uid=" not in shell.stdout, shell.stdout
    assert "rrsync error: SSH_ORIGINAL_COMMAND does not run rsync" in shell.stderr, shell.stderr
    outside = lab.exec(master, "rsync", "-e", " ".join(ssh), "/etc/hostname",
                       f"websync@{mesh_ip(target)}:../../../etc/", check=False)  # fmt: skip
    assert outside.returncode != 0
    assert "rrsync error: do not use .. in arg" in outside.stderr, outside.stderr
    assert lab.exec(target, "cat", "/etc/hostname").stdout.strip() == target
    # A node's public address does not even reach sshd (the firewall drops it).
    public = lab.exec(master, "rsync", "-e", " ".join(ssh), "/etc/hostname",
                      f"websync@{public_ip(target)}:", check=False)  # fmt: skip
    assert f"{public_ip(target)} port 22: Connection timed out" in public.stderr, public.stderr
    # From outside the mesh the key itself is refused (from=): the same key from the admin's
    # address, the only one outside the mesh whose SYN reaches sshd.
    since = int(lab.exec(target, "date", "+%s").stdout)
    with tempfile.TemporaryDirectory() as tmp:
        key = Path(tmp) / "websync"
        key.touch(mode=0o600)
        key.write_text(lab.exec(master, "cat", CLIENT_KEY).stdout)
        admin = lab.client("ssh", "-i", str(key), "-o", "IdentitiesOnly=yes", *opts,
                           f"websync@{public_ip(target)}", "true", check=False)  # fmt: skip
    assert admin.returncode == 255 and "Permission denied (publickey" in admin.stderr, admin
    # sshd's reason, in its journal (which may lag the client's exit by a moment).
    refused = f"correct key but not from a permitted host (host={ADMIN}, ip={ADMIN},"
    journal = ("journalctl", "-u", "ssh", "--no-pager", f"--since=@{since}")
    lab.wait_for(f"sshd on {target} to log the from= refusal", lambda: refused in lab.exec(
        target, *journal).stdout, timeout=10, interval=0.5)  # fmt: skip
    # Deleted on the active node: deleted everywhere.
    lab.exec(master, "rm", "-f", page)
    lab.exec(master, "/usr/local/sbin/mailcluster-websync")
    for host in HOSTS:
        assert lab.exec(host, "test", "-e", page, check=False).returncode == 1, host


def test_mesh_comes_back_after_a_crash(lab: Lab) -> None:
    host = "dc2-svr2"
    lab.run("crash", host)
    lab.run("boot", host)
    secrets = load_secrets()
    others = {secrets.mesh_public_key(h) for h in HOSTS if h != host}
    lab.wait_for(f"{host}: the mesh back with every peer", lambda: (
        lambda ages: set(ages) == others and all(a < 60 for a in ages.values()))(
            handshakes(lab, host)), timeout=90, interval=2)  # fmt: skip
    master = active_master(lab)
    lab.wait_for(f"{host} replicating over the mesh again", lambda: (
        lambda r: r["master_host"] == mesh_ip(master) and r["io_running"] == "Yes")(
            lab.role(host)["replication"]), timeout=90, interval=1)  # fmt: skip
