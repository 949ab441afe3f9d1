"""Further mail domains, first-class: each its own DKIM key and zone, on every node, no ``up``.

The cluster's own domain (the stack key ``domain``) stays the plan's: its zone is bind.py's, its
key a Pulumi secret (rspamd.py). Every other domain of Postfix Admin (``ops domain add``, or
added in its web pages) is made whole by ``mailcluster-domains`` (``mailnode/domains.py``),
which follows the replicated database on every node:

- its DKIM key, generated once on the writer and kept in ``mailcluster.dkim_keys``; every node
  writes it for rspamd, whose ``selector_map`` names it (rspamd.py);
- on the DNS masters, its zone (the records ``hosted_records`` lists here, its SOA and DKIM
  key), BIND's ``hosted.conf`` and the catalog zone ``CATALOG``; the secondaries consume the
  catalog (named.conf.options), so the other data centre serves a new domain without any change
  of its configuration.

It runs from a timer every ``SYNC_EVERY_S`` seconds (a domain added in Postfix Admin's pages,
a node that was down when ``ops`` ran), from ``ops domain add|del`` at once, and in the plan after
BIND and rspamd (a promoted master writes its zones before it serves them).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from cluster import ports
from cluster.hostcontext import HostContext
from cluster.plan import CHANGED_MARK, PACKAGES_STEP, Step, StepRef, file_step_name, script_step
from cluster.services import autoconfig, bindpaths, mariadb, nodepkg, units
from cluster.services.role import ROLE_SCRIPT, ROLE_SCRIPT_STEP
from cluster.topology import DnsRecord

# bind9-utils: dnssec-keygen, -signzone and -dsfromkey; bind9-dnsutils: dig (the expiry served).
PACKAGES: tuple[str, ...] = (
    "openssl",
    "python3",
    "mariadb-client",
    "bind9-utils",
    "bind9-dnsutils",
)

COMMAND = "mailcluster-domains"
SCRIPT = f"/usr/local/sbin/{COMMAND}"
COMMAND_STEP = file_step_name(SCRIPT)  # nodepkg.entry_point installs it
CONFIG = "/etc/mailcluster/domains.json"
DB = mariadb.CLUSTER_DB
DKIM_TABLE = "dkim_keys"
# Each zone's serial and content digest: both masters of a data centre, and a master promoted in
# the other one, serve the serial the writer gave (mailnode/domains.py says why).
SERIALS_TABLE = "zone_serials"
# Each zone's DNSSEC key (mailnode/dnssec.py): made once by the writer, the same for every master.
DNSSEC_TABLE = "dnssec_keys"
# rspamd's keys of the further domains: a directory of their own, which mailcluster-domains
# empties of keys it no longer knows (the cluster's own key lives beside it, the plan's).
DKIM_DIR = "/var/lib/rspamd/dkim/hosted"
SELECTOR_MAP = f"{DKIM_DIR}/selectors.map"
# BIND's side on a master: all of it made from the database (serials are Unix time), so on the
# OS disk beside the plan's zone body, and in place before named first starts (the volume's
# switch starts it: storage.py), since named.conf.local includes hosted.conf.
ZONE_DIR = "/etc/bind/mailcluster/hosted"
HOSTED_CONF = "/etc/bind/mailcluster/hosted.conf"
# RFC 9432 catalog zone: never delegated (.invalid), only transferred between our servers.
CATALOG = "catalog.mailcluster.invalid"
CATALOG_FILE = "/etc/bind/mailcluster/catalog.db"
# A secondary's copies, written by named: beside the main zone's copy (bind.py's ZONE_DIR).
CATALOG_SECONDARY_FILE = "/var/lib/bind/mailcluster/catalog.db.secondary"
# Where a secondary keeps the member zones the catalog made (text, as the main zone's copy).
CATZ_DIR = "/var/lib/bind/mailcluster/catz"
SYNC_EVERY_S = 60
SYNC_TIMEOUT_S = 50
CONFIG_STEP = "domains.config"
DIRS_STEP = "domains.dirs"
TABLE_STEP = "domains.table"
INIT_STEP = "domains.init"
SYNC_STEP = "domains.sync"


def hosted_records(ctx: HostContext) -> list[DnsRecord]:
    """The records every further domain's zone has (its SOA and DKIM key are added on the node):
    delegated to the cluster's name servers, mail to the cluster's host, the same senders in SPF,
    DMARC and TLS reports to the postmaster (authorised in the main zone: topology), and the
    client SRV records (RFC 6186) pointing at the cluster's host names."""
    topo = ctx.topology
    records = [DnsRecord("@", "NS", f"{name}.") for name, _ in topo.name_servers()]
    records += topo.hosted_mail_records()
    records += autoconfig.srv_records(topo)
    return records


def signs_own_zone(ctx: HostContext) -> bool:
    """Whether the cluster's own zone is signed: ``dnssec``, unless Linode's name servers serve
    it too (``linodeSecondaryDns``): they serve no DNSSEC, and a DS at the registrar would make
    their answers bogus for every validating resolver (linode/docs#2453). The further domains'
    zones are not on Linode's servers and are signed either way."""
    return ctx.config.dnssec and not ctx.config.linode_secondary_dns


