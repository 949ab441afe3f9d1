"""`ops rescue` against a stand-in target and stand-in volumes, and its Linode API calls against a
mocked API (nothing reaches Linode): what is refused before anything changes, and the order of
what it does. The lab drill (tests/lab/test_y_rescue.py) runs the real thing."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from cluster.ops import cli
from cluster.ops.linode_volumes import API, LinodeApi
from cluster.ops.rescue import LinodeVolumes, choose_peer, rescue
from cluster.ops.target import OpsError, Result, StackTarget
from cluster.services.rescue import SCRIPT

NODES = ("dc1-svr1", "dc1-svr2", "dc2-svr1", "dc2-svr2")
SUMMARY = {
    "peer": "dc1-svr1",
    "seconds": 1.0,
    "mailboxes": {"mailboxes": 2, "before": 10, "after": 13, "gone": [], "failed": {}},
    "queue": {"released": 4, "held": 0, "maildrop": 0, "logs": 4, "unfinished": 0},
}


@dataclass
class FakeTarget:
    down: set[str] = field(default_factory=lambda: {"dc1-svr1"})
    fail: str = ""  # the mailcluster-rescue command that fails
    calls: list[tuple[str, list[str]]] = field(default_factory=list)
    events: list[str] = field(default_factory=list)  # what changed, shared with FakeVolumes
    description: str = "fake"

    def nodes(self) -> tuple[str, ...]:
        return NODES

    def run(self, node: str, argv: Sequence[str], stdin: str = "", timeout: float = 0) -> Result:
        self.calls.append((node, list(argv)))
        if argv[0] == SCRIPT:
            self.events.append(f"{argv[1]} on {node}")
        if node in self.down:
            return Result(255, "", f"{node} is down")
        if argv[0] == SCRIPT and argv[1] == self.fail:
            return Result(2, "", f"mailcluster-rescue: {self.fail} went wrong")
        if argv[0] == SCRIPT and argv[1] == "merge":
            return Result(0, json.dumps(SUMMARY) + "\n", "maildirs: 2 mailboxes merged\n")
        return Result(0, "", "")


@dataclass
class FakeVolumes:
    still_runs: bool = False
    log: list[str] = field(default_factory=list)

    def ensure_down(self, node: str, power_off: bool, log: Any) -> None:
        if self.still_runs and not power_off:
            raise OpsError(f"{node} still runs")
        self.log.append(f"down {node}{' (powered off)' if self.still_runs else ''}")

    def attach(self, node: str, to: str) -> None:
        self.log.append(f"attach {node} {to}")

    def detach(self, node: str, frm: str) -> None:
        self.log.append(f"detach {node} {frm}")

    def next_steps(self, node: str) -> str:
        return f"next: {node}"


def fakes(**target: Any) -> tuple[FakeTarget, FakeVolumes]:
    t = FakeTarget(**target)
    return t, FakeVolumes(log=t.events)


def test_the_peer_is_the_other_node_of_the_data_centre_and_bad_choices_are_refused() -> None:
    assert choose_peer(NODES, "dc1-svr1", None) == "dc1-svr2"
    assert choose_peer(NODES, "dc2-svr2", None) == "dc2-svr1"
    for dead, onto, why in (
        ("dc3-svr1", None, "unknown node 'dc3-svr1'"),
        ("dc1-svr1", "dc9-svr9", "unknown node"),
        ("dc1-svr1", "dc1-svr1", "another node than its own"),
        ("dc1-svr1", "dc2-svr1", "dc2-svr1 is in dc2, dc1-svr1 in dc1"),
    ):
        with pytest.raises(OpsError, match=why):
            choose_peer(NODES, dead, onto)


def test_a_rescue_attaches_mounts_merges_unmounts_and_detaches_in_that_order() -> None:
    target, volumes = fakes()
    report = rescue(target, volumes, "dc1-svr1", None, print)
    assert target.events == [
        "down dc1-svr1",
        "check on dc1-svr2",
        "attach dc1-svr1 dc1-svr2",
        "mount on dc1-svr2",
        "merge on dc1-svr2",
        "umount on dc1-svr2",
        "detach dc1-svr1 dc1-svr2",
    ]
    assert report.summary == SUMMARY and report.peer == "dc1-svr2"
    assert "2 mailboxes merged (10 -> 13 messages), 4 queued messages delivered" in (
        report.describe()
    )


def test_a_node_that_answers_is_refused_before_anything_changes() -> None:
    target, volumes = fakes(down=set())
    with pytest.raises(OpsError, match="dc1-svr1 answers: it is up"):
        rescue(target, volumes, "dc1-svr1", None, print)
    assert target.events == []


def test_a_node_that_still_runs_needs_power_off() -> None:
    target, volumes = fakes()
    volumes.still_runs = True
    with pytest.raises(OpsError, match="still runs"):
        rescue(target, volumes, "dc1-svr1", None, print)
    assert target.events == []
    rescue(target, volumes, "dc1-svr1", None, print, power_off=True)
    assert volumes.log[0] == "down dc1-svr1 (powered off)"


def test_a_peer_that_cannot_take_it_is_refused_before_the_volume_moves() -> None:
    target, volumes = fakes(fail="check")
    with pytest.raises(OpsError, match="check went wrong"):
        rescue(target, volumes, "dc1-svr1", None, print)
    assert target.events == ["down dc1-svr1", "check on dc1-svr2"]


def test_a_failure_on_the_peer_leaves_the_volume_attached_and_says_so() -> None:
    target, volumes = fakes(fail="merge")
    with pytest.raises(OpsError, match="still attached to dc1-svr2: run the rescue again"):
        rescue(target, volumes, "dc1-svr1", None, print)
    assert target.events[-1] == "merge on dc1-svr2" and "detach dc1-svr1 dc1-svr2" not in (
        target.events
    )


def test_a_stack_rescue_without_the_linode_token_is_refused_first(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("LINODE_TOKEN", raising=False)

    def no_stack(stack: str) -> StackTarget:
        raise AssertionError("the stack was read before the token was checked")

    monkeypatch.setattr(StackTarget, "from_stack", staticmethod(no_stack))
    assert cli.main(["--stack", "dc1", "rescue", "dc1-svr1"]) == 2
    assert "LINODE_TOKEN is not set" in capsys.readouterr().err


# -- the Linode API (mocked) --------------------------------------------------------------------

TOKEN = "secret-token-value"


@dataclass
class FakeLinode:
    """Linode's API as far as a rescue uses it: Linodes and volumes by label, asynchronous
    attach/detach/shutdown that show on the next read."""

    linodes: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {
            "dc1-svr1": {
                "id": 11,
                "label": "dc1-svr1",
                "region": "eu-central",
                "status": "offline",
            },
            "dc1-svr2": {
                "id": 12,
                "label": "dc1-svr2",
                "region": "eu-central",
                "status": "running",
            },
        }
    )
    volume: dict[str, Any] = field(
        default_factory=lambda: {
            "id": 7,
            "label": "dc1-svr1-mail",
            "region": "eu-central",
            "linode_id": 11,
        }
    )
    posts: list[tuple[str, Any]] = field(default_factory=list)

    def __call__(
        self, method: str, url: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[int, bytes]:
        assert headers["Authorization"] == f"Bearer {TOKEN}"
        path = url.removeprefix(API)
        data = json.loads(body) if body else None
        if method == "POST":
            self.posts.append((path, data))
        label = json.loads(headers.get("X-Filter", "{}")).get("label")
        by_id = {str(v["id"]): v for v in self.linodes.values()}
        if path == "/linode/instances":
            return 200, json.dumps(
                {"data": [self.linodes[label]] if label in self.linodes else []}
            ).encode()
        if path.startswith("/linode/instances/") and method == "GET":
            return 200, json.dumps(by_id[path.split("/")[3]]).encode()
        if path.endswith("/shutdown"):
            by_id[path.split("/")[3]]["status"] = "offline"
            return 200, b"{}"
        if path == "/volumes":
            found = [self.volume] if label == self.volume["label"] else []
            return 200, json.dumps({"data": found}).encode()
        if path == "/volumes/7" and method == "GET":
            return 200, json.dumps(self.volume).encode()
        if path == "/volumes/7/detach":
            self.volume["linode_id"] = None
            return 200, b"{}"
        if path == "/volumes/7/attach":
            if self.volume["linode_id"] is not None:
                return 400, json.dumps(
                    {"errors": [{"reason": "Volume is already attached"}]}
                ).encode()
            self.volume["linode_id"] = data["linode_id"]
            return 200, json.dumps(self.volume).encode()
        return 404, json.dumps({"errors": [{"reason": "Not found"}]}).encode()


def linode(fake: FakeLinode) -> LinodeVolumes:
    return LinodeVolumes(LinodeApi(TOKEN, fake, sleep=lambda s: None, wait_s=5), "dc1")


def test_linode_moves_the_volume_detach_then_attach_without_touching_the_config_profile() -> None:
    fake = FakeLinode()
    volumes = linode(fake)
    volumes.ensure_down("dc1-svr1", False, print)
    volumes.attach("dc1-svr1", "dc1-svr2")
    assert fake.posts == [
        ("/volumes/7/detach", None),
        ("/volumes/7/attach", {"linode_id": 12, "persist_across_boots": False}),
    ]
    volumes.attach("dc1-svr1", "dc1-svr2")  # a second run: already there
    volumes.detach("dc1-svr1", "dc1-svr2")
    volumes.detach("dc1-svr1", "dc1-svr2")  # a second run: already detached
    assert len(fake.posts) == 3 and fake.volume["linode_id"] is None
    assert "pulumi up -s dc1" in volumes.next_steps("dc1-svr1")


def test_linode_refuses_a_running_linode_unless_told_to_power_it_off() -> None:
    fake = FakeLinode()
    fake.linodes["dc1-svr1"]["status"] = "running"
    with pytest.raises(OpsError, match=r"its Linode is running.*--power-off"):
        linode(fake).ensure_down("dc1-svr1", False, print)
    assert fake.posts == []
    linode(fake).ensure_down("dc1-svr1", True, print)
    assert fake.posts == [("/linode/instances/11/shutdown", None)]
    assert fake.linodes["dc1-svr1"]["status"] == "offline"


def test_linode_refuses_another_region_and_a_stranger_attachment_before_any_change() -> None:
    fake = FakeLinode()
    fake.linodes["dc1-svr2"]["region"] = "us-east"
    with pytest.raises(OpsError, match="inside its region only"):
        linode(fake).attach("dc1-svr1", "dc1-svr2")
    fake = FakeLinode()
    fake.volume["linode_id"] = 99
    with pytest.raises(OpsError, match="attached to Linode 99, neither"):
        linode(fake).attach("dc1-svr1", "dc1-svr2")
    assert fake.posts == []


def test_linode_errors_name_the_reason_and_never_the_token() -> None:
    fake = FakeLinode()
    api = LinodeApi(TOKEN, fake, sleep=lambda s: None, wait_s=5)
    with pytest.raises(OpsError) as e:
        api.attach(7, 12)  # still attached to dc1-svr1: Linode refuses
    assert "HTTP 400: Volume is already attached" in str(e.value)
    assert TOKEN not in str(e.value)


def test_linode_waits_a_bounded_time_for_an_attach() -> None:
    fake = FakeLinode()
    fake.volume["linode_id"] = None

    def never(
        method: str, url: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[int, bytes]:
        if method == "POST":
            return 200, b"{}"
        return fake(method, url, body, headers)

    api = LinodeApi(TOKEN, never, sleep=lambda s: None, wait_s=0.05)
    with pytest.raises(OpsError, match="timed out after 0 s waiting for volume 7 to be attached"):
        api.attach(7, 12)
