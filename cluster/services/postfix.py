"""Postfix: virtual domains from Postfix Admin's tables, LMTP to Dovecot, authenticated submission.

- Maps are ``proxy:mysql:`` only (Postfix Admin's ``domain``, ``mailbox``, ``alias``,
  ``alias_domain`` tables; queries from Postfix Admin's DOCUMENTS/POSTFIX_CONF.txt), so nothing
  needs ``postmap`` and a change in Postfix Admin is live at once on whichever node serves mail.
- Port 25: postscreen (pregreet test; DNSBLs off unless ``DNSBL_SITES`` lists some), then smtpd.
  587 (STARTTLS required) and 465 (implicit TLS) take SASL AUTH from Dovecot, and an
  authenticated user may only use the sender addresses Postfix Admin gives them.
- Not an open relay: ``mynetworks`` is loopback only; relaying needs SASL.
- Postfix runs only on the node that serves mail: the role script (role.py) starts and stops it,
  so the reload step here reloads a running Postfix and never starts one, and the boot step
  keeps Postfix from starting by itself at boot (a rebooted standby would otherwise accept mail
  next to the active node). Debian 13's ``postfix.service`` is the default instance itself (no
  longer a wrapper around ``postfix@-.service``): it is the unit disabled and given the queue's
  mount requirement.
"""

from __future__ import annotations

from dataclasses import dataclass

from cluster.hostcontext import HostContext
from cluster.plan import CHANGED_MARK, Step, reload_or_start, script_step, start_at_boot
from cluster.render import render
from cluster.services import dovecot, mariadb, ratelimit, rspamd, srs, storage, tls

PACKAGES: tuple[str, ...] = ("postfix", "postfix-mysql")

# The read-only database user mariadb.py creates for Postfix.
DB_USER = "postfix"
MAP_DIR = "/etc/postfix/mysql"
MILTER = "inet:127.0.0.1:11332"
# Off by default: the lab has no internet, and blocking on someone else's list is a policy
# decision. Example: ("zen.spamhaus.org*3", "bl.spamcop.net*1").
DNSBL_SITES: tuple[str, ...] = ()
BOOT_STEP = "postfix.boot"
DATA_STEP = "postfix.data"
# The queue (acknowledged mail not yet delivered) and the chroot Postfix runs in. Dovecot's LMTP
# and auth sockets live in it too: Dovecot is restarted with Postfix when it moves.
QUEUE_DIR = storage.DataDir("postfix", "/var/spool/postfix")
# The forwarding pass (srs.py): which transport a recipient in another domain takes by sender,
# and the pass's header check (forwarded spam is discarded).
FORWARD_ROUTE = "forward_route.regexp"
FORWARD_CHECKS = "forward_checks.regexp"
MAIN_FILES = (
    "/etc/postfix/main.cf",
    "/etc/postfix/master.cf",
    "/etc/postfix/postscreen_access.cidr",
    f"/etc/postfix/{FORWARD_ROUTE}",
    f"/etc/postfix/{FORWARD_CHECKS}",
)


@dataclass(frozen=True)
class MysqlMap:
    name: str
    description: str
    query: str

    @property
    def path(self) -> str:
        return f"{MAP_DIR}/{self.name}.cf"

    @property
    def ref(self) -> str:
        # $config_directory, not /etc/postfix: checkers can then load a rendered copy.
        return f"proxy:mysql:${{config_directory}}/mysql/{self.name}.cf"


