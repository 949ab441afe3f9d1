"""mailcluster-rescue (mailnode/rescue) against a fake of the node's tools: what it refuses, what
it runs, and the Postfix queue's move (files on this machine; postsuper played by the fake as
src/postsuper/postsuper.c behaves). tests/render/test_rescue_dovecot.py runs the real doveadm and
postsuper."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mailnode.rescue import cli, mailboxes, volume
from mailnode.rescue.queue import LOG_QUEUES, MESSAGE_QUEUES, STAGING, Owners, QueueRescue
from mailnode.rescue.run import Completed, RescueError
from mailnode.rescue.settings import SettingsError, parse

PEER = "dc1-svr1"


def raw_settings(tmp: Path, **over: Any) -> dict[str, Any]:
    return {
        "node": "dc1-svr2",
        "peer": PEER,
        "device": str(tmp / "dev" / "volume"),
        "mount_point": str(tmp / "rescue" / PEER),
        "live_mount": "/srv/mail",
        "vmail": "vmail",
        "queue": "postfix",
        "doveadm": ["doveadm"],
        "workers": 1,  # the fakes answer in the order they are asked
        "lock_timeout_s": 60,
        "sync_timeout_s": 30,
        "device_wait_s": 0.2,
        **over,
    }


@dataclass
class FakeTools:
    """The node's commands: answers by the command's name, and a record of every call."""

    answers: dict[str, list[Completed]] = field(default_factory=dict)
    calls: list[list[str]] = field(default_factory=list)

    def __call__(self, argv: Sequence[str], *, stdin: str = "", timeout: float = 60) -> Completed:
        self.calls.append([*argv, *([f"<stdin {stdin!r}>"] if stdin else [])])
        key = (
            argv[0] if argv[0] != "doveadm" else f"doveadm {'sync' if 'sync' in argv else 'status'}"
        )
        queue = self.answers.get(key, [])
        return queue.pop(0) if len(queue) > 1 else (queue[0] if queue else Completed(0, "", ""))

    def ran(self, name: str) -> list[list[str]]:
        return [c for c in self.calls if c[0] == name]


def ok(out: str = "") -> Completed:
    return Completed(0, out, "")


# -- settings and the command line -------------------------------------------------------------


def test_settings_name_every_bad_key_at_once(tmp_path: Path) -> None:
    raw = raw_settings(tmp_path, lock_timeout_s="60", mount_point="rescue", doveadm=None, workers=0)
    with pytest.raises(SettingsError) as e:
        parse(raw)
    for key in ("lock_timeout_s", "mount_point", "doveadm", "workers"):
        assert key in str(e.value)


def test_settings_refuse_the_live_volume_as_the_mount_point(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="mount_point"):
        parse(raw_settings(tmp_path, mount_point="/srv/mail"))


def test_only_the_dc_peer_is_rescued_and_nothing_runs_for_another(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "rescue.json"
    conf.write_text(json.dumps(raw_settings(tmp_path)))
    tools = FakeTools()
    for command in ("check", "mount", "merge", "umount"):
        assert cli.main(["--config", str(conf), command, "dc2-svr1"], runner=tools) == 2
    assert tools.calls == []
    assert "only dc1-svr1's volume can be rescued here" in capsys.readouterr().err


def test_check_refuses_a_node_without_dovecot(tmp_path: Path) -> None:
    conf = tmp_path / "rescue.json"
    conf.write_text(json.dumps(raw_settings(tmp_path)))
    tools = FakeTools({"systemctl": [Completed(3, "", "")]})
    assert cli.main(["--config", str(conf), "check", PEER], runner=tools) == 2


# -- mounting ----------------------------------------------------------------------------------


def with_device(tmp: Path) -> Any:
    cfg = parse(raw_settings(tmp))
    Path(cfg.device).parent.mkdir(parents=True)
    Path(cfg.device).write_text("")  # stands in for the block device: its id is 0:0
    return cfg


def test_mount_refuses_this_nodes_own_volume(tmp_path: Path) -> None:
    cfg = with_device(tmp_path)
    # findmnt: nothing at the rescue mount point, the same device at /srv/mail.
    tools = FakeTools({"findmnt": [Completed(1, "", ""), ok(volume.device_id(cfg.device))]})
    with pytest.raises(RescueError, match="own volume"):
        volume.mount(cfg, tools, print)
    assert not tools.ran("mount")


def test_mount_refuses_a_volume_without_ext4(tmp_path: Path) -> None:
    cfg = with_device(tmp_path)
    tools = FakeTools({"findmnt": [Completed(1, "", ""), ok("254:1"), ok("")], "blkid": [ok("")]})
    with pytest.raises(RescueError, match="no ext4 filesystem"):
        volume.mount(cfg, tools, print)
    assert not tools.ran("mount")


def test_mount_waits_for_the_device_then_gives_up(tmp_path: Path) -> None:
    cfg = parse(raw_settings(tmp_path))
    tools = FakeTools({"findmnt": [Completed(1, "", "")]})
    with pytest.raises(RescueError, match="did not appear"):
        volume.mount(cfg, tools, print)
    assert not tools.ran("mount")


def test_mount_and_umount_are_idempotent(tmp_path: Path) -> None:
    cfg = with_device(tmp_path)
    tools = FakeTools(
        {"findmnt": [Completed(1, "", ""), ok("254:1"), ok("")], "blkid": [ok("ext4\n")]}
    )
    volume.mount(cfg, tools, print)
    assert tools.ran("mount") == [
        ["mount", "-t", "ext4", "-o", volume.MOUNT_OPTIONS, cfg.device, cfg.mount_point]
    ]
    mounted = FakeTools({"findmnt": [ok(volume.device_id(cfg.device))]})
    volume.mount(cfg, mounted, print)  # already there: nothing runs
    assert not mounted.ran("mount")
    volume.umount(cfg, mounted, print)
    assert mounted.ran("umount") == [["umount", cfg.mount_point]]
    unmounted = FakeTools({"findmnt": [Completed(1, "", "")]})
    volume.umount(cfg, unmounted, print)
    assert not unmounted.ran("umount")


def test_another_filesystem_at_the_mount_point_is_an_error(tmp_path: Path) -> None:
    cfg = with_device(tmp_path)
    with pytest.raises(RescueError, match="another filesystem"):
        volume.is_mounted(cfg, FakeTools({"findmnt": [ok("8:1")]}))


# -- maildirs ----------------------------------------------------------------------------------


def make_vmail(root: Path, users: list[str]) -> None:
    for user in users:
        local, domain = user.split("@")
        (root / "vmail" / domain / local / "cur").mkdir(parents=True, exist_ok=True)


def status(count: int) -> Completed:
    return ok(f"mailbox=INBOX messages={count}\nmailbox=Sent messages=1\n")


@dataclass
class FakeDoveadm(FakeTools):
    """A sync that succeeds makes the user's live maildir, as dsync does."""

    live: Path = Path("/nonexistent")

    def __call__(self, argv: Sequence[str], *, stdin: str = "", timeout: float = 60) -> Completed:
        res = super().__call__(argv, stdin=stdin, timeout=timeout)
        if "sync" in argv and res.returncode == 0:
            local, domain = argv[argv.index("-u") + 1].split("@")
            make_vmail(self.live, [f"{local}@{domain}"])
        return res


