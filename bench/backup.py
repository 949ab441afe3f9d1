"""Backup benchmark in the lab (issue 12): run for real, as root, with the lab up; not in CI.

    python bench/backup.py [--mailboxes 20] [--messages 150] [--no-wipe]

One account sends them all: more than its submissionRateLimitPerHour (default 200) needs
`python -m cluster.lab apply --set submissionRateLimitPerHour=100000` first.

Makes N mailboxes and delivers M messages spread over them (submission, end to end), then:
- the time of a first backup (`backup run`: dumps, maildirs, forget --prune) and of a second
  one with nothing new (the hourly steady state), and the repository's size in the S3 bucket
  (all objects, encrypted and deduplicated) next to the maildirs' size on the writer;
- the time to restore one mailbox in place (`restore mailbox`, nothing missing);
- unless --no-wipe: the recovery time of the whole cluster (RTO): `lab wipe` (the four nodes'
  disks and volumes gone), `lab up` (four fresh nodes), `restore cluster`, until every mailbox
  logs in and holds all its messages on the shared IP.
"""

from __future__ import annotations

import argparse
import json
import secrets
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cluster.lab.driver import Lab, shared_ip  # noqa: E402
from cluster.lab.s3server import BUCKET, endpoint  # noqa: E402
from cluster.services.storage import VMAIL_DIR  # noqa: E402

DOMAIN = "example.com"
VIP = shared_ip("dc1")
LAB = Lab()


def ops(*args: str) -> str:
    argv = [sys.executable, "-m", "cluster.ops", "--lab", *args]
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=4 * 3600,
                          check=False)  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"ops {' '.join(args)}: {proc.stderr}")
    return proc.stdout


def timed(*args: str) -> tuple[float, str]:
    t0 = time.monotonic()
    out = ops(*args)
    return time.monotonic() - t0, out


def repository_bytes() -> int:
    code = (
        "import boto3\n"
        f"s3 = boto3.client('s3', endpoint_url='{endpoint()}', aws_access_key_id='x', "
        "aws_secret_access_key='x', region_name='us-east-1')\n"
        "total = 0\n"
        f"for page in s3.get_paginator('list_objects_v2').paginate(Bucket='{BUCKET}'):\n"
        "    total += sum(o['Size'] for o in page.get('Contents', []))\n"
        "print(total)\n"
    )
    return int(LAB.client(sys.executable, "-c", code).stdout.strip())


def writer() -> str:
    for host in ("dc1-svr1", "dc1-svr2"):
        if LAB.exec(host, "mailcluster-role", "is-writer", check=False).returncode == 0:
            return host
    raise SystemExit("no writer in dc1")


def all_there(users: list[str], password: str, per_user: dict[str, int], tag: str) -> None:
    for user in users:
        got = LAB.clientlib("wait-imap", "--host", VIP, "--ca", LAB.ca, "--user", user,
                            "--password", password, "--subject", tag,
                            "--count", str(per_user[user]), "--timeout", "600")  # fmt: skip
        if not got["ok"]:
            raise SystemExit(f"{user}: {got}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mailboxes", type=int, default=20)
    # At most submissionRateLimitPerHour (default 200) from the one sending account.
    p.add_argument("--messages", type=int, default=150)
    p.add_argument("--no-wipe", action="store_true")
    a = p.parse_args()
    tag = f"bk{secrets.token_hex(4)}"
    password = "B" + secrets.token_hex(12)
    users = [f"{tag}u{i:03d}@{DOMAIN}" for i in range(a.mailboxes)]
    for user in users:
        LAB.add_mailbox(user, password)
    sent = LAB.clientlib("bulk", "--host", VIP, "--port", "587", "--ca", LAB.ca, "--starttls",
                         "--user", users[0], "--password", password, "--sender", users[0],
                         *[x for u in users for x in ("--to", u)], "--subject", tag,
                         "--count", str(a.messages), "--imap-host", VIP,
                         "--timeout", "1200")  # fmt: skip
    if not sent.get("ok"):
        raise SystemExit(f"bulk: {sent}")
    per_user = {u: sum(1 for i in range(a.messages) if i % len(users) == n)
                for n, u in enumerate(users)}  # fmt: skip
    w = writer()
    maildirs = int(LAB.exec(w, "du", "-sb", VMAIL_DIR).stdout.split()[0])

    first_s, out = timed("backup", "run")
    snap = out.split()[-1]
    second_s, _ = timed("backup", "run")
    repo = repository_bytes()
    one_s, _ = timed("restore", "mailbox", users[0], "--snapshot", snap)
    figures = {
        "mailboxes": a.mailboxes, "messages": a.messages,
        "maildirs_bytes_on_writer": maildirs, "repository_bytes": repo,
        "first_backup_s": round(first_s, 1), "second_backup_s": round(second_s, 1),
        "restore_one_mailbox_s": round(one_s, 1),
    }  # fmt: skip
    if not a.no_wipe:
        snap = ops("backup", "run").split()[-1]
        t0 = time.monotonic()
        LAB.run("wipe")
        LAB.run("up", timeout=3600)
        built = time.monotonic() - t0
        restore_s, _ = timed("restore", "cluster", "--snapshot", snap)
        all_there(users, password, per_user, tag)
        figures |= {"wipe_and_fresh_up_s": round(built, 1),
                    "restore_cluster_s": round(restore_s, 1),
                    "rto_s": round(time.monotonic() - t0, 1)}  # fmt: skip
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