_ALIAS_DOMAIN = "alias_domain.alias_domain = '%d' AND alias_domain.active = '1'"
MAPS: tuple[MysqlMap, ...] = (
    MysqlMap(
        "virtual_domains",
        "Domains hosted here, including alias domains.",
        "SELECT domain FROM domain WHERE domain = '%s' AND backupmx = '0' AND active = '1' "
        "UNION SELECT alias_domain FROM alias_domain WHERE alias_domain = '%s' AND active = '1'",
    ),
    MysqlMap(
        "virtual_alias",
        "Aliases (Postfix Admin also stores each mailbox as an alias of itself).",
        "SELECT goto FROM alias WHERE address = '%s' AND active = '1'",
    ),
    MysqlMap(
        "virtual_alias_domain",
        "user@alias-domain -> the alias user@target-domain.",
        "SELECT goto FROM alias, alias_domain WHERE " + _ALIAS_DOMAIN + " AND alias.address = "
        "CONCAT('%u', '@', alias_domain.target_domain) AND alias.active = '1'",
    ),
    MysqlMap(
        "virtual_alias_domain_catchall",
        "Catch-all of an alias domain's target domain.",
        "SELECT goto FROM alias, alias_domain WHERE " + _ALIAS_DOMAIN + " AND alias.address = "
        "CONCAT('@', alias_domain.target_domain) AND alias.active = '1'",
    ),
    MysqlMap(
        "virtual_mailbox",
        "Mailboxes (the value is only tested for existence; Dovecot decides the path).",
        "SELECT maildir FROM mailbox WHERE username = '%s' AND active = '1'",
    ),
    MysqlMap(
        "virtual_alias_domain_mailbox",
        "user@alias-domain when user@target-domain is a mailbox.",
        "SELECT maildir FROM mailbox, alias_domain WHERE " + _ALIAS_DOMAIN + " AND "
        "mailbox.username = CONCAT('%u', '@', alias_domain.target_domain) "
        "AND mailbox.active = '1'",
    ),
    MysqlMap(
        "own_sender_domain",
        "Senders in our domains: their mail to other domains goes out as it is, not through "
        "the forwarding pass (srs.py).",
        "SELECT 'smtp:' FROM domain WHERE domain = '%d' AND active = '1' "
        "UNION SELECT 'smtp:' FROM alias_domain WHERE alias_domain = '%d' AND active = '1'",
    ),
    MysqlMap(
        "sender_login",
        "Who may send as an address: its mailbox, and the mailboxes an alias delivers to.",
        "SELECT username FROM mailbox WHERE username = '%s' AND active = '1' "
        "UNION SELECT goto FROM alias WHERE address = '%s' AND active = '1'",
    ),
)


def map_refs(*names: str) -> str:
    by_name = {m.name: m for m in MAPS}
    return ", ".join(by_name[n].ref for n in names)


# Overrides for 587 and 465: SASL required, and only as yourself.
# Dovecot's quota-status service (dovecot.py), relative to the queue directory as smtpd sees it
# in its chroot: a full mailbox is refused at RCPT with a 452, on port 25 and on submission.
QUOTA_POLICY = "unix:" + dovecot.QUOTA_STATUS_SOCKET.removeprefix("/var/spool/postfix/")
SUBMISSION_OPTIONS: tuple[str, ...] = (
    "smtpd_sasl_auth_enable=yes",
    "smtpd_tls_auth_only=yes",
    "smtpd_client_restrictions=permit_sasl_authenticated,reject",
    "smtpd_sender_restrictions=reject_non_fqdn_sender,reject_sender_login_mismatch,"
    "permit_sasl_authenticated,reject",
    "smtpd_relay_restrictions=permit_sasl_authenticated,reject",
    "smtpd_recipient_restrictions=reject_non_fqdn_recipient,"
    f"check_policy_service,{QUOTA_POLICY},permit_sasl_authenticated,reject",
    # The sending limit (ratelimit.py), asked at DATA with the message's recipient count: over
    # it, defer_if_permit answers 4xx for the whole message. Commas, not spaces, between the
    # restriction and its server: master.cf's -o takes one word.
    "smtpd_data_restrictions=reject_unauth_pipelining,"
    f"check_policy_service,{ratelimit.POLICY_SERVICE}",
    # A limiter or quota service that does not answer lets mail through (Postfix logs a
    # warning; Dovecot's LMTP checks the quota again at delivery).
    "smtpd_policy_service_default_action=DUNNO",
    "milter_macro_daemon_name=ORIGINATING",
)


def listen_addresses(vip: str, vip6: str | None) -> tuple[str, ...]:
    """master.cf's listener addresses: the shared IPs of both families (an IPv6 address in
    brackets, as master.cf writes it) and loopback."""
    return (vip, *((f"[{vip6}]",) if vip6 else ()), "127.0.0.1")


