"""Graphs: mailgraph for mail, and a Bindgraph equivalent for DNS.

- mailgraph (Debian) follows /var/log/mail.log into RRDs in /var/lib/mailgraph; Apache serves its
  CGI (/usr/share/mailgraph/mailgraph.cgi) at /graphs/mailgraph.cgi. Debian ships its unit
  disabled and without /etc/default/mailgraph's settings (only the old init script read them):
  a drop-in sets its options, and the plan enables it.
- Bindgraph is not packaged for Debian. Instead ``/usr/local/sbin/mailcluster-bindgraph``
  (Perl, with the RRDs and JSON::PP modules mailgraph already pulls in) runs every minute
  (``mailcluster-bindgraph.timer``): it reads BIND's statistics channel (JSON,
  http://127.0.0.1:8053/json/v1/server, set up by the bind service), stores the query counters
  by type (qtypes) and by result (rcodes) as DERIVE data sources in
  /var/lib/mailcluster/bindgraph/*.rrd, and draws day/week/month/year PNGs into
  /var/www/graphs/, which /graphs/index.html shows next to the mailgraph link.
Graphs are per node (each node's own traffic), so /var/www/graphs is left out of the docroot
sync.
"""

from __future__ import annotations

from cluster.hostcontext import HostContext
from cluster.plan import Step, reload_or_start, script_step, start_at_boot
from cluster.services import units

PACKAGES: tuple[str, ...] = ("mailgraph", "rrdtool", "librrds-perl", "perl")

BINDGRAPH = "/usr/local/sbin/mailcluster-bindgraph"
BINDGRAPH_UNIT = "mailcluster-bindgraph"  # .service and .timer
DROPIN = "/etc/systemd/system/mailgraph.service.d/mailcluster.conf"


def steps(ctx: HostContext) -> list[Step]:
    dropin = ctx.file(DROPIN)
    bindgraph = ctx.file(BINDGRAPH, mode="0755")
    return [
        dropin,
        bindgraph,
        *units.periodic(
            ctx,
            BINDGRAPH_UNIT,
            BINDGRAPH,
            description="mailcluster bindgraph: BIND's query counters into graphs",
            on_calendar="minutely",
            after=(bindgraph,),
        ),
        # mailgraph has no reload: restart it when its settings changed, start it when stopped.
        script_step(
            "mailgraph.service",
            "systemctl daemon-reload\n"
            + start_at_boot("mailgraph")
            + reload_or_start("mailgraph", restart=True),
            watch=(dropin,),
        ),
    ]
