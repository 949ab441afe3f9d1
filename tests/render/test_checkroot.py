"""The checkers run in the lab's base, never on this machine: the binaries that run are the base's
own files, the base cannot be written, and what the runner starts stops completely."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from rendertools import in_base

from cluster.lab import base
from cluster.lab.checkroot import STAMP, CheckRoot, terminate

pytestmark = pytest.mark.checkers


def identity(path: str | Path) -> tuple[int, str]:
    """Inode and content of a file. The runner's root is an overlay over the base, which keeps
    the base's inode numbers (and shows its own device number)."""
    return os.stat(path).st_ino, hashlib.sha256(Path(path).read_bytes()).hexdigest()


def in_checkroot(checkroot: CheckRoot) -> list[int]:
    """Processes of this machine whose root directory is a runner's root."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if os.readlink(proc / "root") == str(checkroot.mnt / "root"):
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


def command(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    return ""


def wait_started(checkroot: CheckRoot, count: int) -> list[int]:
    """The ``sleep`` processes in the base, once ``count`` of them run (``chroot`` and ``env``
    come first, in the same process)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pids = [p for p in in_checkroot(checkroot) if command(p) == "sleep"]
        if len(pids) >= count:
            return pids
        time.sleep(0.05)
    raise AssertionError("the command did not start in the base")


def test_checkers_are_the_bases_own_files(checkroot: CheckRoot) -> None:
    # The base the lab builds for the current package list, by the lab's own code.
    assert checkroot.key == base.spec().key
    # A file only the base has: the runner's / is the base.
    assert not Path("/", STAMP).exists()
    assert in_base("cat", f"/{STAMP}").stdout.split()[0] == base.spec().key
    assert in_base("cat", "/etc/debian_version").stdout.startswith("13.")  # the nodes' release
    # The postconf that runs is the very file under the base (its inode: the base is mounted,
    # not copied), and not a postconf of this machine.
    script = 'postconf -d mail_version; p=$(command -v postconf); echo "$p"; stat -L -c %i "$p"'
    probe = in_base("sh", "-c", script)
    assert probe.returncode == 0, probe.stderr
    version, path, inode = probe.stdout.splitlines()
    assert version.startswith("mail_version = 3.10.")  # Debian 13's Postfix
    assert path == "/usr/sbin/postconf"
    assert int(inode) == os.stat(checkroot.path(path)).st_ino
    assert not Path(path).exists() or identity(path) != identity(checkroot.path(path))


def test_a_running_command_is_the_bases_binary(checkroot: CheckRoot) -> None:
    proc = checkroot.popen(["sleep", "300"])
    try:
        (pid,) = wait_started(checkroot, 1)
        assert os.getpgid(pid) == proc.pid
        exe = identity(f"/proc/{pid}/exe")
        assert exe == identity(checkroot.path("/usr/bin/sleep"))
        assert exe != identity("/usr/bin/sleep")  # this machine's coreutils: another file
    finally:
        terminate(proc)


def test_the_base_is_never_written(checkroot: CheckRoot, tmp_path: Path) -> None:
    before = identity(checkroot.path("/usr/sbin/postconf"))
    proc = in_base("sh", "-c", "echo x >> /usr/sbin/postconf; echo y > /etc/mailcluster-probe; "
                   "cat /etc/mailcluster-probe")  # fmt: skip
    assert proc.returncode == 0 and proc.stdout == "y\n", proc.stderr  # the scratch layer
    assert identity(checkroot.path("/usr/sbin/postconf")) == before
    assert not checkroot.path("/etc/mailcluster-probe").exists()
    assert in_base("cat", "/etc/mailcluster-probe").returncode != 0  # gone with the namespace
    root = next(ln for ln in in_base("cat", "/proc/self/mountinfo").stdout.splitlines()
                if ln.split()[4] == "/")  # fmt: skip
    assert f"lowerdir={checkroot.mnt}/lower," in root  # the base, bound read-only there
    # The test's directory is shared at the same path, both ways; /run is the runner's own.
    (tmp_path / "in").write_text("from the test\n")
    proc = in_base("sh", "-c", f"cat {tmp_path}/in; echo back > {tmp_path}/out; touch /run/x")
    assert proc.returncode == 0 and proc.stdout == "from the test\n", proc.stderr
    assert (tmp_path / "out").read_text() == "back\n"


@pytest.mark.parametrize("stop", ["terminate", "kill"])
def test_servers_stop_and_leave_nothing(checkroot: CheckRoot, stop: str) -> None:
    # A child in the background and a grandchild that left the process group (as daemons do).
    proc = checkroot.popen(["sh", "-c", "setsid sleep 302 & sleep 301 & exec sleep 300"])
    wait_started(checkroot, 3)
    assert len(in_checkroot(checkroot)) >= 3
    if stop == "terminate":
        terminate(proc, timeout=10)
        assert proc.returncode == 128 + signal.SIGTERM  # the command got SIGTERM itself
    else:
        proc.kill()  # a power cut: the whole namespace goes
        proc.wait(timeout=10)
    deadline = time.monotonic() + 5
    while in_checkroot(checkroot) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert in_checkroot(checkroot) == []


def test_env_stdin_cwd_status_and_timeout(checkroot: CheckRoot, tmp_path: Path) -> None:
    proc = in_base(
        "sh", "-c", 'read line; echo "$line $GREETING $(pwd)"; echo oops >&2; exit 3',
        env={"GREETING": "hello"}, cwd=tmp_path, input="stdin\n",
    )  # fmt: skip
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, f"stdin hello {tmp_path}\n", "oops\n")
    with pytest.raises(subprocess.TimeoutExpired):
        checkroot.run(["sleep", "30"], timeout=0.5)
    assert in_checkroot(checkroot) == []
