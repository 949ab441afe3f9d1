"""Apache over HTTPS: Roundcube at /, Postfix Admin at /postfixadmin/, graphs at /graphs/, and the
MTA-STS policy at https://mta-sts.<domain>/.well-known/mta-sts.txt.

The certificate is the data centre's (installed by the tls service at /etc/mailcluster/tls/).
Configuration is checked with ``apache2ctl -t`` before a reload; Apache is started when it is
not running. Roundcube's schema comes from Debian's own SQL file, loaded once on the master.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from cluster.config import StackConfig
from cluster.plan import CHANGED_MARK, Step, script_step
from cluster.services.heartbeat import ROLE_SCRIPT, ROLE_SCRIPT_STEP
from cluster.services.mariadb import USERS_STEP as DB_USERS_STEP

if TYPE_CHECKING:
    from cluster.hostplan import HostContext

PACKAGES: tuple[str, ...] = (
    "apache2",
    "libapache2-mod-php",
    "php-mysql",
    "roundcube",
    "roundcube-mysql",
    "roundcube-plugins",
)

TLS_DIR = "/etc/mailcluster/tls"
SITE = "/etc/apache2/sites-available/mailcluster.conf"
ROUNDCUBE_CONFIG = "/etc/roundcube/config.inc.php"
MTA_STS_POLICY = "/var/www/mta-sts/.well-known/mta-sts.txt"
MODULES = ("ssl", "rewrite", "headers", "cgi", "php8.2")
ROUNDCUBE_SQL = "/usr/share/roundcube/SQL/mysql.initial.sql"

# RFC 8461 section 3.2: max_age in seconds; a week or more once enforcing, a day while testing.
MTA_STS_MAX_AGE = {"enforce": 1209600, "testing": 86400, "none": 86400}


def mta_sts_policy(config: StackConfig) -> str:
    """The policy text (RFC 8461 3.2). It has no comment syntax, so no "managed by" header."""
    mode = config.mta_sts_mode
    return (
        "version: STSv1\n"
        f"mode: {mode}\n"
        f"mx: mail.{config.domain}\n"
        f"max_age: {MTA_STS_MAX_AGE[mode]}\n"
    )


def mta_sts_id(config: StackConfig) -> str:
    """The id of the _mta-sts TXT record: changes exactly when the policy text does."""
    return hashlib.sha256(mta_sts_policy(config).encode()).hexdigest()[:20]


def steps(ctx: HostContext) -> list[Step]:
    topo = ctx.topology
    aliases = [f"webmail.{topo.domain}", f"{ctx.node.dc}.{topo.domain}", ctx.node.fqdn]
    site = ctx.file(SITE, mail_host=topo.mail_host, aliases=aliases, tls_dir=TLS_DIR)
    roundcube = ctx.file(
        ROUNDCUBE_CONFIG,
        mode="0640",
        group="www-data",
        secret=True,
        db_password=ctx.secrets.db_roundcube,
        des_key=ctx.secrets.roundcube_des_key,
        mail_host=topo.mail_host,
        ca_file=f"{TLS_DIR}/ca.pem" if ctx.config.tls_mode == "selfsigned" else "",
    )
    policy = ctx.literal_file(MTA_STS_POLICY, mta_sts_policy(ctx.config))
    graphs = ctx.file("/var/www/graphs/index.html")
    mods = " ".join(MODULES)
    out: list[Step] = [
        site,
        roundcube,
        policy,
        graphs,
        script_step(
            "apache.enable",
            f"""out=$(a2enmod -q {mods} 2>&1; a2ensite -q mailcluster 2>&1;
  a2dissite -q 000-default 2>&1; a2disconf -q postfixadmin 2>&1) || {{ echo "$out" >&2; exit 1; }}
# a2enmod and friends print only when they changed something (and then ask for a reload).
if [ -n "$out" ]; then
  echo "{CHANGED_MARK} apache modules/sites: $(echo "$out" | tr '\\n' ' ')"
fi
""",
            after=(site.name,),
        ),
        script_step(
            "apache.reload",
            f"""apache2ctl -t 2>&1 | grep -v '^Syntax OK$' >&2 || true
apache2ctl -t >/dev/null 2>&1 || {{ echo "apache2ctl -t failed: not reloading" >&2; exit 1; }}
# Not `apache2ctl status`: it exits 0 with Apache down when no text browser is installed.
if pidof apache2 >/dev/null; then
  service apache2 reload >/dev/null
  echo "{CHANGED_MARK} apache2 reloaded"
else
  service apache2 start >/dev/null
  echo "{CHANGED_MARK} apache2 started"
fi
""",
            # The certificate files are the tls service's; a renewal reloads through its step.
            watch=(site.name, roundcube.name, "apache.enable"),
        ),
    ]
    if topo.is_dns_master(ctx.node):
        out.append(
            script_step(
                "roundcube.schema",
                f"""{ROLE_SCRIPT} is-writer || exit 0
has=$(mysql --protocol=socket -uroot -N -B -e "SHOW TABLES FROM roundcube LIKE 'system'")
if [ -z "$has" ]; then
  mysql --protocol=socket -uroot roundcube < {ROUNDCUBE_SQL}
  echo "{CHANGED_MARK} roundcube schema"
fi
""",
                after=(DB_USERS_STEP, ROLE_SCRIPT_STEP),
            )
        )
    return out
