"""Graphs: mailgraph for mail, and a Bindgraph equivalent for DNS.

- mailgraph (Debian) follows /var/log/mail.log into RRDs in /var/lib/mailgraph; Apache serves its
  CGI (/usr/share/mailgraph/mailgraph.cgi) at /graphs/mailgraph.cgi.
- Bindgraph is not packaged for Debian 12. Instead ``/usr/local/sbin/mailcluster-bindgraph``
  (Perl, with the RRDs and JSON::PP modules mailgraph already pulls in) runs from cron every
  minute: it reads BIND's statistics channel (JSON, http://127.0.0.1:8053/json/v1/server, set
  up by the bind service), stores the query counters by type (qtypes) and by result (rcodes) as
  DERIVE data sources in /var/lib/mailcluster/bindgraph/*.rrd, and draws day/week/month/year
  PNGs into /var/www/graphs/, which /graphs/index.html shows next to the mailgraph link.
Graphs are per node (each node's own traffic), so /var/www/graphs is left out of the docroot
sync.
"""

from __future__ import annotations

from cluster.hostcontext import HostContext
from cluster.plan import PACKAGES_STEP, Step, reload_or_start, script_step

PACKAGES: tuple[str, ...] = ("mailgraph", "rrdtool", "librrds-perl", "perl", "cron")

BINDGRAPH = "/usr/local/sbin/mailcluster-bindgraph"


def steps(ctx: HostContext) -> list[Step]:
    default = ctx.file("/etc/default/mailgraph")
    bindgraph = ctx.file(BINDGRAPH, mode="0755")
    return [
        default,
        bindgraph,
        ctx.file("/etc/cron.d/mailcluster-bindgraph", after=(PACKAGES_STEP, bindgraph)),
        # mailgraph has no reload: restart it when its settings changed, start it when stopped.
        script_step(
            "mailgraph.service",
            reload_or_start("mailgraph", restart=True),
            watch=(default,),
        ),
    ]
