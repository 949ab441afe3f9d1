"""``rescue DEAD [--onto PEER]``: a node lost for good gives up its volume to its DC peer, which
delivers the acknowledged mail that only the lost node had.

A crashed node's volume holds what it acknowledged and its peer may not have: the deliveries of
the moment before their replication, and its Postfix queue (README "What lives on the volume").
Instead of waiting for that node, the volume is attached to the peer (Linode allows it inside a
region; the lab hot-plugs the same loop device), and ``mailcluster-rescue`` there mounts it,
merges every maildir into the live mailboxes, hands the queue to the live Postfix and unmounts
it (mailnode/rescue). Then the volume is detached again, so it can go back to its node (a boot
or a rebuild) or be kept aside.

Refused before anything changes: an unknown node, a peer in another data centre (a volume
attaches inside its region only), a node that answers (it may still write to its volume), and
on Linode a node whose Linode still runs although it does not answer (a hung or cut-off node
can still write: power it off first, or let ``--power-off`` do it). Every step is idempotent: a
second run attaches, mounts, merges nothing new, and detaches.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from cluster.ops.linode_volumes import LinodeApi
from cluster.ops.target import OpsError, Target, dc_of
from cluster.services.rescue import DEVICE_WAIT_S, SCRIPT, SYNC_TIMEOUT_S
from cluster.services.storage import volume_label

Log = Callable[[str], None]
PROBE_TIMEOUT_S = 20  # a node that does not answer within this counts as down
MOUNT_TIMEOUT_S = DEVICE_WAIT_S + 120
MERGE_TIMEOUT_S = 4 * SYNC_TIMEOUT_S


class Volumes(Protocol):
    """Where a node's volume is attached: the lab's loop devices or Linode's API."""

    def ensure_down(self, node: str, power_off: bool, log: Log) -> None:
        """Nothing runs on ``node`` any more (``power_off``: make it so), or an OpsError."""
        ...

    def attach(self, node: str, to: str) -> None: ...

    def detach(self, node: str, frm: str) -> None: ...

    def next_steps(self, node: str) -> str: ...


class LabVolumes:
    """The lab: a host's volume is a loop device, hot-plugged into another running host."""

    def ensure_down(self, node: str, power_off: bool, log: Log) -> None:
        from cluster.lab import hosts, lifecycle
        from cluster.lab.state import HostRecord, LabState

        if not hosts.alive(LabState.load().hosts.get(node, HostRecord())):
            return
        if not power_off:
            raise OpsError(
                f"{node} does not answer, but the lab still runs it (a cut cable?): "
                "it may still write to its volume; `lab crash` it, or add "
                "--power-off"
            )
        log(f"  {node}: powering it off (--power-off)")
        lifecycle.crash(node)

    def attach(self, node: str, to: str) -> None:
        from cluster.lab import lifecycle
        from cluster.lab.run import LabError

        try:
            lifecycle.attach_volume(node, to)
        except LabError as e:
            raise OpsError(str(e)) from e

    def detach(self, node: str, frm: str) -> None:
        from cluster.lab import lifecycle
        from cluster.lab.run import LabError

        try:
            lifecycle.detach_volume(node)
        except LabError as e:
            raise OpsError(str(e)) from e

    def next_steps(self, node: str) -> str:
        return (
            f"next: `python -m cluster.lab boot {node}` powers it on with its volume (it "
            f"rejoins as the standby), or `rebuild {node}` gives it a fresh OS disk with it"
        )


class LinodeVolumes:
    """Linode: the volume is detached from the lost node's Linode and attached to the peer's
    (linode_volumes.py has the endpoints and their rules)."""

    def __init__(self, api: LinodeApi, stack: str) -> None:
        self.api = api
        self.stack = stack

    def _linode(self, node: str) -> dict[str, Any]:
        found = self.api.instance(node)
        if found is None:
            raise OpsError(f"Linode has no Linode labelled {node!r}")
        return found

    def ensure_down(self, node: str, power_off: bool, log: Log) -> None:
        found = self.api.instance(node)
        if found is None or found.get("status") == "offline":
            return  # a deleted Linode's volumes are detached by Linode
        if not power_off:
            raise OpsError(
                f"{node} does not answer, but its Linode is {found.get('status')}: a hung or "
                f"cut-off node may still write to its volume. Power it off first (`linode-cli "
                f"linodes shutdown {found['id']}`), or add --power-off"
            )
        log(f"  {node}: powering off Linode {found['id']} (--power-off)")
        self.api.power_off(int(found["id"]))

    def attach(self, node: str, to: str) -> None:
        vol = self.api.volume(volume_label(node))
        peer = self._linode(to)
        if vol["region"] != peer["region"]:
            raise OpsError(
                f"volume {vol['label']} is in {vol['region']}, {to} in "
                f"{peer['region']}: Linode attaches a volume inside its region only"
            )
        if vol.get("linode_id") == peer["id"]:
            return
        if vol.get("linode_id") is not None:
            owner = self.api.instance(node)
            if owner is None or vol["linode_id"] != owner["id"]:
                raise OpsError(
                    f"volume {vol['label']} is attached to Linode {vol['linode_id']}, "
                    f"neither {node} nor {to}: leaving it alone"
                )
            self.api.detach(int(vol["id"]))
        self.api.attach(int(vol["id"]), int(peer["id"]))

    def detach(self, node: str, frm: str) -> None:
        vol = self.api.volume(volume_label(node))
        if vol.get("linode_id") is None:
            return
        if vol["linode_id"] != self._linode(frm)["id"]:
            raise OpsError(
                f"volume {vol['label']} is attached to Linode {vol['linode_id']}, "
                f"not to {frm}: leaving it alone"
            )
        self.api.detach(int(vol["id"]))

    def next_steps(self, node: str) -> str:
        return (
            f"next: the volume {volume_label(node)} is detached. To bring {node} back with "
            f"it, `pulumi up -s {self.stack}` attaches it to {node} again (the Volume's "
            f'linode_id), then boot {node} or rebuild it (README "Rebuild one node"); to '
            "keep it aside instead, leave it detached: nothing uses it"
        )


