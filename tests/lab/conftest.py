"""The lab session: `up` once for all lab tests, `down` at the end (unless MAILCLUSTER_LAB_KEEP=1).

Lab tests need root and a machine like CI's (namespaces, loop devices, the Debian mirror for a
cold base). Everything is driven through the command line, as users and CI drive it.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.lab.driver import Lab

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
    t0 = time.monotonic()
    # MAILCLUSTER_LAB_UP_ARGS=--no-apply checks the lab's machinery while services are broken.
    lab.run("up", *os.environ.get("MAILCLUSTER_LAB_UP_ARGS", "").split(), timeout=1800)
    lab.up_seconds = time.monotonic() - t0
    yield lab
    if not KEEP:
        lab.run("down", timeout=300)


@pytest.fixture(scope="session")
def keep() -> bool:
    """MAILCLUSTER_LAB_KEEP=1: the developer wants the lab left up after the tests."""
    return KEEP


@pytest.fixture
def unique() -> str:
    """A subject/name no other test run uses."""
    return f"mclab-{uuid.uuid4().hex[:12]}"
