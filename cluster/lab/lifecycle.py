"""Bringing the lab up and down, and the failures a user can cause: crash, boot, cut, heal."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cluster.lab import base, cgroups, hosts, net, s3server, volume
from cluster.lab.model import lab_topology, volume_path
from cluster.lab.paths import CLIENT_NS, HOSTS, ROUTER_NS, lab_dir
from cluster.lab.run import LabError, Progress, run
from cluster.lab.state import HostRecord, LabState, locked


def start_host(state: LabState, host: str) -> bool:
    """Network, volume and systemd of one host; False when it was already running."""
    rec = state.hosts.setdefault(host, HostRecord())
    if hosts.alive(rec):
        return False
    _check_volume_home(host, rec)
    net.port_down(host)  # no traffic while the host has no processes answering
    net.ensure_host_net(host, cut=[host, *state.cut])
    state.save()  # the loop device and pid are recorded before anything else can fail
    public, _ = net.host_addresses(host)
    node = lab_topology("dc1").node(host)
    hosts.boot(host, rec, node.fqdn, public, volume_path(host))
    state.save()
    if host not in state.cut:
        net.cut_target(host, up=True)
    return True


def up_machines(progress: Progress) -> LabState:
    """Base, network and the four hosts, reusing whatever already runs."""
    if not base.environment_ok():
        raise LabError("the lab needs root (namespaces, mounts, loop devices)")
    base.ensure_host_tools()
    with locked() as state:
        running = [h for h in HOSTS if h in state.hosts and hosts.alive(state.hosts[h])]
        want = base.spec()
        if running and state.base and state.base != want.key:
            progress(
                f"base: package list changed but {len(running)} hosts run on base {state.base}; "
                "keeping it (run `down` then `up` to rebuild)"
            )
        else:
            state.base = base.ensure(progress).key
        progress("network: switch, router, client")
        net.ensure_fabric(state.cut)
        if s3server.ensure():
            progress(f"client: S3 server (the backup target) on {s3server.endpoint()}")
        started = []
        for host in HOSTS:
            if start_host(state, host):
                started.append(host)
        if started:
            progress(f"hosts: started {', '.join(started)}; waiting for their systemd")
        with ThreadPoolExecutor(len(HOSTS)) as pool:
            states = list(pool.map(lambda h: hosts.wait_booted(h, state.hosts[h]), HOSTS))
        booted = ", ".join(f"{h} {s}" for h, s in zip(HOSTS, states, strict=True))
        progress(f"hosts: all four booted ({booted})")
        return state


def crash(host: str) -> None:
    """A power cut: every process of the host dies at once (SIGKILL to its cgroup), its port
    goes dark (the kernel would otherwise still answer ARP for a shared IP left on eth0); the
    disk and the volume stay.

    Unlike a real power cut, the page cache survives: the host's disk is a directory and its
    volume a loop device of this machine's kernel, so a write the host never flushed is still
    there after the crash. No lab test can catch a missing fsync (in Postfix, Dovecot, MariaDB)."""
    _check_host(host)
    with locked() as state:
        rec = state.hosts.setdefault(host, HostRecord())
        net.port_down(host)
        hosts.kill(rec)


def boot(host: str) -> str:
    """Power on: the host boots through its systemd (what packages and the plan enabled starts
    in systemd's order; the volume is mounted as its fstab says). Returns systemd's state."""
    _check_host(host)
    with locked() as state:
        if hosts.alive(state.hosts.get(host, HostRecord())):
            raise LabError(f"{host} is already up")
        net.flush_host(host)  # an address held at the crash (a shared IP) goes with it
        start_host(state, host)
        return hosts.wait_booted(host, state.hosts[host])


def rebuild(host: str) -> None:
    """A rebuild of the node from a fresh image, as `pulumi up --replace` or Linode's Rebuild
    does it: power off (the instance goes), its OS disk thrown away (the overlay's upper layer),
    its volume kept and attached again, and it boots from the base. The caller applies its
    stack then (the node's plan runs again from the start, as on a new instance)."""
    _check_host(host)
    with locked() as state:
        rec = state.hosts.setdefault(host, HostRecord())
        _check_volume_home(host, rec)
        net.port_down(host)
        hosts.kill(rec)
        hosts.wipe_disk(host)
        net.flush_host(host)
        start_host(state, host)
        hosts.wait_booted(host, state.hosts[host])


def attach_volume(host: str, to: str) -> str:
    """A rescue: ``host``'s volume hot-plugged into the running host ``to``, at the path Linode
    gives an attached volume (its own program mounts it). ``host`` must be down: a volume
    attaches to one machine at a time, and a host that runs writes to it. Returns the path."""
    _check_host(host)
    _check_host(to)
    if to == host:
        raise LabError(f"{host}'s volume is its own: attach it to another host")
    with locked() as state:
        rec = state.hosts.setdefault(host, HostRecord())
        if hosts.alive(rec):
            raise LabError(f"{host} is up and uses its volume: crash it first")
        if rec.volume_on not in ("", to):
            raise LabError(f"{host}'s volume is attached to {rec.volume_on}: detach it first")
        peer = state.hosts.get(to, HostRecord())
        if not hosts.alive(peer):
            raise LabError(f"{to} is down: a volume is attached to a running host here")
        loop = volume.attach(host, rec)
        rec.volume_on = to
        state.save()  # recorded before the device appears (down and boot must know)
        path = volume_path(host)
        volume.plug(loop, peer.pid, path)
        return path


def detach_volume(host: str) -> str:
    """Take ``host``'s volume back from the host it was attached to (refused while that host has
    it mounted). Returns that host's name, "" when the volume was not attached elsewhere."""
    _check_host(host)
    with locked() as state:
        rec = state.hosts.setdefault(host, HostRecord())
        on = rec.volume_on
        if not on:
            return ""
        peer = state.hosts.get(on, HostRecord())
        if hosts.alive(peer) and rec.loop:  # a crashed host lost the device with its /dev
            volume.unplug(rec.loop, peer.pid, volume_path(host))
        rec.volume_on = ""
        return on


def wipe() -> list[str]:
    """Destroy the four nodes as if their Linodes and volumes were deleted: power off, OS disk
    and data volume thrown away. The network and the client ("the internet", with the off-site
    backup repository) stay; `up` then builds four fresh nodes from the base."""
    wiped = []
    with locked() as state:
        for host in HOSTS:
            rec = state.hosts.setdefault(host, HostRecord())
            net.port_down(host)
            hosts.kill(rec)
            hosts.wipe_disk(host)
            volume.delete(host, rec)
            rec.volume_on = ""  # the hosts it was attached to are powered off too
            net.delete_host_ns(host)
            wiped.append(host)
    return wiped


def cut(target: str, *, heal: bool) -> None:
    with locked() as state:
        net.cut_target(target, up=heal)
        if heal:
            state.cut = [c for c in state.cut if c != target]
        elif target not in state.cut:
            state.cut.append(target)
    if heal:
        _settle(target)


def _settle(target: str) -> None:
    """A plugged cable carries traffic once both ends re-learnt each other's address (a host
    that pinged its gateway in vain while cut holds a failed neighbour entry, so the first
    packet after the heal could be lost): ping across it from the router, briefly."""
    hosts_ = [h for h in HOSTS if h == target or h.startswith(f"{target}-")]
    for host in hosts_:
        public, _ = net.host_addresses(host)
        for _ in range(3):
            if run(["ip", "netns", "exec", ROUTER_NS, "ping", "-c", "1", "-W", "1", public],
                   check=False).returncode == 0:  # fmt: skip
                break


def _check_volume_home(host: str, rec: HostRecord) -> None:
    """A host boots only with its own volume, which is attached to one machine at a time."""
    if rec.volume_on:
        raise LabError(
            f"{host}'s volume is attached to {rec.volume_on} (a rescue): `volume detach {host}` "
            "first"
        )


def _check_host(host: str) -> None:
    if host not in HOSTS:
        raise LabError(f"unknown host {host!r}; hosts: {', '.join(HOSTS)}")


def _kill_namespace_processes(ns: str) -> None:
    """Whatever still runs in one of our network namespaces is ours (a client command, a
    launcher): kill it by pid, never by name."""
    for pid in run(["ip", "netns", "pids", ns], check=False).stdout.split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)


def down(progress: Progress) -> list[str]:
    """Undo everything the lab made: found from the state file and, should that be lost, by the
    lab's names (mclab-* namespaces, the lab's cgroups, loop devices backed by files under the
    lab directory)."""
    undone: list[str] = []
    root = lab_dir()
    with locked() if root.exists() else contextlib.nullcontext():
        # Every process of every host, by its cgroup (a host's systemd and all it started).
        undone += [f"host {host}" for host in cgroups.kill_all()]
    if root.exists():
        for ns in net.lab_namespaces():
            _kill_namespace_processes(ns)
        deadline = time.monotonic() + 10
        while any(run(["ip", "netns", "pids", ns], check=False).stdout.split()
                  for ns in net.lab_namespaces()) and time.monotonic() < deadline:  # fmt: skip
            time.sleep(0.05)
    for loop in our_loop_devices():
        run(["losetup", "-d", loop], check=False)
        undone.append(f"loop {loop}")
    for ns in net.delete_all():
        undone.append(f"netns {ns}")
    undone += [f"cgroup {path}" for path in cgroups.remove_all()]
    if root.exists():
        _unmount_under(root)
        shutil.rmtree(root)
        undone.append(f"dir {root}")
    if undone:
        progress("down: removed " + ", ".join(undone))
    return undone


def our_loop_devices() -> list[str]:
    out = run(["losetup", "-n", "-l", "-O", "NAME,BACK-FILE"], check=False).stdout
    root = str(lab_dir())
    loops = []
    for line in out.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and parts[1].strip().removesuffix(" (deleted)").startswith(root + "/"):
            loops.append(parts[0])
    return loops


def mounts_under(root: Path) -> list[str]:
    """Mount points under ``root`` in this machine's mount namespace."""
    prefix = str(root) + "/"
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4]
        if point.startswith(prefix) or point == str(root):
            found.append(point)
    return found


def _unmount_under(root: Path) -> None:
    # Host mounts live in the hosts' private namespaces and die with them; this only catches a
    # base build interrupted half-way.
    for point in sorted(mounts_under(root), key=len, reverse=True):
        run(["umount", "-l", point], check=False)


def client_argv(argv: list[str]) -> list[str]:
    """A command in the client ("the internet") with this machine's own python3 and the
    project importable, for `python3 -m cluster.lab.clientlib`."""
    repo = Path(__file__).resolve().parents[2]
    return ["ip", "netns", "exec", CLIENT_NS, "env", f"PYTHONPATH={repo}", *argv]
