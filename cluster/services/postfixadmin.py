"""Postfix Admin 3.3 (Debian): the web UI and the owner of the mail accounts schema.

- /etc/postfixadmin/config.local.php (secret: database password; mode 0640 root:www-data).
  Passwords are stored as ``{SHA512-CRYPT}$6$...`` (``php_crypt:SHA512::{SHA512-CRYPT}``: PHP's
  crypt(), no doveadm), which Dovecot verifies as scheme SHA512-CRYPT. Mailbox rows have
  ``maildir = 'domain/user/'`` (under /srv/mail/vmail) and ``quota`` in bytes (0 = unlimited).
- The setup password is a SHA512-CRYPT hash of the ``postfixadmin_setup`` secret with a salt
  derived from the secret, so the file is identical on every apply (PHP's password_verify
  accepts crypt() hashes).
- The schema is made by Postfix Admin itself: ``public/upgrade.php`` run by php-cli (it creates
  or upgrades the tables and records the version in its ``config`` table), on the master only.
- The mail domain is created once, on the master, through Postfix Admin's own DomainHandler.
- ``/usr/local/sbin/mailcluster-mailbox add USER@DOMAIN [--quota MB] [--name N]`` reads the
  password on stdin and drives Postfix Admin's MailboxHandler (postfixadmin-cli would need it on
  the command line, visible in ps).
"""

from __future__ import annotations

import hashlib
import hmac
import shlex

from cluster.hostcontext import HostContext
from cluster.plan import CHANGED_MARK, PACKAGES_STEP, Step, script_step
from cluster.services import mariadb
from cluster.services.role import ROLE_SCRIPT, ROLE_SCRIPT_STEP

PACKAGES: tuple[str, ...] = ("postfixadmin", "php-cli", "php-mysql", "util-linux")

CONFIG = "/etc/postfixadmin/config.local.php"
MAILBOX_CLI = "/usr/local/sbin/mailcluster-mailbox"
MAILBOX_PHP = "/usr/local/lib/mailcluster/pfa-mailbox.php"
SCHEMA_STEP = "postfixadmin.schema"
DOMAIN_STEP = "postfixadmin.domain"

_B64 = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _b64_from_24bit(b2: int, b1: int, b0: int, n: int) -> str:
    w = (b2 << 16) | (b1 << 8) | b0
    out = []
    for _ in range(n):
        out.append(_B64[w & 0x3F])
        w >>= 6
    return "".join(out)


def sha512_crypt(password: str, salt: str, rounds: int = 5000) -> str:
    """SHA512-CRYPT (``$6$``, Drepper's specification, as glibc and PHP's crypt() compute it)."""
    pw, s = password.encode(), salt[:16].encode()
    b = hashlib.sha512(pw + s + pw).digest()
    a = hashlib.sha512(pw + s)
    a.update((b * (len(pw) // 64 + 1))[: len(pw)])
    n = len(pw)
    while n:
        a.update(b if n & 1 else pw)
        n >>= 1
    da = a.digest()
    dp = hashlib.sha512(pw * len(pw)).digest()
    p = (dp * (len(pw) // 64 + 1))[: len(pw)]
    ds = hashlib.sha512(s * (16 + da[0])).digest()
    sb = (ds * (len(s) // 64 + 1))[: len(s)]
    c = da
    for i in range(rounds):
        h = hashlib.sha512(p if i & 1 else c)
        if i % 3:
            h.update(sb)
        if i % 7:
            h.update(p)
        h.update(c if i & 1 else p)
        c = h.digest()
    order = [(0, 21, 42), (22, 43, 1), (44, 2, 23), (3, 24, 45), (25, 46, 4), (47, 5, 26),
             (6, 27, 48), (28, 49, 7), (50, 8, 29), (9, 30, 51), (31, 52, 10), (53, 11, 32),
             (12, 33, 54), (34, 55, 13), (56, 14, 35), (15, 36, 57), (37, 58, 16), (59, 17, 38),
             (18, 39, 60), (40, 61, 19), (62, 20, 41)]  # fmt: skip
    enc = "".join(_b64_from_24bit(c[x], c[y], c[z], 4) for x, y, z in order)
    enc += _b64_from_24bit(0, 0, c[63], 2)
    rounds_part = "" if rounds == 5000 else f"rounds={rounds}$"
    return f"$6${rounds_part}{salt[:16]}${enc}"


def setup_password_hash(secret: str) -> str:
    """Deterministic: the salt is derived from the secret, so re-applies change nothing."""
    digest = hmac.new(secret.encode(), b"mailcluster postfixadmin setup salt", "sha256").digest()
    salt = "".join(_B64[x & 0x3F] for x in digest[:16])
    return sha512_crypt(secret, salt)


def steps(ctx: HostContext) -> list[Step]:
    config = ctx.file(
        CONFIG,
        mode="0640",
        group="www-data",
        secret=True,
        setup_password_hash=setup_password_hash(ctx.secrets.postfixadmin_setup),
        db_password=ctx.secrets.db_postfixadmin,
        postmaster=ctx.config.postmaster,
    )
    mailbox_php = ctx.file(MAILBOX_PHP)
    mailbox_cli = ctx.file(MAILBOX_CLI, mode="0755", after=(PACKAGES_STEP, mailbox_php))
    out: list[Step] = [config, mailbox_php, mailbox_cli]
    if not ctx.topology.initialises_database(ctx.node):
        return out
    version_sql = f"SELECT value FROM {mariadb.POSTFIXADMIN_DB}.config WHERE name='version'"
    out += [
        script_step(
            SCHEMA_STEP,
            f"""{ROLE_SCRIPT} is-writer || exit 0
version() {{ mariadb --protocol=socket -uroot -N -B -e "{version_sql}" 2>/dev/null || true; }}
before=$(version)
cd /usr/share/postfixadmin/public
log=$(runuser -u www-data -- php upgrade.php 2>&1) || {{ echo "$log" >&2; exit 1; }}
after=$(version)
if [ -z "$after" ]; then
  echo "$log" | sed 's/<[^>]*>//g' >&2
  echo "postfixadmin upgrade.php left no schema version" >&2
  exit 1
fi
if [ "$before" != "$after" ]; then
  echo "{CHANGED_MARK} postfixadmin schema $before -> $after"
fi
""",
            after=(mariadb.USERS_STEP, config, ROLE_SCRIPT_STEP),
            watch=(PACKAGES_STEP,),
        ),
        script_step(
            DOMAIN_STEP,
            f"""{ROLE_SCRIPT} is-writer || exit 0
{MAILBOX_CLI} domain-add {shlex.quote(ctx.config.domain)}
""",
            after=(SCHEMA_STEP, mailbox_cli, mailbox_php),
        ),
    ]
    return out
