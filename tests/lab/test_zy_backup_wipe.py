"""Disaster recovery: all four nodes destroyed (OS disks and volumes), four fresh ones built,
everything restored from the off-site repository. Late in the session (after the other drills,
before `test_zz_down`): it rebuilds the whole lab. Lean on purpose (two mailboxes, two messages
each): `bench/backup.py` measures bigger stores."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from cluster.lab.driver import REPO, Lab, shared_ip
from cluster.lab.paths import HOSTS
from cluster.services.storage import VMAIL_DIR

pytestmark = pytest.mark.drill

DOMAIN = "example.com"
VIP = shared_ip("dc1")


def ops(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cluster.ops", "--lab", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=3600, check=False)  # fmt: skip


def count_on(lab: Lab, host: str, user: str) -> int:
    out = lab.exec(host, "doveadm", "search", "-u", user, "mailbox", "INBOX", "all",
                   check=False).stdout  # fmt: skip
    return len(out.splitlines())


def test_wipe_every_node_and_restore_the_cluster(lab: Lab, unique: str) -> None:
    users = [lab.new_mailbox(DOMAIN, "dr") for _ in range(2)]
    expected = {}
    for user in users:
        subjects = {f"{unique} {user[0]} {n}" for n in range(2)}
        for subject in sorted(subjects):
            assert lab.send(VIP, user, subject)["ok"]
        assert lab.subjects(VIP, user, unique, len(subjects)) == subjects
        expected[user] = subjects
    backup = ops("backup", "run")
    assert backup.returncode == 0, backup.stderr
    snap = backup.stdout.split()[-1]

    t0 = time.monotonic()
    lab.run("wipe")
    for host in HOSTS:  # powered off, nothing left to run a command in
        assert lab.exec(host, "true", check=False).returncode != 0
    lab.run("up", timeout=3600)
    built = time.monotonic() - t0
    # A positive control: a mailbox made on the fresh cluster logs in (Dovecot serves on the
    # shared IP), so the refusal below is Dovecot's answer about the old user.
    control = lab.new_mailbox(DOMAIN, "fresh")
    usable = lab.clientlib("login", "--host", VIP, "--ca", lab.ca, "--user", control[0],
                           "--password", control[1], "--timeout", "60")  # fmt: skip
    assert usable["ok"], usable
    fresh = lab.clientlib("login", "--host", VIP, "--ca", lab.ca, "--user", users[0][0],
                          "--password", users[0][1], "--timeout", "3")  # fmt: skip
    assert not fresh["ok"] and "[AUTHENTICATIONFAILED]" in fresh["error"], (
        "not Dovecot's refusal of the wiped user (did the wipe wipe?)", fresh)  # fmt: skip
    # The control goes again: the restore is to bring back the snapshot's cluster, no more.
    assert ops("mailbox", "del", control[0]).returncode == 0
    local, domain = control[0].split("@")
    for host in HOSTS:
        lab.exec(host, "rm", "-rf", f"{VMAIL_DIR}/{domain}/{local}")
    assert snap in [s["id"] for s in json.loads(ops("backup", "list", "--json").stdout)]

    t1 = time.monotonic()
    restored = ops("restore", "cluster", "--snapshot", snap)
    assert restored.returncode == 0, restored.stderr
    for user, subjects in expected.items():
        login = lab.clientlib("login", "--host", VIP, "--ca", lab.ca, "--user", user[0],
                              "--password", user[1], "--timeout", "60")  # fmt: skip
        assert login["ok"], login
        assert lab.subjects(VIP, user, unique, len(subjects), timeout=60) == subjects
    restore_s = time.monotonic() - t1
    rto = time.monotonic() - t0

    # Replication carries the restored mail to the three other nodes.
    deadline = time.monotonic() + 300
    for host in HOSTS:
        for user, subjects in expected.items():
            while count_on(lab, host, user[0]) != len(subjects):
                assert time.monotonic() < deadline, (host, user[0], count_on(lab, host, user[0]))
                time.sleep(2)
    print(f"\nRTO {rto:.0f} s: wipe + fresh up {built:.0f} s, restore to logins {restore_s:.0f} s")