def test_merge_syncs_each_mailbox_and_counts(tmp_path: Path) -> None:
    live = tmp_path / "live"
    cfg = parse(raw_settings(tmp_path, live_mount=str(live)))
    make_vmail(tmp_path, ["a@example.com", "b@example.com", "new@example.com", "gone@example.com"])
    make_vmail(live, ["a@example.com", "b@example.com"])  # new and gone: no live maildir
    tools = FakeDoveadm({
        # a: 3 -> 5; b: 7 -> 7; new: 0 -> 2 (counted after its sync only)
        "doveadm status": [status(2), status(4), status(6), status(6), status(1)],
        # a: the lock is busy once; b, new: done at once; gone: no such user here
        "doveadm sync": [Completed(75, "", "lock timeout"), ok(), ok(), Completed(67, "", ""),
                         ok()],
    }, live=live)  # fmt: skip
    report = mailboxes.merge(cfg, tools, tmp_path, print)
    assert (report.mailboxes, report.before, report.after) == (3, 10, 14)
    assert report.gone == ["gone@example.com"] and not report.failed
    syncs = [c for c in tools.calls if c[:2] == ["doveadm", "sync"]]
    assert syncs[0] == ["doveadm", "sync", "-f", "-l", "60", "-u", "a@example.com",
                        f"maildir:{tmp_path}/vmail/example.com/a"]  # fmt: skip
    assert len(syncs) == 5  # a twice (the lock), then b, gone and new once each
    # No doveadm command touches a user's live mailbox before its sync makes it.
    statuses = [c[c.index("-u") + 1] for c in tools.calls if "status" in c]
    assert statuses == ["a@example.com"] * 2 + ["b@example.com"] * 2 + ["new@example.com"]


