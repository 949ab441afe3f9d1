"""BIND 9: the authoritative zone of the mail domain, master/slave with NOTIFY.

- Primary on both nodes of the active data centre, secondary on the other data centre's nodes.
  NOTIFY and zone transfers between them go over the WireGuard mesh (mesh.py): the primaries
  notify the secondaries' mesh addresses and allow transfers only to them; the secondaries
  transfer from the primaries' mesh addresses. No recursion; transfers to nobody else (but
  Linode's AXFR servers when ``linodeSecondaryDns``, over the internet: they are not nodes).
- The zone body (every record, from ``Topology.dns_records``, TTL ``dnsTtl``) is rendered without
  a serial; ``/usr/local/sbin/mailcluster-zone`` on the host sets the serial to
  max(old + 1, YYYYMMDD00) only when the body changed, so the serial increases on every change
  and stays put otherwise. Secondary copies are text, so a promoted secondary continues from the
  serial it holds.
- ``named-checkconf -z`` (which loads the zones) before ``rndc reload``; named is started when it
  is not running. The statistics channel on 127.0.0.1:8053 feeds mailcluster-bindgraph.
"""

from __future__ import annotations

import shlex
from typing import Any

from cluster import ports
from cluster.hostcontext import HostContext
from cluster.plan import (
    CHANGED_MARK,
    PACKAGES_STEP,
    Step,
    file_step_name,
    reload_or_start,
    script_step,
)
from cluster.services import autoconfig, dane, domains, mta_sts, nodepkg, storage
from cluster.services.bindpaths import ZONE_DIR, secondary_file, signed_file, zone_file

PACKAGES: tuple[str, ...] = ("bind9", "bind9-utils", "bind9-dnsutils")

# Linode DNS Manager's transfer servers (Linode guide "Configure your domain zone as a
# secondary"), allowed only when the stack asks for Linode's secondary DNS.
LINODE_AXFR = (
    "104.237.137.10",
    "65.19.178.10",
    "74.207.225.10",
    "207.192.70.10",
    "109.74.194.10",
    "2600:3c00::a",
    "2600:3c01::a",
    "2600:3c02::a",
    "2600:3c03::a",
    "2a01:7e00::a",
)
# BIND's dynamic data on the volume: the zone files this plan keeps (the primary's serial lives
# there: a lost copy would restart it below what the secondaries hold, and they would ignore every
# change), journals, and a secondary's transferred copy.
DATA_DIR = storage.DataDir("bind", "/var/lib/bind", "root", "bind", "2775")
DATA_STEP = "bind.data"
BODY = "/etc/bind/mailcluster/zone.body"
ZONE_SCRIPT = "/usr/local/sbin/mailcluster-zone"
ZONE_DIR_STEP = "bind.zone-dir"
ZONE_STEP = "bind.zone"


def transfer_to(ctx: HostContext) -> list[str]:
    topo = ctx.topology
    addrs = [topo.mesh_address(n) for n in topo.dns_slaves]
    if ctx.config.linode_secondary_dns:
        addrs += LINODE_AXFR
    # Nothing to transfer to (a lone data centre): "none", never an empty ACL that reads as any.
    return list(dict.fromkeys(addrs)) or ["none"]


def primaries(ctx: HostContext) -> list[str]:
    topo = ctx.topology
    return [topo.mesh_address(n) for n in topo.dns_masters]


def zone_body_values(ctx: HostContext) -> dict[str, Any]:
    topo = ctx.topology
    return {
        **topo.soa_values(),
        "records": topo.dns_records(ctx.secrets.dkim_public_key_b64, mta_sts.policy_id(ctx.config))
        # The SRV records need the port table, which the topology cannot import.
        + autoconfig.srv_records(topo)
        + dane.records(ctx),
    }


def steps(ctx: HostContext) -> list[Step]:
    topo, node = ctx.topology, ctx.node
    is_master = topo.is_dns_master(node)
    zfile = zone_file(topo.domain)
    signed = signed_file(topo.domain)
    signs = domains.signs_own_zone(ctx)
    served = signed if signs else zfile
    options = ctx.file(
        "/etc/bind/named.conf.options",
        group="bind",
        transfer_to=transfer_to(ctx),
        linode_axfr=ctx.config.linode_secondary_dns,
        # A secondary consumes the catalog of the further domains (domains.py); a master
        # serves them as primaries of its own (hosted.conf) and so must not consume it.
        catalog=None if is_master else domains.CATALOG,
        catalog_primaries=primaries(ctx),
        catz_dir=domains.CATZ_DIR,
        stats_port=ports.BIND_STATS_PORT,
    )
    local = ctx.file(
        "/etc/bind/named.conf.local",
        group="bind",
        is_master=is_master,
        zone_file=served if is_master else secondary_file(topo.domain),
        notify=[topo.mesh_address(n) for n in topo.dns_slaves],
        primaries=primaries(ctx),
        catalog=domains.CATALOG,
        catalog_file=domains.CATALOG_FILE if is_master else domains.CATALOG_SECONDARY_FILE,
        hosted_conf=domains.HOSTED_CONF,
    )
    script = ctx.file(ZONE_SCRIPT, mode="0755")
    conf = file_step_name(domains.CONFIG)
    # Every node, before named first starts: a node promoted later finds the files its new
    # configuration names.
    init = domains.init_step(after=(PACKAGES_STEP,), watch=(conf,))
    data = storage.data_steps(
        ctx,
        DATA_STEP,
        (DATA_DIR,),
        services=("named",),
        units=("named.service",),
        after=(options, local, init),
    )
    zone_dir = script_step(
        ZONE_DIR_STEP,
        f"""for d in {ZONE_DIR} {domains.CATZ_DIR}; do
  if [ ! -d "$d" ]; then
    install -d -m 0775 -o root -g bind "$d"
    echo "{CHANGED_MARK} $d"
  fi
done
""",
        after=(DATA_STEP,),
    )
    out: list[Step] = [options, local, script, init, *data, zone_dir]
    watch: list[Step] = [options, local]
    if is_master:
        body = ctx.file(BODY, **zone_body_values(ctx))
        # Signed: the script keeps a stand-in for the signed file until the writer's signing
        # (domains.sync, right after named's reload) replaces it.
        zone = script_step(
            ZONE_STEP,
            f"{ZONE_SCRIPT} {BODY} {shlex.quote(zfile)} {shlex.quote(topo.domain)} "
            f"{shlex.quote(secondary_file(topo.domain))}"
            + (f" {shlex.quote(signed)}" if signs else "")
            + "\n",
            after=(zone_dir, script),
            # The serial script decides on its own whether the body changed; running it
            # again when only the zone type changed (promotion) bumps the serial.
            watch=(body, local),
        )
        out += [body, zone]
        watch.append(zone)
    out.append(
        script_step(
            "bind.reload",
            reload_or_start(
                "named",
                check="named-checkconf -z /etc/bind/named.conf >/dev/null",
                running="rndc status >/dev/null 2>&1",
                reload="rndc reload >/dev/null",
            ),
            after=(zone_dir, init),
            watch=watch,
        )
    )
    # Then the further domains' zones, at once (a promoted master serves them as primaries).
    # A changed zone body re-runs it too (the writer signs the new records at once), and so
    # does a new version of the program (what it writes may have changed).
    sync_watch = (conf, local, nodepkg.PACKAGE_STEP) + ((ZONE_STEP,) if is_master else ())
    out.append(domains.sync_step(after=("bind.reload",), watch=sync_watch))
    return out