def steps(ctx: HostContext) -> list[Step]:
    topo = ctx.topology
    vip = topo.shared_ip(ctx.node.dc)
    vip6 = topo.shared_ipv6(ctx.node.dc)
    maps = {
        "virtual_mailbox_domains": map_refs("virtual_domains"),
        "virtual_alias_maps": map_refs(
            "virtual_alias", "virtual_alias_domain", "virtual_alias_domain_catchall"
        ),
        "virtual_mailbox_maps": map_refs("virtual_mailbox", "virtual_alias_domain_mailbox"),
        "smtpd_sender_login_maps": map_refs("sender_login"),
        # Recipients in other domains, by sender: ours go out directly, anyone else's copy is
        # a forward and takes the SRS pass (srs.py).
        "sender_dependent_default_transport_maps": map_refs("own_sender_domain")
        + f", regexp:${{config_directory}}/{FORWARD_ROUTE}",
    }
    main_cf = ctx.file(
        "/etc/postfix/main.cf",
        myhostname=topo.mail_host,
        mynetworks="127.0.0.0/8",
        inet_protocols="all" if vip6 else "ipv4",
        vip=vip,
        vip6=vip6 or "",
        message_size_limit=ctx.config.message_size_limit_mb * 1024 * 1024,
        maps=maps,
        tls_key=tls.KEY,
        tls_chain=tls.CHAIN,
        tls_ciphers=tls.MOZILLA_INTERMEDIATE_CIPHERS,
        dnsbl_sites=", ".join(DNSBL_SITES),
        quota_policy=QUOTA_POLICY,
        srs_reverse_map=srs.REVERSE_MAP,
    )
    files = [
        main_cf,
        ctx.file(
            "/etc/postfix/master.cf",
            listen_addresses=listen_addresses(vip, vip6),
            submission_options=SUBMISSION_OPTIONS,
            reinject_port=srs.REINJECT_PORT,
            srs_forward_map=srs.FORWARD_MAP,
            forward_checks=FORWARD_CHECKS,
        ),
        ctx.file("/etc/postfix/postscreen_access.cidr", cluster_addresses=topo.cluster_addresses),
        ctx.file(f"/etc/postfix/{FORWARD_ROUTE}", reinject_port=srs.REINJECT_PORT),
        ctx.file(f"/etc/postfix/{FORWARD_CHECKS}", spam_header=rspamd.SPAM_HEADER),
    ]
    for m in MAPS:
        content = render(
            "/etc/postfix/mysql-map.cf",
            **ctx.common(),
            description=m.description,
            db_user=DB_USER,
            db_password=ctx.secrets.db_postfix,
            db_name=mariadb.POSTFIXADMIN_DB,
            query=m.query,
        )
        # Postfix's proxymap reads maps as root, smtpd (as postfix) may: 0640 root:postfix.
        files.append(ctx.literal_file(m.path, content, mode="0640", group="postfix", secret=True))
    aliases_file = ctx.file("/etc/aliases", postmaster=ctx.config.postmaster, after=(main_cf,))
    files.append(aliases_file)
    aliases = script_step(
        "postfix.aliases",
        f"""if [ ! -e /etc/aliases.db ] || [ /etc/aliases -nt /etc/aliases.db ]; then
  newaliases
  echo "{CHANGED_MARK} /etc/aliases.db"
fi
""",
        after=(main_cf, aliases_file),
    )
    data = storage.data_steps(
        ctx,
        DATA_STEP,
        (QUEUE_DIR,),
        services=("postfix", "dovecot"),
        units=("postfix.service", "dovecot.service"),
        after=(*files, aliases, dovecot.RELOAD_STEP),
        # `postfix check` makes the queue's directories a Postfix that never ran lacks; queue
        # file names carry their inode number, so a copied queue is renamed to match
        # (postsuper(1) -s: "necessary after restoring a mail queue").
        fixup="postfix check && postsuper -s",
    )
    reload = script_step(
        "postfix.reload",
        reload_or_start(
            "postfix",
            check="""postfix check
postconf -n >/dev/null
# Only the serving node runs Postfix (the role script starts it): never start it here.""",
            running="postfix status >/dev/null 2>&1",
            start=False,
        ),
        watch=(*files, *tls.public_pair_steps(ctx)),
        after=(aliases, DATA_STEP),
    )
    return [*files, aliases, *data, reload, _boot_step()]


def _boot_step() -> Step:
    """Postfix never starts by itself at boot: only where mailcluster-role starts it."""
    return script_step(BOOT_STEP, start_at_boot("postfix", enabled=False))
