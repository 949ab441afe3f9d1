"""Run the daemons' checkers inside the lab's base root filesystem, not on this machine.

The render tests check every rendered file with the daemon's own tool. Those tools must be the
ones the nodes get (Debian 13's packages, exactly the base's), whatever this machine runs: Debian,
Ubuntu on a CI runner, a laptop without the daemons. So each command runs chrooted into a copy of
the base, unpacked from the same cached archive the lab uses (``base.spec()``: key = recipe +
package list), with the caller's temporary directory visible at the same path.

Isolation, per command: ``unshare --mount --pid --fork --kill-child --propagation private``
makes a private mount namespace and a PID namespace; inside it, the base is bind-mounted
*read-only* as the lower layer of an overlay whose upper layer is a fresh tmpfs (the kernel
refuses every write into the base; what a checker writes, such as a2enmod's state, lands in the
tmpfs and is gone with the namespace), ``/proc`` (of the new PID namespace), ``/dev`` and the
shared paths (``/tmp``) are bound in, and the command runs under ``chroot``. Every mount lives
and dies with the namespace: nothing is mounted on this machine. When the command's PID 1 exits
(or the runner is killed: ``--kill-child``, and ``setpriv --pdeathsig`` when the caller dies) the
kernel kills whatever the command left running, so a test leaves no stray process.

Without root, the same runs in a user namespace (``--user --map-root-user``): the base is then
unpacked by that user (files owned by the user, seen as root inside), from the archive that a
root run of ``python -m cluster.lab base`` cached.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pwd
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from cluster.lab import base
from cluster.lab.paths import cache_dir
from cluster.lab.run import LabError, Progress, run

STAMP = ".mailcluster-lab-base"  # the file the lab's base carries too: its key
SHARED = (Path("/tmp"),)
INNER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_ENV = {"PATH": INNER_PATH, "HOME": "/root", "LC_ALL": "C.UTF-8"}

# Runs on this machine inside the new namespaces (as PID 1 of the PID namespace), then runs the
# command chrooted as its child: a signal sent to the runner's process group reaches the command
# directly (a PID 1 ignores SIGTERM unless it installed a handler). The command's root is an
# overlay: the base, bound read-only, under a tmpfs that takes whatever the command writes (a2enmod
# records state in /var/lib/apache2, for instance) and vanishes with the namespace.
ENTER_SCRIPT = r"""
set -euo pipefail
base=$1 mnt=$2 cwd=$3; shift 3
shared=(); while [ "$1" != -- ]; do shared+=("$1"); shift; done; shift
mount -t tmpfs -o mode=0755 scratch "$mnt"
mkdir "$mnt/lower" "$mnt/upper" "$mnt/work" "$mnt/root"
mount --bind "$base" "$mnt/lower"
mount -o remount,bind,ro "$mnt/lower"
mount -t overlay checkroot -o "lowerdir=$mnt/lower,upperdir=$mnt/upper,workdir=$mnt/work" \
  "$mnt/root"
root=$mnt/root
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
# The base ships an empty resolv.conf (a lab host gets one at boot); resolvers refuse an empty
# one (rspamd). Loopback only: a checker never sends a query anywhere else.
[ -s "$root/etc/resolv.conf" ] || echo "nameserver 127.0.0.1" > "$root/etc/resolv.conf"
for p in "${shared[@]}"; do mount --rbind "$p" "$root$p"; done
rc=0
chroot "$root" /usr/bin/env -i -C "$cwd" "$@" || rc=$?
exit "$rc"
"""


def rootless() -> bool:
    return os.geteuid() != 0


def _subids(path: str) -> tuple[int, int] | None:
    """This user's first block of subordinate ids in /etc/subuid or /etc/subgid: (start, count)."""
    me = {str(os.geteuid()), pwd.getpwuid(os.geteuid()).pw_name}
    with contextlib.suppress(OSError):
        for line in Path(path).read_text().splitlines():
            parts = line.strip().split(":")
            if len(parts) == 3 and parts[0] in me and parts[1].isdigit() and parts[2].isdigit():
                return int(parts[1]), int(parts[2])
    return None


@functools.cache
def user_ns() -> tuple[str, ...]:
    """``unshare`` options that make this user root in a user namespace. With subordinate ids
    (/etc/subuid and /etc/subgid, and newuidmap from Debian's ``uidmap``, as rootless containers
    use them) the base's other owners (postfix, mysql, _rspamd, ...) are mapped too, so its files
    keep their owners and ``postfix check`` finds its queue as a node has it. Without them only
    root is mapped, and the files of the other owners become root's."""
    ns: tuple[str, ...] = ("--user", "--map-root-user")
    users, groups = _subids("/etc/subuid"), _subids("/etc/subgid")
    if users and groups and shutil.which("newuidmap") and shutil.which("newgidmap"):
        ns += (f"--map-users={users[0]},1,{min(users[1], 65535)}",
               f"--map-groups={groups[0]},1,{min(groups[1], 65535)}")  # fmt: skip
    return ns


def _ownership() -> str:
    """How the files of an unpacked base are owned; a copy unpacked otherwise is unpacked again."""
    if not rootless():
        return "root"
    return "subids" if len(user_ns()) > 2 else "user"


def default_dir() -> Path:
    """Where the checkers' copy of the base lives: never the lab's own base (a lab that is up
    uses that one, and ``down`` removes the lab's directory)."""
    if "MAILCLUSTER_CHECKROOT" in os.environ:
        return Path(os.environ["MAILCLUSTER_CHECKROOT"])
    if rootless():
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        return cache / "mailcluster" / "checkroot"
    return Path("/var/lib/mailcluster-checkroot")


