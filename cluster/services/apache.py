"""Apache over HTTPS: Roundcube at /, Postfix Admin at /postfixadmin/, graphs at /graphs/, the
MTA-STS policy (mta_sts.py) at https://mta-sts.<domain>/.well-known/mta-sts.txt, and mail client
autoconfiguration (autoconfig.py) on autoconfig.<domain> and autodiscover.<domain>.

The certificate is the data centre's (installed by the tls service at ``tls.TLS_DIR``).
Configuration is checked with ``apache2ctl -t`` before a reload; Apache is started when it is
not running. Roundcube's schema comes from Debian's own SQL file, loaded once on the master.
"""

from __future__ import annotations

from cluster import ports
from cluster.hostcontext import HostContext
from cluster.plan import CHANGED_MARK, Step, file_step_name, reload_or_start, script_step
from cluster.services import autoconfig, mariadb, mta_sts, tls
from cluster.services.role import ROLE_SCRIPT, ROLE_SCRIPT_STEP

PACKAGES: tuple[str, ...] = (
    "apache2",
    "libapache2-mod-php",
    "php-mysql",
    "roundcube",
    "roundcube-mysql",
    "roundcube-plugins",
)

SITE = "/etc/apache2/sites-available/mailcluster.conf"
ROUNDCUBE_CONFIG = "/etc/roundcube/config.inc.php"
# Roundcube's filters, vacation and forwarding (its managesieve plugin, in roundcube-plugins).
MANAGESIEVE_CONFIG = "/etc/roundcube/plugins/managesieve/config.inc.php"
# libapache2-mod-php is Debian 13's PHP 8.4: its module is named after the version.
PHP_MODULE = "php8.4"
MODULES = ("ssl", "rewrite", "headers", "cgi", PHP_MODULE)
ROUNDCUBE_SQL = "/usr/share/roundcube/SQL/mysql.initial.sql"
ENABLE_STEP = "apache.enable"
ROUNDCUBE_SCHEMA_STEP = "roundcube.schema"


def steps(ctx: HostContext) -> list[Step]:
    topo = ctx.topology
    aliases = [f"webmail.{topo.domain}", f"{ctx.node.dc}.{topo.domain}", ctx.node.fqdn]
    site = ctx.file(
        SITE,
        mail_host=topo.mail_host,
        aliases=aliases,
        tls_dir=tls.TLS_DIR,
        mta_sts_root=mta_sts.WEBROOT,
        autoconfig=autoconfig.site_values(ctx.config),
    )
    roundcube = ctx.file(
        ROUNDCUBE_CONFIG,
        mode="0640",
        group="www-data",
        secret=True,
        db_password=ctx.secrets.db_roundcube,
        des_key=ctx.secrets.roundcube_des_key,
        mail_host=topo.mail_host,
        ca_file=tls.CA if ctx.config.tls_mode == "selfsigned" else "",
    )
    managesieve = ctx.file(
        MANAGESIEVE_CONFIG,
        mail_host=topo.mail_host,
        managesieve_port=ports.MANAGESIEVE_PORT,
        ca_file=tls.CA if ctx.config.tls_mode == "selfsigned" else "",
    )
    graphs = ctx.file("/var/www/graphs/index.html")
    mods = " ".join(MODULES)
    enable = script_step(
        ENABLE_STEP,
        f"""out=$(a2enmod -q {mods} 2>&1; a2ensite -q mailcluster 2>&1;
  a2dissite -q 000-default 2>&1; a2disconf -q postfixadmin 2>&1) || {{ echo "$out" >&2; exit 1; }}
# a2enmod and friends print only when they changed something (and then ask for a reload).
if [ -n "$out" ]; then
  echo "{CHANGED_MARK} apache modules/sites: $(echo "$out" | tr '\\n' ' ')"
fi
""",
        after=(site,),
    )
    out: list[Step] = [
        site,
        roundcube,
        managesieve,
        graphs,
        enable,
        script_step(
            "apache.reload",
            reload_or_start(
                "apache2",
                check="""apache2ctl -t 2>&1 | grep -v '^Syntax OK$' >&2 || true
apache2ctl -t >/dev/null 2>&1 || { echo "apache2ctl -t failed: not reloading" >&2; exit 1; }""",
            ),
            # The certificate files are the tls service's; a renewal reloads through its step.
            watch=(site, roundcube, managesieve, enable),
            # apache2ctl -t warns of a DocumentRoot that does not exist yet (AH00112).
            after=(file_step_name(autoconfig.CONFIG_XML),),
        ),
    ]
    if topo.initialises_database(ctx.node):
        db = mariadb.ROUNDCUBE_DB
        out.append(
            script_step(
                ROUNDCUBE_SCHEMA_STEP,
                f"""{ROLE_SCRIPT} is-writer || exit 0
has=$(mariadb --protocol=socket -uroot -N -B -e "SHOW TABLES FROM {db} LIKE 'system'")
if [ -z "$has" ]; then
  mariadb --protocol=socket -uroot {db} < {ROUNDCUBE_SQL}
  echo "{CHANGED_MARK} roundcube schema"
fi
""",
                after=(mariadb.USERS_STEP, ROLE_SCRIPT_STEP),
            )
        )
    return out
