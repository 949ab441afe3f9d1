"""Lab hosts: Debian 13 machines that boot systemd as PID 1 under ``systemd-nspawn``, as a Linode
boots it.

A host is ``unshare --mount`` running BOOT_SCRIPT, which mounts the host's OS disk (an overlay:
lower the shared base, upper the host's own directory, which survives crash and boot), gives
nspawn the private tmpfs it needs on /run/systemd/nspawn (LAB-NOTES "systemd in a lab node"),
writes what a Linode's provisioning writes (hostname, /etc/hosts, the resolver), mounts the data
volume as the host's fstab says (``volume.py`` says why the lab does it) and becomes
``systemd-nspawn --boot`` in the host's network namespace. Every mount is in that private mount
namespace, so none is left on this machine and all die with the host.

What nspawn withholds by default and a node needs, and what the lab gives it:
- CAP_NET_ADMIN (nft, ip, wg: nspawn keeps it only with --private-network) and CAP_IPC_LOCK
  (Heartbeat locks itself into memory) on top of nspawn's default set, which has CAP_SYS_ADMIN
  (mounts) and CAP_LINUX_IMMUTABLE (``chattr +i`` in mailcluster-datadir); no CAP_SYSLOG, so no
  host reads this machine's kernel log (nspawn also hides /proc/kmsg);
- /dev/net/tun (the mesh's wireguard-go: this kernel has no WireGuard module) and the volume's
  block device at its Linode path, bound in;
- net.* sysctls writable (the host's own network namespace:
  ``SYSTEMD_NSPAWN_API_VFS_WRITABLE=network``); every other sysctl, /sys and /proc/sysrq-trigger
  stay read-only, as nspawn makes them;
- the unified cgroup hierarchy (``SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1``), below the host's cgroup
  (``cgroups.py``): everything the host's systemd starts is counted and killed with the host.

``--register=no --keep-unit``: this machine's PID 1 is not systemd (no machined, no bus).
Docs: https://www.freedesktop.org/software/systemd/man/latest/systemd-nspawn.html
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from cluster.lab import cgroups, volume
from cluster.lab.paths import base_dir, host_dir, host_ns
from cluster.lab.run import LabError
from cluster.lab.state import HostRecord

HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# `systemctl is-system-running`: boot is over (degraded: some unit failed).
BOOTED_STATES = ("running", "degraded")
# ... and states a boot does not leave by waiting.
BROKEN_STATES = ("maintenance", "stopping")
NSPAWN_ENV = ("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1", "SYSTEMD_NSPAWN_API_VFS_WRITABLE=network")
NSPAWN_CAPABILITIES = "CAP_NET_ADMIN,CAP_IPC_LOCK"
TUN = "/dev/net/tun"

BOOT_SCRIPT = r"""
set -euo pipefail
dir=$1 base=$2 host=$3 fqdn=$4 public=$5 vol=$6 vol_point=$7 vol_type=$8 vol_opts=$9
shift 9
root=$dir/root
mkdir -p "$dir/disk/upper" "$dir/disk/work" "$root"
mount -t overlay overlay \
  -o "lowerdir=$base,upperdir=$dir/disk/upper,workdir=$dir/disk/work" "$root"
# nspawn keeps per-machine state here; on this machine's /run it would refuse to clean it up.
mkdir -p /run/systemd/nspawn
mount -t tmpfs -o mode=0755,size=16m tmpfs /run/systemd/nspawn
echo "$host" > "$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n%s\t%s %s\n::1\tlocalhost ip6-localhost ip6-loopback\n' \
  "$public" "$fqdn" "$host" > "$root/etc/hosts"
# Each host asks its own BIND, as the plan's resolver setting on Linode would.
printf 'nameserver 127.0.0.1\n' > "$root/etc/resolv.conf"
# The volume's fstab line (nofail, as the plan writes it: a node whose volume does not mount
# still boots).
if [ -n "$vol_point" ]; then
  mkdir -p "$root$vol_point"
  mount -t "$vol_type" -o "$vol_opts" "$vol" "$root$vol_point" \
    || echo "$host: the volume did not mount on $vol_point" >&2
fi
exec "$@"
"""


def _read_stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces: fields start after the last ')'.
    return text[text.rindex(")") + 2 :].split()


def start_ticks(pid: int) -> str:
    fields = _read_stat(pid)
    return fields[19] if fields else ""


def alive(rec: HostRecord) -> bool:
    """Whether the recorded systemd is still our host's (not a pid reused by someone else)."""
    if not rec.pid:
        return False
    fields = _read_stat(rec.pid)
    return fields is not None and fields[0] != "Z" and fields[19] == rec.start_ticks