class NsPopen(subprocess.Popen[Any]):
    """A Popen whose signals go to the runner's whole process group, so ``terminate()`` reaches
    the chrooted command (``unshare --fork`` itself ignores SIGTERM) and ``kill()`` takes down
    the namespace with everything in it."""

    def send_signal(self, sig: int) -> None:
        self.poll()
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)


class CheckRoot:
    """The base, unpacked at ``home/base``; commands run in it through ``run`` and ``popen``,
    each in its own namespaces with its root mounted at ``home/mnt/root`` (seen only there)."""

    def __init__(self, home: Path, shared: Sequence[Path] = SHARED) -> None:
        self.root = home / "base"
        self.mnt = home / "mnt"
        root = self.root
        for p in shared:
            if not p.is_absolute() or not (root / str(p).lstrip("/")).is_dir():
                raise LabError(f"{p}: can only share a directory that exists in the base")
        self.shared = tuple(shared)

    @property
    def key(self) -> str:
        return (self.root / STAMP).read_text().split()[0]

    def path(self, target: str) -> Path:
        """A file of the base as this machine sees it (to read, never to write)."""
        return self.root / target.lstrip("/")

    def argv(
        self, argv: Sequence[str], env: Mapping[str, str] | None = None, cwd: str | None = None
    ) -> list[str]:
        ns = ["--mount", "--pid", "--fork", "--kill-child", "--propagation", "private"]
        if rootless():
            ns = [*user_ns(), *ns]
        inner = {**DEFAULT_ENV, **(env or {})}
        return [
            "setpriv", "--pdeathsig", "KILL", "unshare", *ns,
            "/bin/bash", "-c", ENTER_SCRIPT, "checkroot", str(self.root), str(self.mnt),
            cwd or "/",
            *map(str, self.shared), "--", *(f"{k}={v}" for k, v in inner.items()), *argv,
        ]  # fmt: skip

    def popen(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        stdin: int | IO[Any] | None = None,
        stdout: int | IO[Any] | None = None,
        stderr: int | IO[Any] | None = None,
        text: bool = False,
    ) -> NsPopen:
        """Start a command in the base (a server, for instance); ``terminate``/``kill`` work."""
        return NsPopen(
            self.argv(argv, env, str(cwd) if cwd else None),
            stdin=stdin, stdout=stdout, stderr=stderr, text=text,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}, start_new_session=True,
        )  # fmt: skip

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        input: str | None = None,
        timeout: float = 600,
        check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Like ``subprocess.run(..., capture_output=True, text=True)``, in the base."""
        with self.popen(
            argv, env=env, cwd=cwd, stdin=subprocess.PIPE if input is not None else
            subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ) as proc:  # fmt: skip
            try:
                out, err = proc.communicate(input, timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                raise
        done = subprocess.CompletedProcess(list(argv), proc.returncode, out, err)
        if check:
            done.check_returncode()
        return done


def _unpack(key: str, root: Path, progress: Progress) -> None:
    archive = base.archive_path(key)
    tmp = root.with_name(root.name + ".new")
    _wipe(tmp)
    tmp.mkdir(parents=True)
    t0 = time.monotonic()
    # Without root, tar runs in the user namespace the checkers use. It cannot make device nodes
    # there (the base's /dev is replaced by this machine's anyway); with only root mapped, it
    # cannot give files away either, and every file becomes the user's (root inside).
    tar = ["tar", "--numeric-owner"]
    if rootless():
        keep = _ownership() == "subids"
        tar = ["unshare", *user_ns(), "tar", "--numeric-owner" if keep else "--no-same-owner",
               "--exclude=./dev/*"]  # fmt: skip
    run([*tar, "--xattrs", "--acls", "-I", "zstd -T0", "-C", str(tmp), "-xf", str(archive)],
        timeout=600)  # fmt: skip
    (tmp / STAMP).write_text(f"{key}\n{_ownership()}\n")
    _wipe(root)
    tmp.rename(root)
    progress(f"checkroot: base {key} unpacked at {root} in {time.monotonic() - t0:.1f}s")


def _wipe(path: Path) -> None:
    if path.exists():
        if rootless():
            # Files of the mapped owners, and directories the base ships without write permission
            # (mode 0555), are removable only by root of the user namespace.
            run(["unshare", *user_ns(), "rm", "-rf", "--one-file-system", str(path)], timeout=600)
        else:
            shutil.rmtree(path)


def ensure(progress: Progress, home: Path | None = None) -> CheckRoot:
    """A ``CheckRoot`` holding the base for the current package list: kept if current, else
    unpacked from the cache, built first (as the lab builds it) when not cached and we are root."""
    home = home or default_dir()
    root = home / "base"
    (home / "mnt").mkdir(parents=True, exist_ok=True)
    s = base.spec()
    stamp = root / STAMP
    if stamp.exists() and stamp.read_text().split() == [s.key, _ownership()]:
        return CheckRoot(home)
    if not base.cached(s.key):
        if rootless():
            raise LabError(
                f"the base {s.key} is not in {cache_dir()}; building it needs root (debootstrap):"
                " run `sudo venv/bin/python -m cluster.lab base` once (or point"
                " MAILCLUSTER_LAB_CACHE at a directory holding base-{s.key}.tar.zst)"
            )
        secs = base.build(s, progress)
        progress(f"checkroot: base {s.key} built in {secs:.0f}s")
    _unpack(s.key, root, progress)
    return CheckRoot(home)


def terminate(proc: subprocess.Popen[Any], timeout: float = 60) -> None:
    """Stop a server started with ``popen``: SIGTERM, then SIGKILL if it lingers."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
