"""Backups to the client's S3 server and restores, through the operator CLI, as an operator
does them: a message expunged by its user comes back, a deleted mailbox comes back, and a wrong
password or a damaged repository stops a restore with a clear error and nothing changed.
(The full-wipe drill, which destroys the nodes, is tests/lab/test_zy_backup_wipe.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime

from cluster.lab.driver import REPO, Lab, shared_ip
from cluster.lab.s3server import BUCKET, endpoint
from cluster.ops.target import LabTarget
from cluster.services.backup import LAST_CHECK, LAST_SUCCESS, LOCK_FILE, PASSWORD_FILE
from cluster.services.storage import VMAIL_DIR

DOMAIN = "example.com"
VIP = shared_ip("dc1")


def ops(*args: str) -> subprocess.CompletedProcess[str]:
    """The operator CLI against the lab."""
    return subprocess.run([sys.executable, "-m", "cluster.ops", "--lab", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600, check=False)  # fmt: skip


def writer(lab: Lab) -> str:
    for host in LabTarget().nodes():
        if lab.exec(host, "mailcluster-role", "is-writer", check=False).returncode == 0:
            return host
    raise AssertionError("no writer")


def backup_now() -> str:
    proc = ops("backup", "run")
    assert proc.returncode == 0, proc.stderr
    snap = proc.stdout.split()[-1]
    listed = json.loads(ops("backup", "list", "--json").stdout)
    assert snap in [s["id"] for s in listed]
    return snap


def deliver(lab: Lab, user: tuple[str, str], *subjects: str) -> None:
    """Send each subject (all start with the test's unique prefix) and wait for them all."""
    for subject in subjects:
        assert lab.send(VIP, user, subject)["ok"]
    prefix = subjects[0].split()[0]
    got = lab.subjects(VIP, user, prefix, len(subjects))
    assert set(subjects) <= got, got


def test_backup_then_restore_an_expunged_message(lab: Lab, unique: str) -> None:
    user = lab.new_mailbox(DOMAIN, "bk")
    kept, lost, newer = f"{unique} kept", f"{unique} lost", f"{unique} newer"
    deliver(lab, user, kept, lost)

    t0 = time.time()
    snap = backup_now()
    w = writer(lab)
    epoch, stamped = lab.exec(w, "cat", LAST_SUCCESS).stdout.split()
    assert stamped == snap and int(epoch) >= int(t0)

    # The user deletes a message for good; newer mail arrives after the backup.
    assert lab.clientlib("expunge", "--host", VIP, "--ca", lab.ca, "--user", user[0],
                         "--password", user[1], "--subject", lost)["expunged"] == 1  # fmt: skip
    deliver(lab, user, newer)
    assert lab.inbox_subjects(w, user[0]) == sorted([kept, newer])

    restored = ops("restore", "mailbox", user[0], "--snapshot", snap)
    assert restored.returncode == 0, restored.stderr
    assert "1 messages restored" in restored.stdout
    # Back in place, nothing doubled, the newer message untouched; the peer gets it by dsync.
    assert lab.inbox_subjects(w, user[0]) == sorted([kept, lost, newer])
    assert lab.subjects(VIP, user, unique, 3) == {kept, lost, newer}
    peer = w.replace("svr1", "svrX").replace("svr2", "svr1").replace("svrX", "svr2")
    deadline = time.monotonic() + 60
    while lab.inbox_subjects(peer, user[0]) != sorted([kept, lost, newer]):
        assert time.monotonic() < deadline, lab.inbox_subjects(peer, user[0])
        time.sleep(1)

    # Into a folder of its own: the whole snapshot's INBOX, the live INBOX untouched.
    into = ops("restore", "mailbox", user[0], "--snapshot", snap, "--to-folder", "Restored")
    assert into.returncode == 0, into.stderr
    folders = lab.exec(w, "doveadm", "mailbox", "list", "-u", user[0]).stdout.split()
    restored_inbox = next(f for f in folders if f.startswith("Restored") and f.endswith("INBOX"))
    out = lab.exec(w, "doveadm", "-f", "tab", "fetch", "-u", user[0], "hdr.subject",
                   "mailbox", restored_inbox, "all").stdout  # fmt: skip
    assert sorted(out.splitlines()[1:]) == sorted([kept, lost])
    assert lab.inbox_subjects(w, user[0]) == sorted([kept, lost, newer])


def test_restore_a_deleted_mailbox(lab: Lab, unique: str) -> None:
    user = lab.new_mailbox(DOMAIN, "gone")
    subjects = {f"{unique} one", f"{unique} two"}
    deliver(lab, user, *sorted(subjects))
    snap = backup_now()

    # The mailbox is deleted, and its mail with it on every node.
    assert ops("mailbox", "del", user[0]).returncode == 0
    local, domain = user[0].split("@")
    for host in LabTarget().nodes():
        lab.exec(host, "rm", "-rf", f"{VMAIL_DIR}/{domain}/{local}")
    gone = lab.clientlib("login", "--host", VIP, "--ca", lab.ca, "--user", user[0],
                         "--password", user[1], "--timeout", "3")  # fmt: skip
    # Dovecot's own answer (it knows no such user now), not a failed connection: the same
    # login worked before the deletion (deliver) and works after the restore (below).
    assert not gone["ok"] and "[AUTHENTICATIONFAILED]" in gone["error"], gone

    restored = ops("restore", "mailbox", user[0], "--snapshot", snap)
    assert restored.returncode == 0, restored.stderr
    assert f"account {user[0]} restored" in restored.stdout
    assert user[0] in ops("mailbox", "list", DOMAIN).stdout
    # The same password (its hash came back with the account) and all its mail.
    assert lab.subjects(VIP, user, unique, 2) == subjects


def _s3(lab: Lab, code: str) -> str:
    """Python with boto3 (moto's dependency) in the client, against the lab's S3 server."""
    prelude = (
        "import boto3\n"
        f"s3 = boto3.client('s3', endpoint_url='{endpoint()}', aws_access_key_id='x', "
        "aws_secret_access_key='x', region_name='us-east-1')\n"
        f"B = '{BUCKET}'\n"
    )
    return lab.client(sys.executable, "-c", prelude + code).stdout


def test_wrong_password_and_damaged_repository_change_nothing(lab: Lab, unique: str) -> None:
    user = lab.new_mailbox(DOMAIN, "safe")
    deliver(lab, user, f"{unique} a")
    snap = backup_now()
    w = writer(lab)
    before = lab.inbox_subjects(w, user[0])
    count = len(json.loads(ops("backup", "list", "--json").stdout))

    # A wrong password: every command says so, and nothing changes.
    good = lab.exec(w, "cat", PASSWORD_FILE).stdout
    lab.exec(w, "bash", "-c", f"umask 077; echo wrong-password > {PASSWORD_FILE}")
    try:
        for argv in (["restore", "mailbox", user[0], "--snapshot", snap],
                     ["restore", "database", "--snapshot", snap], ["backup", "run"]):  # fmt: skip
            proc = ops(*argv)
            assert proc.returncode == 2, (argv, proc.stdout)
            assert "wrong password" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    finally:
        lab.exec(w, "bash", "-c", f"umask 077; cat > {PASSWORD_FILE}", input=good)
    assert lab.inbox_subjects(w, user[0]) == before
    assert len(json.loads(ops("backup", "list", "--json").stdout)) == count

    # A damaged repository (every data pack overwritten): the restore fails before it touches
    # the mailbox, and the check reports it (and its stamp says so). Put back afterwards.
    lab.exec(w, "doveadm", "expunge", "-u", user[0], "mailbox", "INBOX", "all")
    # restic never reads outside its own prefixes: the originals wait under saved/.
    _s3(lab, (
        "for o in s3.list_objects_v2(Bucket=B, Prefix='data/')['Contents']:\n"
        "    s3.copy_object(Bucket=B, Key='saved/' + o['Key'], "
        "CopySource={'Bucket': B, 'Key': o['Key']})\n"
        "    s3.put_object(Bucket=B, Key=o['Key'], Body=b'damaged' * 100)\n"
    ))  # fmt: skip
    try:
        proc = ops("restore", "mailbox", user[0], "--snapshot", snap)
        assert proc.returncode == 2 and "cannot restore" in proc.stderr, proc.stderr
        assert lab.inbox_subjects(w, user[0]) == []
        check = ops("backup", "check")
        assert check.returncode == 2 and "repository check failed" in check.stderr
        assert lab.exec(w, "cat", LAST_CHECK).stdout.split()[1] == "failed"
    finally:
        _s3(lab, (
            "for o in s3.list_objects_v2(Bucket=B, Prefix='saved/')['Contents']:\n"
            "    s3.copy_object(Bucket=B, Key=o['Key'].removeprefix('saved/'), "
            "CopySource={'Bucket': B, 'Key': o['Key']})\n"
            "    s3.delete_object(Bucket=B, Key=o['Key'])\n"
        ))  # fmt: skip
    assert ops("backup", "check").returncode == 0
    assert lab.exec(w, "cat", LAST_CHECK).stdout.split()[1] == "ok"


def snapshot_count() -> int:
    return len(json.loads(ops("backup", "list", "--json").stdout))


def lock_held(lab: Lab, host: str) -> bool:
    """Whether something holds the backup lock on ``host`` (a non-blocking flock fails)."""
    proc = lab.exec(host, "flock", "-n", LOCK_FILE, "true", check=False)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode == 1


def test_backup_runs_only_on_the_writer_and_one_at_a_time(lab: Lab, unique: str) -> None:
    w = writer(lab)
    others = [h for h in LabTarget().nodes() if h != w]
    before = snapshot_count()
    for host in others:
        proc = lab.exec(host, "mailcluster-backup", "run", check=False)
        assert proc.returncode == 3 and "not the writer" in proc.stderr
        # The timer's entry point does nothing there, quietly.
        assert lab.exec(host, "mailcluster-backup", "scheduled", check=False).returncode == 0
    assert snapshot_count() == before, "a node that is not the writer made a snapshot"
    # While a backup holds the node's lock, the timer's run skips its turn and the operator's
    # waits for it: never two at once. The holder keeps the lock until the test releases it.
    release = f"/run/{unique}.release"
    hold = f"while [ ! -e {release} ]; do sleep 0.1; done"
    holder = subprocess.Popen(
        [sys.executable, "-m", "cluster.lab", "exec", w, "--", "flock", LOCK_FILE,
         "sh", "-c", hold], cwd=REPO,
    )  # fmt: skip
    run: subprocess.Popen[str] | None = None
    try:
        lab.wait_for("the holder to take the backup lock", lambda: lock_held(lab, w),
                     timeout=30, interval=0.2)  # fmt: skip
        assert lab.exec(w, "mailcluster-backup", "scheduled").returncode == 0
        assert snapshot_count() == before
        run = subprocess.Popen([sys.executable, "-m", "cluster.ops", "--lab", "backup", "run"],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)  # fmt: skip
        # The operator's run reached the lock and waits there (the script's `flock -w`).
        waiting = "pgrep -f '^flock -w [0-9]+ 9$'"
        lab.wait_for("the operator's backup to wait for the lock", lambda: lab.exec(
            w, "sh", "-c", waiting, check=False).returncode == 0, timeout=60,
            interval=0.2)  # fmt: skip
        assert run.poll() is None, "the operator's backup ended while the lock was held"
        released = time.time()
        lab.exec(w, "touch", release)
        assert holder.wait(timeout=60) == 0
        out, err = run.communicate(timeout=600)
        assert run.returncode == 0, err
        snap = out.split()[-1]
        listed = {s["id"]: s for s in json.loads(ops("backup", "list", "--json").stdout)}
        assert snap in listed, listed
        # restic stamps a snapshot when its backup starts (to the second): after the release.
        started = datetime.fromisoformat(listed[snap]["time"]).timestamp()
        assert started >= int(released), (listed[snap], released)
        assert lab.exec(w, "cat", LAST_SUCCESS).stdout.split()[1] == snap
    finally:
        lab.exec(w, "touch", release, check=False)
        holder.wait(timeout=60)
        if run is not None and run.poll() is None:
            run.communicate(timeout=600)
        lab.exec(w, "rm", "-f", release, check=False)
