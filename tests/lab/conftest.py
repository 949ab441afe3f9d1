"""The lab session: `up` once for all lab tests, `down` at the end (unless MAILCLUSTER_LAB_KEEP=1).

Lab tests need root and a machine like CI's (namespaces, loop devices, the Debian mirror for a
cold base). Everything is driven through the command line, as users and CI drive it.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from cluster.lab import base
from cluster.lab.driver import Lab
from cluster.lab.paths import HOSTS

KEEP = os.environ.get("MAILCLUSTER_LAB_KEEP") == "1"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.lab)


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.fail("the lab tests need root (namespaces, mounts, loop devices)")
    lab = Lab()
    lab.base_was_cached = base.cached(base.spec().key)
    t0 = time.monotonic()
    # MAILCLUSTER_LAB_UP_ARGS=--no-apply checks the lab's machinery while services are broken.
    lab.run("up", *os.environ.get("MAILCLUSTER_LAB_UP_ARGS", "").split(), timeout=1800)
    lab.up_seconds = time.monotonic() - t0
    yield lab
    if not KEEP:
        lab.run("down", timeout=300)


# What a failed lab test shows of each node's log (CI keeps only the test output): the HA
# layer's own lines, which say who held the shared IP and why.
HA_LOG_PATTERN = (
    "ResourceManager|mailcluster-role|mailcluster-guard|mailcluster-bgp|"
    "heartbeat.*(dead|Acquiring|Releasing|standby|takeover|CRIT|ERROR)|ipfail.*(giveup|standby)"
)
HA_LOG_LINES = 25


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    lab = item.funcargs.get("lab") if isinstance(item, pytest.Function) else None
    if report.failed and isinstance(lab, Lab):
        for host in HOSTS:
            cmd = (
                f"grep -hE '{HA_LOG_PATTERN}' /var/log/syslog | grep -v CRON "
                f"| tail -n {HA_LOG_LINES}"
            )
            proc = lab.run("exec", host, "--", "bash", "-c", cmd, check=False, timeout=20)
            text = proc.stdout.strip() or f"(no log: {proc.stderr.strip()[:200]})"
            report.sections.append((f"HA log of {host} ({report.when})", text))
    return report


@pytest.fixture(scope="session")
def keep() -> bool:
    """MAILCLUSTER_LAB_KEEP=1: the developer wants the lab left up after the tests."""
    return KEEP


@pytest.fixture
def unique() -> str:
    """A subject/name no other test run uses."""
    return f"mclab-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def vip(lab: Lab) -> str:
    """The active data centre's shared IP, once a node holds it (Heartbeat takes ~12 s)."""

    def held() -> str | None:
        st = lab.status()
        dc = st["dcs"][st["active_dc"]]
        return str(dc["shared_ip"]) if dc["active"] else None

    return str(lab.wait_for("the active shared IP to be held", held, timeout=90))


@pytest.fixture(scope="module")
def active(lab: Lab, vip: str) -> str:
    """The node that holds the active data centre's shared IP (the writable master)."""
    st = lab.status()
    holders = lab.holders(st["dcs"][st["active_dc"]]["hosts"])
    assert len(holders) == 1, holders
    return holders[0]