def test_a_failed_mailbox_is_reported_and_the_others_go_on(tmp_path: Path) -> None:
    cfg = parse(raw_settings(tmp_path, live_mount=str(tmp_path)))  # the same maildirs: "live"
    make_vmail(tmp_path, ["a@example.com", "b@example.com"])
    tools = FakeTools(
        {"doveadm status": [status(0)], "doveadm sync": [Completed(74, "", "Error: I/O"), ok()]}
    )
    report = mailboxes.merge(cfg, tools, tmp_path, print)
    assert list(report.failed) == ["a@example.com"] and "exit 74" in report.failed["a@example.com"]
    assert report.mailboxes == 1


# -- the Postfix queue -------------------------------------------------------------------------


def put(path: Path, text: str, mode: int = 0o700) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def queue_dirs(root: Path) -> Path:
    for q in (*MESSAGE_QUEUES, *LOG_QUEUES):
        (root / q).mkdir(parents=True, exist_ok=True)
    return root


class FakePostfix(FakeTools):
    """postsuper -s renames each hold file to its first 5 characters + its inode (with its
    logs, at any depth); postsuper -H - moves the named files from hold to deferred."""

    def __init__(self, live: Path) -> None:
        super().__init__()
        self.live = live

    def __call__(self, argv: Sequence[str], *, stdin: str = "", timeout: float = 60) -> Completed:
        result = super().__call__(argv, stdin=stdin, timeout=timeout)
        if list(argv[:2]) == ["postsuper", "-s"]:
            for path in list((self.live / "hold").iterdir()):
                new = path.name[:5] + format(path.stat().st_ino, "X")
                for q in LOG_QUEUES:
                    for log in (self.live / q).rglob(path.name):
                        log.rename(self.live / q / new)
                path.rename(path.with_name(new))
        elif list(argv[:3]) == ["postsuper", "-H", "-"]:
            for name in stdin.split():
                (self.live / "hold" / name).rename(self.live / "deferred" / name)
        return result


def lost_queue(tmp: Path) -> Path:
    """A lost node's queue: two deferred messages (one with its defer log), one on hold, one in
    maildrop, an unfinished file in incoming, a log without a message."""
    src = queue_dirs(tmp / "volume" / "postfix")
    put(src / "deferred" / "A" / "ABCDE1", "deferred 1")
    put(src / "defer" / "A" / "ABCDE1", "log 1", 0o600)
    put(src / "deferred" / "B" / "BCDEF2", "deferred 2")
    put(src / "hold" / "CDEF03", "held")
    put(src / "maildrop" / "DEF004", "maildrop")
    put(src / "incoming" / "EF0005", "half written", 0o600)
    put(src / "bounce" / "F00006", "orphan log", 0o600)
    return src


