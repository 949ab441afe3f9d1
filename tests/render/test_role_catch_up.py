"""mailcluster-role's catch-up after a boot, its own functions run in the base (Debian's find,
awk, xargs) against a maildir tree with chosen times and a doveadm that records its calls: the
mailboxes changed just before the node went down are queued at high priority, once per boot,
after the full sync of every mailbox; the rest wait in that full sync."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import pytest
from rendertools import in_base

from cluster.hostplan import build_host_plan
from cluster.lab.model import lab_topology
from cluster.material import generate
from cluster.services import role

pytestmark = pytest.mark.checkers

SECRETS = generate("example.com", ["dc1", "dc2"], {"dc1": ["mail.example.com"],
                                                   "dc2": ["mail.example.com"]})  # fmt: skip

# The node booted this long ago (a stub `ps` says so for PID 1).
UP_S = 60

# The role script's own functions and variables; stubs for doveadm (records its arguments, or
# fails when $WORK/down exists), ps and logger.
HARNESS = r"""
set -uo pipefail
WORK=$1; shift
mkdir -p "$WORK/bin"
cat > "$WORK/bin/doveadm" <<EOF
#!/bin/sh
[ -e "$WORK/down" ] && exit 1
echo "\$*" >> "$WORK/calls"
EOF
printf '#!/bin/sh\necho %s\n' "$UP_S" > "$WORK/bin/ps"
printf '#!/bin/sh\nexit 0\n' > "$WORK/bin/logger"
chmod +x "$WORK/bin/"*
PATH=$WORK/bin:$PATH
# The script's own overrides (cluster.conf may set them): this tree and this mark.
RUN_DIR=$WORK VMAIL_DIR=$WORK/vmail
log() { :; }
eval "$(sed -n '/^CAUGHT_UP_MARK=/p; /^VMAIL_DIR=/p; /^RECENT_S=/p;
  /^recent_mailboxes() {/,/^}/p; /^mailbox_catch_up() {/,/^}/p; /^recent_first() {/,/^}/p' \
  "$WORK/script")"
"$@"
wait
"""


def rendered_script(work: Path) -> None:
    plan = build_host_plan(lab_topology("dc1"), "dc1-svr1", SECRETS, "lab")
    (work / "script").write_text({f.path: f for f in plan.files}[role.ROLE_SCRIPT].content)


def maildir(work: Path, rel: str, age_s: float) -> None:
    """A maildir directory (domain/user/...) last changed ``age_s`` seconds ago."""
    path = work / "vmail" / rel
    path.mkdir(parents=True, exist_ok=True)
    when = time.time() - age_s
    # The user's directory and those between: no newer than what is below them.
    for p in (path, *path.parents):
        if p == work / "vmail":
            break
        if p.stat().st_mtime > when or p == path:
            os.utime(p, (when, when))


def harness(work: Path, *call: str) -> str:
    proc = in_base("bash", "-c", HARNESS, "harness", str(work), *call,
                   env={"UP_S": str(UP_S), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def a_node_that_crashed(work: Path) -> None:
    # Before the boot (UP_S ago): its last write 10 s before it, others within the window, one
    # an hour old. After the boot: the peer's push.
    maildir(work, "other.org/last/cur", UP_S + 10)
    maildir(work, "example.com/recent/new", UP_S + 100)
    maildir(work, "example.com/sent/.Sent/cur", UP_S + 10 + role.CATCH_UP_RECENT_S - 30)
    maildir(work, "example.com/old/cur", UP_S + 3600)
    maildir(work, "example.com/quiet/cur", UP_S + 10 + role.CATCH_UP_RECENT_S + 60)
    # Its index rewritten by a sync just before the crash: no message changed.
    index_rewrite = time.time() - UP_S - 20
    os.utime(work / "vmail/example.com/quiet", (index_rewrite, index_rewrite))
    maildir(work, "example.com/pushed/cur", 1)


def test_the_mailboxes_changed_just_before_the_node_went_down() -> None:
    work = Path(tempfile.mkdtemp())
    rendered_script(work)
    a_node_that_crashed(work)
    boot = int(time.time()) - UP_S
    out = harness(work, "recent_mailboxes", str(boot))
    assert out.split() == ["last@other.org", "pushed@example.com", "recent@example.com",
                           "sent@example.com"], out  # fmt: skip


def test_after_a_boot_they_are_queued_first_once() -> None:
    work = Path(tempfile.mkdtemp())
    rendered_script(work)
    a_node_that_crashed(work)
    # The replicator is not up yet at the first demote: no mark, so the next one tries again.
    (work / "down").touch()
    harness(work, "mailbox_catch_up")
    assert not (work / "caught-up").exists()
    (work / "down").unlink()
    harness(work, "mailbox_catch_up")
    calls = (work / "calls").read_text().splitlines()
    assert calls[0] == "replicator replicate -f *", calls
    assert sorted(calls[1:]) == [f"replicator replicate -p high -f {u}" for u in
                                 ("last@other.org", "pushed@example.com", "recent@example.com",
                                  "sent@example.com")], calls  # fmt: skip
    assert (work / "caught-up").exists()
    # Every later demote or reconcile of this boot: the full sync only.
    harness(work, "mailbox_catch_up")
    assert (work / "calls").read_text().splitlines()[len(calls) :] == ["replicator replicate -f *"]
