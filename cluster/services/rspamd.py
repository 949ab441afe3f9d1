"""rspamd: DKIM signing and spam filtering, as a milter for Postfix.

Why rspamd rather than OpenDKIM + SpamAssassin (both also in Debian): one daemon and one
milter instead of two (OpenDKIM plus spamass-milter in front of spamd), DKIM signing, DKIM/SPF/
DMARC/ARC checking and spam scoring in one pass, far less CPU per message than SpamAssassin's
Perl. Of its Redis-backed modules only Bayes is on, in Valkey (services/bayes.py); greylisting
and rate limits stay off (the Redis servers are named in the classifier's file alone).

No internet in the lab (and a cut-off data centre may have none): modules that only query
internet services (RBLs, fuzzy hashes, ASN lookups, phishing feeds) are disabled, and DNS
timeouts are short, so DNS-based checks (SPF, DKIM, DMARC) fail fast and just score nothing.

DKIM: selector ``mail`` (``topology.DKIM_SELECTOR``), the cluster's one key at
``/var/lib/rspamd/dkim/<domain>.mail.key`` on every node, so a takeover signs with the key that
DNS publishes.
"""

from __future__ import annotations

from cluster import ports
from cluster.hostcontext import HostContext
from cluster.plan import Step, reload_or_start, script_step
from cluster.render import render
from cluster.services import domains
from cluster.topology import DKIM_SELECTOR

PACKAGES: tuple[str, ...] = ("rspamd",)

LOCAL_D = "/etc/rspamd/local.d"
DKIM_DIR = "/var/lib/rspamd/dkim"
MILTER_BIND = "127.0.0.1:11332"
# The header the spam-to-Junk Sieve script tests (dovecot.py): "Yes" on mail scored at the Junk
# score (the "add header" action) or more; rspamd removes a copy the sender brought.
SPAM_HEADER = "X-Spam"
# The script says why, for whoever reads it on the host.
RESTART = (
    "# Restart, not reload: a reload re-binds changed worker sockets while the old workers hold\n"
    '# them ("Address already in use") and rspamd dies. A restart is no mail outage: Postfix\n'
    "# accepts without the milter while it is away (milter_default_action = accept).\n"
    "systemctl restart rspamd"
)
DISABLED_MODULES: dict[str, str] = {
    "rbl": "DNS blocklists: internet lookups, none reachable in the lab; a policy choice.",
    "fuzzy_check": "Queries rspamd.com's fuzzy storage over the internet.",
    "asn": "Queries asn.rspamd.com over DNS.",
    "phishing": "Downloads feeds from the internet.",
}


def dkim_key_path(domain: str) -> str:
    return f"{DKIM_DIR}/{domain}.{DKIM_SELECTOR}.key"


def steps(ctx: HostContext) -> list[Step]:
    domain = ctx.config.domain
    files = [
        ctx.literal_file(
            dkim_key_path(domain),
            ctx.secrets.dkim_private_key_pem,
            mode="0640",
            owner="root",
            group="_rspamd",
            secret=True,
        ),
        ctx.file(
            f"{LOCAL_D}/dkim_signing.conf",
            selector=DKIM_SELECTOR,
            key_path=dkim_key_path(domain),
            hosted_selector_map=domains.SELECTOR_MAP,
            hosted_key_path=f"{domains.DKIM_DIR}/$domain.$selector.key",
        ),
        ctx.file(f"{LOCAL_D}/worker-proxy.inc", milter_bind=MILTER_BIND),
        ctx.file(
            f"{LOCAL_D}/worker-controller.inc",
            mode="0640",
            group="_rspamd",
            secret=True,
            controller_password=ctx.secrets.rspamd_controller,
        ),
        ctx.file(
            f"{LOCAL_D}/classifier-bayes.conf",
            mode="0640",
            group="_rspamd",
            secret=True,
            valkey_port=ports.VALKEY_PORT,
            valkey_password=ctx.secrets.valkey,
        ),
        ctx.file(f"{LOCAL_D}/worker-normal.inc"),
        ctx.file(f"{LOCAL_D}/options.inc", local_addrs=["127.0.0.0/8", "::1"]),
        ctx.file(
            f"{LOCAL_D}/actions.conf",
            reject_score=ctx.config.spam_reject_score,
            add_header_score=ctx.config.spam_junk_score,
        ),
        ctx.file(f"{LOCAL_D}/milter_headers.conf", spam_header=SPAM_HEADER),
    ]
    for module, reason in DISABLED_MODULES.items():
        content = render(f"{LOCAL_D}/disabled-module.conf", **ctx.common(), reason=reason)
        files.append(ctx.literal_file(f"{LOCAL_D}/{module}.conf", content))
    reload = script_step(
        "rspamd.reload",
        reload_or_start(
            "rspamd",
            check="rspamadm configtest -q",
            restart=True,
            reload=RESTART,
        ),
        watch=files,
    )
    return [*files, reload]