def rescue_queue(src: Path, live: Path, tools: FakeTools) -> QueueRescue:
    owners = Owners(os.getuid(), os.getgid(), os.getgid())
    return QueueRescue(src, live, PEER, owners, tools, print)


def live_files(live: Path) -> dict[str, str]:
    return {str(p.relative_to(live)): p.read_text() for p in live.rglob("*") if p.is_file()}


def test_the_queue_moves_once_renamed_released_and_the_held_stays_held(tmp_path: Path) -> None:
    src = lost_queue(tmp_path)
    live = queue_dirs(tmp_path / "live")
    put(live / "deferred" / "A" / "ABCDE1", "a live message with the same name")
    tools = FakePostfix(live)
    report = rescue_queue(src, live, tools).run()
    assert (report.released, report.held, report.maildrop, report.logs, report.unfinished) == (
        2,
        1,
        1,
        1,
        1,
    )
    files = live_files(live)
    # Released into deferred under names of this filesystem; the live namesake is untouched.
    assert files.pop("deferred/A/ABCDE1") == "a live message with the same name"
    deferred = {k: v for k, v in files.items() if k.startswith("deferred/")}
    assert sorted(deferred.values()) == ["deferred 1", "deferred 2"]
    released = {v: Path(k).name for k, v in deferred.items()}
    # The log went with its message, and was renamed with it.
    assert files[f"defer/{released['deferred 1']}"] == "log 1"
    assert [v for k, v in files.items() if k.startswith("hold/")] == ["held"]
    assert files["maildrop/DEF004"] == "maildrop"
    assert not (live / STAGING).exists()
    # Only the unfinished file (never acknowledged) and the orphan log stay on the volume.
    assert sorted(str(p.relative_to(src)) for p in src.rglob("*") if p.is_file()) == [
        "bounce/F00006",
        "incoming/EF0005",
    ]
    assert ["postsuper", "-s", *LOG_QUEUES, "hold"] in tools.calls
    assert ["postqueue", "-f"] in tools.calls
    # A second run finds nothing and runs nothing of Postfix's.
    again = FakePostfix(live)
    second = rescue_queue(src, live, again).run()
    assert (second.released, second.held, second.maildrop, second.logs) == (0, 0, 0, 0)
    assert not again.ran("postsuper") and not again.ran("postqueue")
    assert live_files(live) == {**files, "deferred/A/ABCDE1": "a live message with the same name"}


def test_an_interrupted_rescue_finishes_without_a_duplicate(tmp_path: Path) -> None:
    src = lost_queue(tmp_path)
    live = queue_dirs(tmp_path / "live")
    first = rescue_queue(src, live, FakePostfix(live))
    first.stage()  # ... and the rescue dies here: the files are staged, the volume's queue empty
    assert (live / STAGING / PEER).is_dir()
    tools = FakePostfix(live)
    report = rescue_queue(src, live, tools).run()
    assert (report.released, report.held, report.maildrop) == (2, 1, 1)
    contents = sorted(live_files(live).values())
    assert contents == sorted(["deferred 1", "deferred 2", "held", "maildrop", "log 1"])


def test_a_rescue_stopped_before_the_release_releases_on_the_next_run(tmp_path: Path) -> None:
    src = lost_queue(tmp_path)
    live = queue_dirs(tmp_path / "live")
    first = rescue_queue(src, live, FakePostfix(live))
    first.stage()
    first.place()  # linked into hold, not renamed nor released: then the rescue dies
    report = rescue_queue(src, live, FakePostfix(live)).run()
    assert (report.released, report.held) == (2, 1)
    assert sorted(p.read_text() for p in (live / "deferred").rglob("*") if p.is_file()) == [
        "deferred 1",
        "deferred 2",
    ]
