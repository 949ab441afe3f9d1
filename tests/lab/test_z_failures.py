"""Failures a user can cause: power cut and boot keep the disk; cut and heal a cable or a DC.

Done on the standby data centre's second node and on dc2 (after the mail tests), so the serving
node is never disturbed by these machinery checks; the HA drills exercise the serving side.
"""

from __future__ import annotations

from cluster.lab.driver import Lab
from cluster.lab.model import volume_path

HOST = "dc2-svr2"
ADDR = "203.0.113.12"


def test_crash_and_boot_keep_the_disk_and_the_volume(lab: Lab, unique: str) -> None:
    lab.exec(HOST, "sh", "-c", f"echo {unique} > /root/crash-test")
    # The volume keeps what was written to its block device across the power cut.
    dev = volume_path(HOST)
    lab.exec(
        HOST,
        "sh",
        "-c",
        f"printf %s {unique} | dd of={dev} bs=512 seek=4000000 conv=fsync status=none",
    )
    lab.run("crash", HOST)
    assert not lab.status()["dcs"]["dc2"]["hosts"][HOST]["up"]
    assert lab.client("ping", "-c", "1", "-W", "1", ADDR, check=False).returncode != 0
    assert lab.exec(HOST, "true", check=False).returncode != 0
    lab.run("boot", HOST)
    assert lab.exec(HOST, "cat", "/root/crash-test").stdout.strip() == unique
    got = lab.exec(
        HOST,
        "sh",
        "-c",
        f"dd if={dev} bs=512 skip=4000000 count=1 status=none | head -c {len(unique)}",
    ).stdout
    assert got == unique
    lab.client("ping", "-c", "1", "-W", "2", ADDR)
    assert lab.status()["dcs"]["dc2"]["hosts"][HOST]["up"]


def test_boot_flushes_addresses_held_at_the_crash(lab: Lab) -> None:
    lab.exec(HOST, "ip", "addr", "add", "203.0.113.99/24", "dev", "eth0")
    lab.run("crash", HOST)
    lab.run("boot", HOST)
    addrs = lab.exec(HOST, "ip", "-o", "-4", "addr", "show", "dev", "eth0").stdout
    assert "203.0.113.99" not in addrs
    assert "203.0.113.12/24" in addrs and "198.18.2.12/24" in addrs


def test_cut_and_heal_a_host(lab: Lab) -> None:
    lab.run("cut", HOST)
    try:
        assert lab.client("ping", "-c", "1", "-W", "1", ADDR, check=False).returncode != 0
        assert lab.exec("dc2-svr1", "ping", "-c", "1", "-W", "1", ADDR, check=False).returncode != 0
        assert lab.status()["dcs"]["dc2"]["hosts"][HOST]["cut"]
    finally:
        lab.run("heal", HOST)
    lab.client("ping", "-c", "1", "-W", "2", ADDR)


def test_cut_a_data_centre_keeps_its_lan(lab: Lab) -> None:
    lab.run("cut", "dc2")
    try:
        assert lab.client("ping", "-c", "1", "-W", "1", ADDR, check=False).returncode != 0
        assert lab.exec("dc1-svr1", "ping", "-c", "1", "-W", "1", ADDR, check=False).returncode != 0
        lab.exec("dc2-svr1", "ping", "-c", "1", "-W", "2", ADDR)  # the DC's own LAN still works
        assert lab.status()["dcs"]["dc2"]["cut"]
    finally:
        lab.run("heal", "dc2")
    lab.client("ping", "-c", "1", "-W", "2", ADDR)
    lab.exec("dc1-svr1", "ping", "-c", "1", "-W", "2", ADDR)


def test_a_cut_survives_crash_and_boot(lab: Lab) -> None:
    lab.run("cut", HOST)
    try:
        lab.run("crash", HOST)
        lab.run("boot", HOST)
        assert lab.client("ping", "-c", "1", "-W", "1", ADDR, check=False).returncode != 0
    finally:
        lab.run("heal", HOST)
    lab.client("ping", "-c", "1", "-W", "2", ADDR)
