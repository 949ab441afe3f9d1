"""Lab hosts: Debian 12 "machines" made of namespaces over the base root filesystem.

A host is ``ip netns exec mclab-HOST unshare --mount --uts --ipc --pid --fork`` running BOOT_SCRIPT
as its PID 1. BOOT mounts an overlay (lower: the shared base; upper: the host's own disk, which
survives crash and boot), /proc, /sys, /run and a private /dev holding the data volume's node at
the path Linode uses, then chroots into INIT_SCRIPT, which does the part of a Debian boot that
matters here (syslog, the SysV services that packages enabled) and reaps orphans.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from cluster.lab import cgroups
from cluster.lab.paths import INIT_NAME, VOLUME_SIZE, base_dir, host_dir, host_ns
from cluster.lab.run import LabError, run
from cluster.lab.state import HostRecord

HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BOOTED = "/run/mailcluster-lab-booted"

BOOT_SCRIPT = r"""
set -euo pipefail
host=$1 base=$2 dir=$3 volume=$4 vol_major=$5 vol_minor=$6 fqdn=$7 public=$8
root=$dir/root
mkdir -p "$dir/disk/upper" "$dir/disk/work" "$root"
mount -t overlay overlay \
  -o "lowerdir=$base,upperdir=$dir/disk/upper,workdir=$dir/disk/work" "$root"
mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
# Only net.* sysctls belong to a host (its network namespace); the rest are this machine's.
mount --bind "$root/proc/sys" "$root/proc/sys"
mount --bind "$root/proc/sys/net" "$root/proc/sys/net"
mount -o remount,bind,ro "$root/proc/sys"
if [ -e "$root/proc/sysrq-trigger" ]; then
  mount --bind -o ro /proc/sysrq-trigger "$root/proc/sysrq-trigger"
fi
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$root/sys"
mount -t tmpfs -o nosuid,nodev,mode=0755 tmpfs "$root/run"
mkdir -p "$root/run/lock"
mount -t tmpfs -o nosuid,mode=0755,size=64m tmpfs "$root/dev"
d=$root/dev
mknod -m 666 "$d/null" c 1 3; mknod -m 666 "$d/zero" c 1 5; mknod -m 666 "$d/full" c 1 7
mknod -m 666 "$d/random" c 1 8; mknod -m 666 "$d/urandom" c 1 9; mknod -m 666 "$d/tty" c 5 0
# The TUN device: the mesh's userspace WireGuard (wireguard-go) needs it, as this kernel has no
# WireGuard module. Its interfaces live in the host's own network namespace.
mkdir -p "$d/net"; mknod -m 666 "$d/net/tun" c 10 200
ln -s /proc/self/fd "$d/fd"; ln -s /proc/self/fd/0 "$d/stdin"
ln -s /proc/self/fd/1 "$d/stdout"; ln -s /proc/self/fd/2 "$d/stderr"
mkdir -p "$d/pts" "$d/shm" "$root${volume%/*}"
# This machine's /dev/pts has ptmxmode=000: a private instance gives the host working ptys.
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts "$d/pts"
ln -s pts/ptmx "$d/ptmx"
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs "$d/shm"
mknod -m 660 "$root$volume" b "$vol_major" "$vol_minor"
# A Debian system has /etc/mtab -> /proc/self/mounts (debootstrap's minbase leaves it out).
[ -e "$root/etc/mtab" ] || ln -s ../proc/self/mounts "$root/etc/mtab"
hostname "$host"
echo "$host" > "$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n%s\t%s %s\n::1\tlocalhost ip6-localhost ip6-loopback\n' \
  "$public" "$fqdn" "$host" > "$root/etc/hosts"
# Each host asks its own BIND, as the plan's resolver setting on Linode would.
printf 'nameserver 127.0.0.1\n' > "$root/etc/resolv.conf"
install -m 0755 "$dir/init" "$root/usr/local/sbin/@INIT@"
cd "$root"
exec chroot "$root" /usr/local/sbin/@INIT@
""".replace("@INIT@", INIT_NAME)

# PID 1 inside a host. bash reaps any child it is sent SIGCHLD for, adopted orphans included.
INIT_SCRIPT = r"""#!/bin/bash
# mailcluster lab: PID 1 of a lab host (a namespace "machine"), written at every boot.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8
exec </dev/null >>/var/log/mailcluster-lab-boot.log 2>&1
echo "=== boot $(date -Is)"
# rsyslog in bookworm has no SysV script; it provides /dev/log for every daemon.
rsyslogd || echo "rsyslogd failed"
cron || echo "cron failed"
# Local filesystems from /etc/fstab (the mail volume), as systemd mounts them on a Linode: a
# rebooted host must find its maildirs, not an empty /srv/mail.
mount -a -t nonfs,nocifs || echo "mount -a failed"
# Start what packages enabled in runlevel 2, as Debian's boot does, and as apt's postinst
# scripts have done on a Linode by the time the plan's later steps run (the lab bakes the
# packages into its base instead of installing them). named goes late: until the plan sets
# `recursion no`, a stock named would make every lookup wait for an internet that the lab does
# not have; heartbeat goes last, as its takeover scripts drive the others.
late=
for s in /etc/rc2.d/S*; do
  [ -x "$s" ] || continue
  case "$s" in
    *named | *bind9) late="$s $late"; continue ;;
    *heartbeat) late="$late $s"; continue ;;
  esac
  timeout 120 "$s" start || echo "$s start failed"
done
for s in $late; do timeout 120 "$s" start || echo "$s start failed"; done
touch /run/mailcluster-lab-booted
echo "=== up $(date -Is)"
trap 'exit 0' TERM INT
while :; do
  sleep 3600 &
  wait $! || true
