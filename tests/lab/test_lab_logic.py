"""The lab's pure logic (no namespaces needed): the applier's order, --set parsing, base keys."""

from __future__ import annotations

import pytest

from cluster.lab import base, hosts, volume
from cluster.lab.apply import global_order, marker_name
from cluster.lab.run import LabError
from cluster.lab.stacks import parse_sets
from cluster.plan import HostPlan, script_step


def _plan(host: str, *steps: tuple[str, tuple[tuple[str, str], ...]]) -> HostPlan:
    plan = HostPlan(host)
    for name, remote in steps:
        plan.add(script_step(name, "true\n", after_remote=remote))
    return plan


def test_global_order_waits_for_remote_steps() -> None:
    plans = {
        "a": _plan("a", ("db", ()), ("grant", ())),
        "b": _plan("b", ("replica", (("a", "grant"),)), ("done", ())),
    }
    order = [(h, s.name) for h, s in global_order(plans)]
    assert order.index(("a", "grant")) < order.index(("b", "replica"))
    assert order.index(("b", "replica")) < order.index(("b", "done"))
    assert len(order) == 4


def test_global_order_ignores_steps_of_the_other_stack() -> None:
    plans = {"a": _plan("a", ("x", (("dc2-svr1", "whatever"),)))}
    assert [s.name for _, s in global_order(plans)] == ["x"]


def test_global_order_finds_cross_host_cycles() -> None:
    plans = {
        "a": _plan("a", ("x", (("b", "y"),))),
        "b": _plan("b", ("y", (("a", "x"),))),
    }
    with pytest.raises(LabError, match="cycle"):
        global_order(plans)


def test_set_values_are_typed_like_pulumi_config() -> None:
    assert parse_sets(["activeDc=dc2", "heartbeatDeadtimeMs=500", "imapPlaintext=true"]) == {
        "activeDc": "dc2",
        "heartbeatDeadtimeMs": 500,
        "imapPlaintext": True,
    }
    with pytest.raises(LabError):
        parse_sets(["activeDc"])


def test_marker_names_are_plain_file_names() -> None:
    assert marker_name("file:/etc/postfix/main.cf") == "file__etc_postfix_main.cf"


def test_base_key_follows_the_package_list() -> None:
    a = base.BaseSpec("http://m/debian", ("postfix", "rsyslog"))
    b = base.BaseSpec("http://m/debian", ("postfix", "rsyslog", "dovecot-core"))
    assert a.key != b.key and a.recipe_key == b.recipe_key
    assert set(base.LAB_PACKAGES) <= set(base.spec().packages)


FSTAB = """# UNCONFIGURED FSTAB FOR BASE SYSTEM
UUID=1234-abcd /srv/mail ext4 defaults,nofail,noatime 0 2
/srv/mail/mysql /var/lib/mysql none bind,nofail,x-systemd.requires-mounts-for=/srv/mail 0 0
"""


def test_the_volume_is_found_in_fstab_by_uuid_label_or_path() -> None:
    tags = {"UUID": "1234-abcd", "TYPE": "ext4"}
    mount = volume.fstab_mount(FSTAB, tags, "/dev/disk/by-id/scsi-0Linode_Volume_x-mail")
    assert mount == volume.FstabMount("/srv/mail", "ext4", "defaults,nofail,noatime")
    by_label = "LABEL=mail /data auto noatime\n"
    assert volume.fstab_mount(by_label, {"LABEL": "mail"}, "/dev/x") == volume.FstabMount(
        "/data", "auto", "noatime"
    )
    assert volume.fstab_mount("/dev/x /data ext4 defaults 0 1\n", {}, "/dev/x") is not None
    # Another filesystem's line, a commented line, and noauto are not the lab's to mount.
    assert volume.fstab_mount(FSTAB, {"UUID": "other"}, "/dev/x") is None
    assert volume.fstab_mount("#UUID=1234-abcd /srv/mail ext4 defaults\n", tags, "/dev/x") is None
    assert volume.fstab_mount("UUID=1234-abcd /srv ext4 noauto 0 2\n", tags, "/dev/x") is None


def test_exec_gets_the_nodes_capabilities_not_this_machines() -> None:
    # CAP_NET_ADMIN (12) and CAP_SYS_ADMIN (21) kept, CAP_SYSLOG (34) not.
    assert hosts.capability_list(1 << 12 | 1 << 21) == "+cap_12,+cap_21"
    assert hosts.capability_list(0) == ""
