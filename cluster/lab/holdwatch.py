"""Who holds a data centre's shared IP, watched inside each node every 50 ms: "never two
holders" seen continuously rather than sampled by `lab role` calls a second or two apart, where
a short overlap would fall between two samples.

With ``sharedIpMethod: bgp`` a node holds the shared IP while its BIRD announces it: while
Heartbeat's bgp resource keeps the file ``role.BGP_ANNOUNCE_FILE`` (what ``mailcluster-role``
reports as ``vip_held``). ``WATCH`` runs in each node and writes a line at the start and at
every change (``<unix time> 1|0``), and ``<unix time> end`` once its stop file exists. The
lab's hosts share this machine's clock, so the nodes' timelines compare directly.
"""

from __future__ import annotations

from cluster.services.role import BGP_ANNOUNCE_FILE

INTERVAL_S = 0.05
ANNOUNCE_FILE = BGP_ANNOUNCE_FILE

# argv: the file that means "held", the stop file, the output file, the interval in seconds.
WATCH = r"""
import os, sys, time
held_file, stop, out, interval = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
last = None
with open(out, "w", buffering=1) as f:
    while not os.path.exists(stop):
        held = os.path.exists(held_file)
        if held != last:
            f.write(f"{time.time():.3f} {int(held)}\n")
            last = held
        time.sleep(interval)
    f.write(f"{time.time():.3f} end\n")
"""

Timeline = list[tuple[float, bool]]


def parse(text: str) -> tuple[Timeline, float]:
    """A node's output: its changes (time, held) and the time it stopped. ValueError if the
    watch never started or never ended (it would hide a stretch of time)."""
    changes: Timeline = []
    end = None
    for line in text.splitlines():
        stamp, what = line.split()
        if what == "end":
            end = float(stamp)
        else:
            changes.append((float(stamp), what == "1"))
    if not changes or end is None:
        raise ValueError(f"an incomplete watch: {text[-200:]!r}")
    return changes, end


def overlaps(timelines: dict[str, Timeline], end: float) -> list[tuple[float, float]]:
    """The stretches (start, end) during which two or more nodes held at once, from each
    node's changes, until ``end``. Before a node's first line its state is unknown, so only
    the time every watch covers counts."""
    start = max(changes[0][0] for changes in timelines.values())
    events = sorted((t, name, held) for name, changes in timelines.items() for t, held in changes)
    state: dict[str, bool] = {}
    found: list[tuple[float, float]] = []
    since: float | None = None
    for t, name, held in events:
        state[name] = held
        both = sum(state.values()) > 1
        if both and since is None:
            since = max(t, start)
        elif not both and since is not None:
            if t > start:
                found.append((since, t))
            since = None
    if since is not None:
        found.append((since, end))
    return [(a, b) for a, b in found if b > a]