def _is_container_init(pid: int) -> bool:
    """PID 1 of a PID namespace one level below ours: ``NSpid:`` shows its two pids, the last 1."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("NSpid:"):
            return line.split()[1:] == [str(pid), "1"]
    return False


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def nspawn_argv(host: str, loop: str, volume_path: str) -> list[str]:
    root = host_dir(host) / "root"
    return [
        "env", *NSPAWN_ENV, "systemd-nspawn", "--quiet", "--boot", "--register=no", "--keep-unit",
        f"--directory={root}", f"--machine={host}",
        f"--network-namespace-path=/run/netns/{host_ns(host)}",
        "--console=pipe", "--link-journal=no", "--resolv-conf=off", "--timezone=off",
        f"--capability={NSPAWN_CAPABILITIES}",
        f"--bind={TUN}", f"--bind={loop}:{volume_path}",
    ]  # fmt: skip


def boot(host: str, rec: HostRecord, fqdn: str, public: str, volume_path: str) -> None:
    """Power on: start the host's systemd and record its pid. ``volume_path`` is where the host
    finds its data volume's node. The caller has prepared its network."""
    if alive(rec):
        return
    rec.cgroup = cgroups.ensure(host)
    cgroups.kill(rec.cgroup)  # nothing of an earlier life of this host may run on
    cgroups.clear(rec.cgroup)
    loop = volume.attach(host, rec)
    tags = volume.probe(loop)
    mount = volume.fstab_mount(volume.host_fstab(host), tags, volume_path)
    vol_args = (
        [mount.point, mount.fstype, mount.options] if mount and "TYPE" in tags else ["", "", ""]
    )
    d = host_dir(host)
    pidfile = d / "launcher.pid"
    pidfile.unlink(missing_ok=True)
    boot_argv = [
        "unshare", "--mount", "--propagation", "private",
        "bash", "-c", BOOT_SCRIPT, "boot", str(d), str(base_dir()), host, fqdn, public, loop,
        *vol_args, *nspawn_argv(host, loop, volume_path),
    ]  # fmt: skip
    # setsid --fork: the host outlives this process and belongs to no terminal or session of
    # ours. The wrapper joins the host's cgroup (nspawn and the host inherit it) and records its
    # pid, which stays nspawn's through the execs.
    wrapper = (
        f"echo $$ > {shlex.quote(rec.cgroup + '/cgroup.procs')} && "
        f"echo $$ > {shlex.quote(str(pidfile))} && exec {shlex.join(boot_argv)}"
    )
    console = d / "console.log"
    with open(console, "ab") as out:
        out.write(f"=== boot {time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode())
        out.flush()
        subprocess.run(
            ["setsid", "--fork", "sh", "-c", wrapper],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, check=True,
        )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = pidfile.read_text().strip() if pidfile.exists() else ""
        if text:
            launcher = int(text)
            init = [p for p in _children(launcher) if _is_container_init(p)]
            if init:
                rec.launcher_pid, rec.pid = launcher, init[0]
                rec.start_ticks = start_ticks(rec.pid)
                return
            if _read_stat(launcher) is None:
                break
        time.sleep(0.02)
    raise LabError(f"{host}: systemd did not start{console_tail(host)}")


def console_tail(host: str, lines: int = 15) -> str:
    """The end of the host's console (nspawn's and the boot script's errors), for messages."""
    path = host_dir(host) / "console.log"
    try:
        tail = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return f"; {path} ends:\n" + "\n".join(tail)


def system_state(host: str, rec: HostRecord) -> str:
    """``systemctl is-system-running`` in the host ("offline" until its manager answers)."""
    proc = exec_in(host, rec, ["systemctl", "is-system-running"], timeout=30)
    return proc.stdout.strip() or "offline"


def failed_units(host: str, rec: HostRecord) -> list[str]:
    proc = exec_in(host, rec, ["systemctl", "list-units", "--failed", "--plain", "--no-legend"],
                   timeout=30)  # fmt: skip
    return [line.split()[0] for line in proc.stdout.splitlines() if line.split()]


def wait_booted(host: str, rec: HostRecord, timeout: float = 300) -> str:
    """Wait until the host's systemd has finished booting: "running", or "degraded" when a unit
    failed. Returns the state."""
    deadline = time.monotonic() + timeout
    state = "offline"
    while time.monotonic() < deadline:
        if not alive(rec):
            raise LabError(f"{host}: systemd died while booting{console_tail(host)}")
        state = system_state(host, rec)
        if state in BOOTED_STATES:
            return state
        if state in BROKEN_STATES:
            break
        time.sleep(0.1)
    failed = ", ".join(failed_units(host, rec)) if alive(rec) else "?"
    raise LabError(
        f"{host}: not booted after {timeout:.0f}s: systemd is {state!r}; failed units: "
        f"{failed or 'none'} (`lab exec {host} -- journalctl -b` says why)"
    )


def kill(rec: HostRecord) -> None:
    """Power off: SIGKILL to every process of the host at once (its cgroup), nspawn included."""
    cgroups.kill(rec.cgroup)
    rec.pid, rec.launcher_pid, rec.start_ticks = 0, 0, ""


def wipe_disk(host: str) -> None:
    """Throw the host's disk (its overlay's upper layer) away: its next boot starts from the
    base, as a rebuilt Linode starts from a fresh image. The host must be down. (Immutable
    directories inside it are fine: overlayfs keeps that flag as an xattr of the upper layer.)"""
    disk = host_dir(host) / "disk"
    if disk.exists():
        shutil.rmtree(disk)


def capability_list(mask: int) -> str:
    """A capability mask as setpriv's list (``+cap_0,+cap_12,...``)."""
    return ",".join(f"+cap_{n}" for n in range(mask.bit_length()) if mask >> n & 1)


def _capabilities(pid: int) -> str:
    """The capability bounding set of ``pid`` as setpriv's list."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("CapBnd:"):
            return capability_list(int(line.split()[1], 16))
    raise LabError(f"no CapBnd in /proc/{pid}/status")


def nsenter_argv(rec: HostRecord, argv: Sequence[str]) -> list[str]:
    """Run ``argv`` as a process of the host: in its cgroup (so its CPU is counted and a crash
    kills it), in all the namespaces of its systemd, with the capabilities the host's own
    processes have (no more: nsenter alone would keep this machine's full set, CAP_SYSLOG
    included), and a clean environment, as a login over SSH gets on a Linode."""
    join = ["sh", "-c", 'echo $$ > "$0" && exec "$@"', cgroups.exec_procs(rec.cgroup)]
    return [
        *join,
        "setpriv", f"--bounding-set=-all,{_capabilities(rec.pid)}",
        "nsenter", "-t", str(rec.pid), "--all", "--root", "--wd", "--",
        "env", "-i", f"PATH={HOST_PATH}", "HOME=/root", "LANG=C.UTF-8", "USER=root",
        "LOGNAME=root", *argv,
    ]  # fmt: skip


def exec_in(
    host: str,
    rec: HostRecord,
    argv: Sequence[str],
    *,
    input: str | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[str]:
    if not alive(rec):
        raise LabError(f"{host} is down")
    # Never the caller's terminal: a probe must not read what the user types.
    return run_captured(nsenter_argv(rec, argv), stdin=input or "", timeout=timeout)


def run_captured(
    argv: Sequence[str], *, stdin: str | None = None, timeout: float | None = None
) -> subprocess.CompletedProcess[str]:
    """Run and capture output through unlinked files, not pipes.

    A daemon that a command starts by itself (not through systemctl) inherits the command's
    stdout and stderr. With pipes we would wait for that daemon to exit before seeing EOF (and a
    daemon writing to a pipe we closed would die of SIGPIPE); a file it may keep open for ever
    costs nothing.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE if stdin is not None else None,
            stdout=out, stderr=err,
        )  # fmt: skip
        if stdin is not None:
            assert proc.stdin is not None
            try:
                proc.stdin.write(stdin.encode())
                proc.stdin.close()
            except BrokenPipeError:
                pass  # the command did not read all of its stdin: its business
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise LabError(f"{argv[-1][:60]!r} timed out after {timeout:.0f}s") from None
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(
            list(argv), rc, out.read().decode(errors="replace"), err.read().decode(errors="replace")
        )


def run_step(
    host: str, rec: HostRecord, command: str, stdin: str, timeout: float
) -> subprocess.CompletedProcess[str]:
    """Run a plan step's command line in the host, as `remote.Command` runs it over SSH."""
    if not alive(rec):
        raise LabError(f"{host} is down")
    return run_captured(nsenter_argv(rec, ["sh", "-c", command]), stdin=stdin, timeout=timeout)
