"""The lab's off-site backup target: an S3-compatible server in the client namespace.

On Linode the backups go to Object Storage (``s3:https://<cluster>.linodeobjects.com/<bucket>``);
in the lab they go to moto's S3 server (PyPI ``moto[server]``, pinned in requirements-dev.txt)
on the client's address, "the internet", so restic on the nodes takes the very same ``s3:``
code path (HTTP signature v4 requests, bucket created by ``restic init``). Debian 12 packages
no S3 server the lab could run (rclone 1.60 has no ``serve s3``; radosgw needs a Ceph cluster).

moto keeps the objects in memory (large ones spill to temporary files, which go under the lab
directory): the repository lives as long as the client namespace, i.e. until ``lab down``. The
full-restore drill therefore destroys the four nodes (``lab wipe``), not the internet.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

from cluster.lab import addresses as A
from cluster.lab.paths import CLIENT_NS, lab_dir
from cluster.lab.run import LabError, in_ns, run

PORT = 9000
BUCKET = "mailcluster-backup"
START_TIMEOUT_S = 60


def endpoint() -> str:
    return f"http://{A.client_address()}:{PORT}"


def repository() -> str:
    """restic's repository string for the lab, the same ``s3:`` form as on Linode."""
    return f"s3:{endpoint()}/{BUCKET}"


def new_access_key() -> tuple[str, str]:
    """An (access key id, secret key) pair shaped like Linode's (moto accepts any pair)."""
    return "MCLAB" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30)


def data_dir() -> Path:
    return lab_dir() / "s3"


def _pid_file() -> Path:
    return data_dir() / "moto.pid"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A pid is ours only while it still runs in the client namespace (the pid could be reused).
    return str(pid) in run(["ip", "netns", "pids", CLIENT_NS], check=False).stdout.split()


def running() -> bool:
    try:
        return _pid_alive(int(_pid_file().read_text()))
    except (FileNotFoundError, ValueError):
        return False


def _answers() -> bool:
    probe = (
        "import socket,sys\n"
        "s=socket.socket(); s.settimeout(1)\n"
        f"sys.exit(s.connect_ex(('{A.client_address()}', {PORT})))\n"
    )
    return run(in_ns(CLIENT_NS, sys.executable, "-c", probe), check=False).returncode == 0


def ensure() -> bool:
    """Start the server unless it runs; True when it was started. Needs the client namespace."""
    if running():
        return False
    d = data_dir()
    d.mkdir(parents=True, exist_ok=True)
    log = open(d / "moto.log", "ab")  # noqa: SIM115 - the server keeps it open after we return
    env = {**os.environ, "TMPDIR": str(d)}
    proc = subprocess.Popen(
        in_ns(CLIENT_NS, sys.executable, "-m", "moto.server", "-H", A.client_address(),
              "-p", str(PORT)),
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, start_new_session=True,
    )  # fmt: skip
    log.close()
    _pid_file().write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LabError(f"the lab's S3 server exited ({proc.returncode}); see {d}/moto.log")
        if _answers():
            return True
        time.sleep(0.2)
    raise LabError(f"the lab's S3 server does not answer on {endpoint()}; see {d}/moto.log")
