"""Heartbeat's scripts talk to it through ha_clustermsg (/etc/ha.d/shellfuncs), which writes a
message into Heartbeat's FIFO. Debian's version can interleave two messages; when the peer died
on the node that owns the group, mach_down's and req_resource's messages did, Heartbeat's FIFO
reader dropped both ("NV failure (msgfromsteam): [>>>]"), and the survivor never took over
(CI, 7 December 2026). Ours writes each message whole, under a lock.

These run Debian's and our shellfuncs with the base's dash and flock, against a FIFO read the
way Heartbeat's msgfromstream reads it."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest
from rendertools import NODES, base, files, in_base

from cluster.hostplan import build_host_plan
from cluster.material import ClusterSecrets
from cluster.services import heartbeat
from cluster.topology import Topology

# The function, from its comment to its closing brace, in Debian's file and in ours.
FUNCTION = re.compile(r"# copy stdin \(text\) to FIFO.*?\nha_clustermsg\(\) \{\n.*?\n\}\n", re.S)
HEADER = "# managed by mailcluster; edits are overwritten\n"

# Runs in the base: a reader that parses the FIFO as Heartbeat's msgfromstream does (skip to
# ">>>", then name=value lines to "<<<"; any other line drops the message), and writers that
# source a shellfuncs and call ha_clustermsg. Prints what the reader parsed, as JSON.
DRIVER = r"""
import json, os, subprocess, sys, threading, time

shellfuncs, fifo, mode = sys.argv[1], sys.argv[2], sys.argv[3]
os.mkfifo(fifo)
lines: list[str] = []
seen = threading.Condition()

def read() -> None:
    with open(fifo) as f:
        for line in f:
            with seen:
                lines.append(line)
                seen.notify_all()

threading.Thread(target=read, daemon=True).start()
keep = open(fifo, "w")  # the reader never sees EOF between writers (Heartbeat keeps it open too)

def writer() -> subprocess.Popen[str]:
    env = {"HA_FIFO": fifo, "PATH": "/usr/bin:/bin"}
    return subprocess.Popen(["dash", "-c", f". {shellfuncs}; ha_clustermsg"],
                            stdin=subprocess.PIPE, text=True, env=env)

def wait_lines(n: int) -> None:
    with seen:
        if not seen.wait_for(lambda: len(lines) >= n, timeout=30):
            raise SystemExit(f"the reader got {lines!r}, expected {n} lines")

if mode == "slow-writer":
    # A has started its message (a caller still writing it), B sends a whole one meanwhile.
    a = writer()
    a.stdin.write("t=a\n"); a.stdin.flush()
    if sys.argv[4] == "debian":
        wait_lines(1)  # Debian's writes ">>>" before it has the fields: wait for it to land
    b = writer()
    b.communicate("t=b\nrsc_hold=foreign\ninfo=mach_down\n", timeout=30)
    a.communicate("info=a\n", timeout=30)
    expected = 9
else:
    # Many writers at once, each a whole message of several lines.
    count = int(sys.argv[4])
    procs = [writer() for _ in range(count)]
    for i, p in enumerate(procs):
        p.stdin.write(f"t=w{i}\n" + "".join(f"field{j}={'x' * 40}\n" for j in range(5)))
    for p in procs:
        p.stdin.close()
    for p in procs:
        p.wait(timeout=60)
    expected = count * 8

wait_lines(expected)
keep.close()
messages, dropped, current = [], 0, None
for line in lines:
    line = line.rstrip("\n")
    if current is None:
        if line == ">>>":
            current = {}
        continue
    if line == "<<<":
        messages.append(current); current = None
    elif "=" in line:
        k, _, v = line.partition("="); current[k] = v
    else:
        dropped += 1; current = None  # msgfromstream: "NV failure", the message is lost
print(json.dumps({"messages": messages, "dropped": dropped, "lines": lines}))
"""


def run_driver(tmp_path: Path, shellfuncs: str, *args: str) -> dict[str, object]:
    (tmp_path / "shellfuncs").write_text(shellfuncs)
    (tmp_path / "driver.py").write_text(DRIVER)
    proc = in_base("python3", str(tmp_path / "driver.py"), str(tmp_path / "shellfuncs"),
                   str(tmp_path / "fifo"), *args)  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout
    got: dict[str, object] = json.loads(proc.stdout)
    return got


def debian_shellfuncs() -> str:
    return base().path(heartbeat.SHELLFUNCS).read_text()


@pytest.fixture(scope="module")
def ours(topologies: dict[str, Topology], secrets: ClusterSecrets) -> str:
    """One node's copy: every node renders the same file (no value of the node in it)."""
    plans = [build_host_plan(topologies[s], n, secrets, "lab") for s, n in NODES]
    copies = {files(p)[heartbeat.SHELLFUNCS] for p in plans}
    assert len(copies) == 1
    return copies.pop()


@pytest.mark.checkers
def test_ours_is_debians_file_but_for_ha_clustermsg(ours: str) -> None:
    """Everything but the one function is the file trixie's resource-agents ships: a change
    there (a new helper, a fixed ha_clustermsg) shows here, and the copy is then updated."""
    debian = debian_shellfuncs()
    assert ours.startswith(HEADER) and len(FUNCTION.findall(debian)) == 1
    assert len(FUNCTION.findall(ours)) == 1
    ours_rest = FUNCTION.sub("", ours.split("\n", 4)[4])
    assert ours_rest == FUNCTION.sub("", debian)
    assert heartbeat.CLUSTERMSG_LOCK in ours and "{{" not in ours


@pytest.mark.checkers
def test_debians_ha_clustermsg_loses_both_messages_of_two_writers(tmp_path: Path) -> None:
    """The failure, reproduced without timing: Debian's writer puts ">>>" in the FIFO before
    it has read its fields; a second writer's whole message lands after it; the reader drops
    the first at the second's ">>>" and the second's fields are lost with it."""
    got = run_driver(tmp_path, debian_shellfuncs(), "slow-writer", "debian")
    assert got["dropped"] == 1, got
    assert {"t": "b", "rsc_hold": "foreign", "info": "mach_down"} not in got["messages"], got


@pytest.mark.checkers
def test_ours_delivers_both_messages_of_two_writers(tmp_path: Path, ours: str) -> None:
    """The same two writers with ours: both messages arrive whole (mach_down's is the one whose
    loss left the cluster with no holder)."""
    got = run_driver(tmp_path, ours, "slow-writer", "ours")
    assert got["dropped"] == 0, got
    messages = got["messages"]
    assert isinstance(messages, list)
    assert sorted(messages, key=lambda m: m["t"]) == [
        {"t": "a", "info": "a"},
        {"t": "b", "rsc_hold": "foreign", "info": "mach_down"},
    ], got


@pytest.mark.checkers
def test_ours_delivers_every_message_of_many_writers_at_once(tmp_path: Path, ours: str) -> None:
    """Forty writers at once, six lines each: forty whole messages, none dropped."""
    got = run_driver(tmp_path, ours, "many", "40")
    messages = got["messages"]
    assert isinstance(messages, list) and got["dropped"] == 0, got
    assert sorted(m["t"] for m in messages) == sorted(f"w{i}" for i in range(40))
    assert all(len(m) == 6 for m in messages), textwrap.shorten(str(messages), 400)