@dataclass(frozen=True)
class RescueReport:
    dead: str
    peer: str
    seconds: float
    summary: dict[str, Any]  # mailcluster-rescue merge --json

    def describe(self) -> str:
        boxes, queue = self.summary["mailboxes"], self.summary["queue"]
        return (
            f"rescue {self.dead} -> {self.peer}: {boxes['mailboxes']} mailboxes merged "
            f"({boxes['before']} -> {boxes['after']} messages), {queue['released']} queued "
            f"messages delivered, {queue['maildrop']} to pickup, {queue['held']} kept on "
            f"hold, in {self.seconds:.1f} s"
        )


def choose_peer(nodes: tuple[str, ...], dead: str, onto: str | None) -> str:
    """The node that takes ``dead``'s volume: ``onto``, else the other node of its DC."""
    if dead not in nodes:
        raise OpsError(f"unknown node {dead!r}; nodes: {', '.join(nodes)}")
    if onto is None:
        peers = [n for n in nodes if dc_of(n) == dc_of(dead) and n != dead]
        if len(peers) != 1:
            raise OpsError(f"{dead} has no peer in {dc_of(dead)} this target can reach: --onto")
        return peers[0]
    if onto not in nodes:
        raise OpsError(f"--onto {onto!r}: unknown node; nodes: {', '.join(nodes)}")
    if onto == dead:
        raise OpsError(f"--onto {onto}: the volume must go to another node than its own")
    if dc_of(onto) != dc_of(dead):
        raise OpsError(
            f"--onto {onto}: {onto} is in {dc_of(onto)}, {dead} in {dc_of(dead)}: a "
            "volume attaches to a Linode of its own region only"
        )
    return onto


def _node(target: Target, node: str, args: list[str], timeout: float, log: Log) -> str:
    """``mailcluster-rescue ARGS`` on ``node``; its progress lines to ``log``, its stdout back."""
    res = target.run(node, [SCRIPT, *args], timeout=timeout)
    for line in res.stderr.splitlines():
        if line.strip() and not line.startswith("mailcluster-rescue: "):
            log(f"  {line}")
    if res.returncode == 255:
        raise OpsError(f"{node} does not answer: {res.stderr.strip()[-300:]}")
    if res.returncode != 0:
        why = [ln for ln in res.stderr.splitlines() if ln.strip()]
        raise OpsError(
            f"mailcluster-rescue {args[0]} on {node}: "
            f"{why[-1].removeprefix('mailcluster-rescue: ') if why else 'failed'}"
        )
    return res.stdout


def rescue(
    target: Target,
    volumes: Volumes,
    dead: str,
    onto: str | None,
    log: Log,
    power_off: bool = False,
) -> RescueReport:
    peer = choose_peer(target.nodes(), dead, onto)
    probe = target.run(dead, ["true"], timeout=PROBE_TIMEOUT_S)
    if probe.returncode != 255:
        raise OpsError(
            f"{dead} answers: it is up, and writes to its volume. A rescue is for a "
            "node lost for good; a node that comes back delivers its own mail"
        )
    volumes.ensure_down(dead, power_off, log)
    _node(target, peer, ["check", dead], PROBE_TIMEOUT_S * 3, log)
    log(f"rescue: {dead} is down; its volume goes to {peer}")
    t0 = time.monotonic()
    volumes.attach(dead, peer)
    log(f"  {dead}'s volume attached to {peer}")
    try:
        _node(target, peer, ["mount", dead], MOUNT_TIMEOUT_S, log)
        out = _node(target, peer, ["merge", dead, "--json"], MERGE_TIMEOUT_S, log)
        _node(target, peer, ["umount", dead], MOUNT_TIMEOUT_S, log)
    except OpsError as e:
        raise OpsError(
            f"{e}. {dead}'s volume is still attached to {peer}: run the rescue "
            "again once that is fixed (it goes on where it stopped)"
        ) from e
    volumes.detach(dead, peer)
    log(f"  {dead}'s volume detached from {peer}")
    try:
        summary = json.loads(out.strip().splitlines()[-1])
    except (IndexError, ValueError) as e:
        raise OpsError(f"mailcluster-rescue merge on {peer} said no summary: {out[-300:]}") from e
    return RescueReport(dead, peer, time.monotonic() - t0, summary)