done
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
    """Whether the recorded PID 1 is still our host (not a pid reused by someone else)."""
    if not rec.pid:
        return False
    fields = _read_stat(rec.pid)
    return fields is not None and fields[0] != "Z" and fields[19] == rec.start_ticks


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _read_stat(int(entry.name))
            if fields and fields[1] == str(pid):
                out.append(int(entry.name))
    return out


def attach_volume(host: str, rec: HostRecord) -> tuple[int, int]:
    """The data volume: a sparse image on a loop device (attached once; reused after a crash)."""
    image = host_dir(host) / "volume.img"
    if not image.exists():
        image.parent.mkdir(parents=True, exist_ok=True)
        with open(image, "wb") as f:
            f.truncate(VOLUME_SIZE)
    if rec.loop and Path(rec.loop).exists():
        back = run(["losetup", "-n", "-O", "BACK-FILE", rec.loop], check=False).stdout.strip()
        if back != str(image):
            rec.loop = ""
    if not rec.loop:
        rec.loop = run(["losetup", "--find", "--show", str(image)]).stdout.strip()
    st = os.stat(rec.loop)
    return os.major(st.st_rdev), os.minor(st.st_rdev)


def boot(host: str, rec: HostRecord, fqdn: str, public: str, volume: str) -> None:
    """Start the host's PID 1 and record it; ``volume`` is the path of its data volume's device
    node. The caller has prepared its network."""
    if alive(rec):
        return
    major, minor = attach_volume(host, rec)
    d = host_dir(host)
    (d / "init").write_text(INIT_SCRIPT)
    pidfile = d / "launcher.pid"
    pidfile.unlink(missing_ok=True)
    boot_argv = [
        "ip", "netns", "exec", host_ns(host),
        "unshare", "--mount", "--uts", "--ipc", "--pid", "--fork", "--propagation", "private",
        "bash", "-c", BOOT_SCRIPT, "boot", host, str(base_dir()), str(d),
        volume, str(major), str(minor), fqdn, public,
    ]  # fmt: skip
    # setsid --fork: the host outlives this process and belongs to no terminal or session of
    # ours; the wrapper joins the host's cgroup (all the host forks inherits it) and records its
    # pid (the `unshare`) before becoming it.
    rec.cgroup = cgroups.ensure(host)
    wrapper = f"echo $$ > {shlex.quote(str(pidfile))}; exec {shlex.join(boot_argv)}"
    if rec.cgroup:
        wrapper = f"echo $$ > {shlex.quote(rec.cgroup + '/cgroup.procs')} && {wrapper}"
    with open(d / "console.log", "ab") as console:
        subprocess.run(
            ["setsid", "--fork", "sh", "-c", wrapper],
            stdin=subprocess.DEVNULL, stdout=console, stderr=console, check=True,
        )  # fmt: skip
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if pidfile.exists() and pidfile.read_text().strip():
            launcher = int(pidfile.read_text())
            kids = _children(launcher)
            if kids:
                rec.launcher_pid, rec.pid = launcher, kids[0]
                rec.start_ticks = start_ticks(rec.pid)
                return
            if _read_stat(launcher) is None:
                break
        time.sleep(0.02)
    raise LabError(f"{host}: did not start; see {d / 'console.log'}")


def wait_booted(host: str, rec: HostRecord, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(rec):
            raise LabError(f"{host}: PID 1 died while booting; see {host_dir(host)}/console.log")
        if Path(f"/proc/{rec.pid}/root{BOOTED}").exists():
            return
        time.sleep(0.1)
    raise LabError(f"{host}: not booted after {timeout:.0f}s")


def kill(rec: HostRecord, timeout: float = 10) -> None:
    """Power off: SIGKILL to PID 1 takes down every process of the host's PID namespace."""
    if alive(rec):
        os.kill(rec.pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while alive(rec) and time.monotonic() < deadline:
            time.sleep(0.02)
    rec.pid, rec.start_ticks = 0, ""


def wipe_disk(host: str) -> None:
    """Throw the host's disk (its overlay's upper layer) away: its next boot starts from the
    base, as a rebuilt Linode starts from a fresh image. The host must be down. (Immutable
    directories inside it are fine: overlayfs keeps that flag as an xattr of the upper layer.)"""
    disk = host_dir(host) / "disk"
    if disk.exists():
        shutil.rmtree(disk)


def delete_volume(host: str, rec: HostRecord) -> None:
    """Detach and delete the host's data volume (the host must be down): its next boot gets a
    new, empty one, as a new Linode gets a new Volume."""
    if rec.loop:
        run(["losetup", "-d", rec.loop], check=False)
        rec.loop = ""
    (host_dir(host) / "volume.img").unlink(missing_ok=True)


def nsenter_argv(rec: HostRecord, argv: Sequence[str]) -> list[str]:
    """Run ``argv`` as a process of the host: its cgroup, all its namespaces, its root, a clean
    env. The cgroup matters beyond accounting: a daemon that a command starts (``service X
    start``) would otherwise run, and be counted, outside the host."""
    join = ["sh", "-c", 'echo $$ > "$0" && exec "$@"', f"{rec.cgroup}/cgroup.procs"]
    return [
        *(join if rec.cgroup else []),
        "nsenter", "-t", str(rec.pid), "-m", "-u", "-i", "-n", "-p", "-r", "-w", "--",
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

    In the lab `service X start` runs the SysV script, so the daemon inherits the caller's
    stdout/stderr; on a systemd node (Linode) systemd starts it with its own. With pipes we would
    wait for a daemon to exit before seeing EOF (and a daemon writing to a pipe we closed would
    die of SIGPIPE); a file it may keep open for ever costs nothing.
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
