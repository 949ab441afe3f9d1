"""The drills' continuous "never two holders" watch (cluster/lab/holdwatch.py): the script that
runs in each node, and the overlap it is judged by."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.lab import holdwatch


def test_the_watch_reports_each_change_and_its_end(tmp_path: Path) -> None:
    held, stop, out = tmp_path / "announce", tmp_path / "stop", tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", holdwatch.WATCH, str(held), str(stop),
                             str(out), "0.01"])  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not out.exists() or not out.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        held.touch()
        time.sleep(0.1)
        held.unlink()
        time.sleep(0.1)
        stop.touch()
        proc.wait(timeout=10)
    finally:
        proc.kill()
    changes, end = holdwatch.parse(out.read_text())
    assert [h for _, h in changes] == [False, True, False]
    times = [t for t, _ in changes]
    assert times == sorted(times) and end >= times[-1]


def test_an_incomplete_watch_is_refused() -> None:
    with pytest.raises(ValueError):
        holdwatch.parse("100.000 1\n")  # never ended: the rest of the time is unseen
    with pytest.raises(ValueError):
        holdwatch.parse("")


def test_a_handover_that_releases_first_has_no_overlap() -> None:
    timelines = {
        "svr1": [(100.0, True), (105.0, False)],
        "svr2": [(100.0, False), (105.2, True)],
    }
    assert holdwatch.overlaps(timelines, 110.0) == []


def test_an_overlap_of_one_sample_is_found() -> None:
    timelines = {
        "svr1": [(100.0, True), (105.05, False)],
        "svr2": [(100.0, False), (105.0, True)],
    }
    assert holdwatch.overlaps(timelines, 110.0) == [(105.0, 105.05)]


def test_two_holders_until_the_end_and_only_the_time_both_watch() -> None:
    # svr2's watch starts later: before 101.0 its state is unknown, so the overlap starts there.
    timelines = {
        "svr1": [(100.0, True)],
        "svr2": [(101.0, True)],
    }
    assert holdwatch.overlaps(timelines, 103.0) == [(101.0, 103.0)]