def domains_config(ctx: HostContext) -> dict[str, Any]:
    """/etc/mailcluster/domains.json: everything mailnode.domains needs (it never imports
    ``cluster``)."""
    topo, node = ctx.topology, ctx.node
    master = topo.is_dns_master(node)
    return {
        "node": node.name,
        "main_domain": topo.domain,
        "is_dns_master": master,
        "mysql": ["mariadb", "--protocol=socket", "-uroot"],
        "role_script": ROLE_SCRIPT,
        "db": DB,
        "dkim_table": DKIM_TABLE,
        "zone_serials_table": SERIALS_TABLE,
        "postfixadmin_db": mariadb.POSTFIXADMIN_DB,
        "dkim_dir": DKIM_DIR,
        "selector_map": SELECTOR_MAP,
        "key_group": "_rspamd",
        "zone": {
            **topo.soa_values(),
            "records": [[r.name, r.type, r.value] for r in hosted_records(ctx)],
        },
        "zone_dir": ZONE_DIR,
        "hosted_conf": HOSTED_CONF,
        "catalog": CATALOG,
        "catalog_file": CATALOG_FILE,
        "notify": [topo.mesh_address(n) for n in topo.dns_slaves],
        "bind_group": "bind",
        "named_check": ["named-checkconf", "-z", "/etc/bind/named.conf"],
        "named_reload": ["rndc", "reload"],
        "named_running": ["rndc", "status"],
        "name_servers": [f"{name}." for name, _ in topo.name_servers()],
        "sync_every_s": SYNC_EVERY_S,
        "named_zones_url": f"http://127.0.0.1:{ports.BIND_STATS_PORT}/json/v1/zones",
        "dnssec": ctx.config.dnssec,
        "dnssec_table": DNSSEC_TABLE,
        "named_address": "127.0.0.1",
        # The cluster's own zone is signed on the masters too: from the plan's file into the
        # one named serves there (bind.py, which imports this module).
        "main_zone_signed": signs_own_zone(ctx),
        "main_zone_file": bindpaths.zone_file(topo.domain) if master else "",
        "main_signed_file": bindpaths.signed_file(topo.domain) if master else "",
    }


def steps(ctx: HostContext) -> list[Step]:
    conf = ctx.literal_file(CONFIG, json.dumps(domains_config(ctx), indent=1) + "\n")
    command = nodepkg.entry_point(ctx, COMMAND, "domains", after=(conf, ROLE_SCRIPT_STEP))
    dirs = script_step(
        DIRS_STEP,
        # The keys' directory: rspamd reads it, nobody else (the keys are secrets).
        f"""if [ ! -d {DKIM_DIR} ]; then
  install -d -m 0750 -o root -g _rspamd {DKIM_DIR}
  echo "{CHANGED_MARK} {DKIM_DIR}"
fi
if [ ! -e {SELECTOR_MAP} ]; then
  install -m 0644 /dev/null {SELECTOR_MAP}
  echo "{CHANGED_MARK} {SELECTOR_MAP}"
fi
""",
        after=(PACKAGES_STEP,),
    )
    out: list[Step] = [conf, command, dirs]
    if ctx.topology.initialises_database(ctx.node):
        out.append(
            script_step(
                TABLE_STEP,
                f"""{ROLE_SCRIPT} is-writer || exit 0
q="SELECT COUNT(*) FROM information_schema.tables WHERE table_schema='{DB}'"
q="$q AND table_name IN ('{DKIM_TABLE}', '{SERIALS_TABLE}', '{DNSSEC_TABLE}')"
q="$q UNION ALL SELECT COUNT(*) FROM information_schema.columns WHERE table_schema='{DB}'"
q="$q AND table_name='{SERIALS_TABLE}' AND column_name='signed'"
have=$(mariadb --protocol=socket -uroot -N -B -e "$q" 2>/dev/null | tr '\n' ' ' || true)
[ "$have" = "3 1 " ] && exit 0
{SCRIPT} table-sql | mariadb --protocol=socket -uroot
echo "{CHANGED_MARK} {DB}.{DKIM_TABLE} {DB}.{SERIALS_TABLE} {DB}.{DNSSEC_TABLE}"
""",
                after=(mariadb.USERS_STEP, ROLE_SCRIPT_STEP, command),
            )
        )
    out += units.periodic(
        ctx,
        COMMAND,
        f"{SCRIPT} sync",
        description="mailcluster: every mail domain's DKIM key and zone, from the database",
        every_s=SYNC_EVERY_S,
        timeout_s=SYNC_TIMEOUT_S,
        after=(PACKAGES_STEP, command, dirs),
    )
    return out


def init_step(after: Sequence[StepRef], watch: Sequence[StepRef]) -> Step:
    """The files a DNS master's BIND configuration names, empty when missing (bind.py runs it
    before it checks and loads the configuration)."""
    return script_step(INIT_STEP, f"{SCRIPT} init\n", after=(COMMAND_STEP, *after), watch=watch)


def sync_step(after: Sequence[StepRef], watch: Sequence[StepRef]) -> Step:
    """This node follows the database now (bind.py adds it after named's reload; ``watch``: a
    promotion or a change of the shared records re-runs it)."""
    return script_step(
        SYNC_STEP,
        f"{SCRIPT} sync\n",
        after=(COMMAND_STEP, DIRS_STEP, "rspamd.reload", mariadb.SERVICE_STEP, *after),
        watch=watch,
    )
