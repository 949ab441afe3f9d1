"""Postfix Admin against a real MariaDB (loopback, unusual port, stopped after): the rendered
config.local.php lets Postfix Admin's own upgrade.php create its schema, the plan's accounts
SQL gives it the rights it needs, and pfa-mailbox.php (behind mailcluster-mailbox) creates the
domain and a mailbox whose password Dovecot verifies as SHA512-CRYPT. Roundcube's Debian SQL
loads too."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rendertools import in_base

from cluster.hostcontext import HostContext
from cluster.hostplan import build_host_plan
from cluster.lab.checkroot import CheckRoot, terminate
from cluster.material import ClusterSecrets
from cluster.services import apache, mariadb, postfixadmin
from cluster.topology import Topology

pytestmark = pytest.mark.checkers

PORT = 24306 + os.getpid() % 500


@pytest.fixture
def db(checkroot: CheckRoot, tmp_path: Path) -> Iterator[Path]:
    data, sock = tmp_path / "data", tmp_path / "sock"
    installed = in_base(
        "mariadb-install-db", "--no-defaults", f"--datadir={data}", "--user=root",
        "--auth-root-authentication-method=socket",
    )  # fmt: skip
    assert installed.returncode == 0, installed.stdout + installed.stderr
    proc = checkroot.popen(
        ["mariadbd", "--no-defaults", "--user=root", f"--datadir={data}", f"--socket={sock}",
         f"--port={PORT}", "--bind-address=127.0.0.1", "--skip-name-resolve",
         "--log-bin=binlog", "--server-id=1", "--binlog-format=ROW",
         f"--log-error={tmp_path}/error.log", f"--pid-file={tmp_path}/pid"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(300):
            if in_base("mariadb-admin", f"--socket={sock}", "ping").returncode == 0:
                break
            time.sleep(0.1)
        yield sock
    finally:
        terminate(proc)


def sql(sock: Path, query: str = "", stdin: str | None = None) -> str:
    args = ["mariadb", f"--socket={sock}", "-uroot", "-N", "-B"] + (["-e", query] if query else [])
    proc = in_base(*args, input=stdin)
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, args, proc.stdout, proc.stderr)
    return proc.stdout.strip()


def test_schema_domain_and_mailbox(
    db: Path,
    checkroot: CheckRoot,
    topologies: dict[str, Topology],
    secrets: ClusterSecrets,
    tmp_path: Path,
) -> None:
    topo = topologies["dc1"]
    ctx = HostContext(topo, topo.node("dc1-svr1"), secrets, "lab")
    sql(db, stdin=mariadb.users_sql(ctx))
    plan = build_host_plan(topo, "dc1-svr1", secrets, "lab")
    rendered = {f.path: f.content for f in plan.files}

    # A private copy of the base's Postfix Admin with the rendered config.local.php; only the
    # port differs (the test's server is not on 3306). Its absolute links point into the base's
    # /etc and /var: the copy gets the files themselves instead (never this machine's). Relative
    # links out of the tree (Debian 13's lib/smarty/libs -> ../../../php/smarty4) point at the
    # same place in the base, where php runs.
    installed = Path("/usr/share/postfixadmin")
    root = tmp_path / "postfixadmin"
    shutil.copytree(checkroot.path(str(installed)), root, symlinks=True)
    for link in [p for p in root.rglob("*") if p.is_symlink()]:
        target = Path(os.readlink(link))
        if target.is_absolute():
            link.unlink()
            continue
        in_base_path = Path(os.path.normpath(installed / link.parent.relative_to(root) / target))
        if not in_base_path.is_relative_to(installed):
            link.unlink()
            link.symlink_to(in_base_path)
    shutil.copy(checkroot.path("/etc/postfixadmin/config.inc.php"), root / "config.inc.php")
    shutil.copy(checkroot.path("/etc/postfixadmin/dbconfig.inc.php"), root / "dbconfig.inc.php")
    (root / "templates_c").mkdir(exist_ok=True)
    local = rendered[postfixadmin.CONFIG].replace(
        "$CONF['database_port'] = '3306';", f"$CONF['database_port'] = '{PORT}';"
    )
    assert f"'{PORT}'" in local
    (root / "config.local.php").write_text(local)

    upgrade = in_base("php", "upgrade.php", cwd=root / "public")
    assert upgrade.returncode == 0, upgrade.stdout[-2000:] + upgrade.stderr
    # PHP 8.4 (Debian 13) runs Postfix Admin 3.3.15 without a warning or a deprecation notice.
    assert upgrade.stderr == "", upgrade.stderr
    notices = re.findall(r"\b(?:Warning|Deprecated|Notice|Fatal error)\b.*", upgrade.stdout)
    assert not notices, notices
    version = sql(db, "SELECT value FROM postfixadmin.config WHERE name='version'")
    assert version.isdigit() and int(version) >= 1800, upgrade.stdout[-2000:]
    tables = sql(db, "SHOW TABLES FROM postfixadmin").split()
    assert {"domain", "mailbox", "alias", "quota2"} <= set(tables)

    helper = tmp_path / "pfa-mailbox.php"
    helper.write_text(rendered[postfixadmin.MAILBOX_PHP])
    env = {"PFA_ROOT": str(root)}

    def pfa(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return in_base("php", str(helper), *args, cwd=root / "public", env=env, input=stdin)

    first = pfa("domain-add", topo.domain)
    assert first.returncode == 0 and "mailcluster: changed" in first.stdout, first.stderr
    again = pfa("domain-add", topo.domain)
    assert again.returncode == 0 and "mailcluster: changed" not in again.stdout

    password = "correct horse battery"
    added = pfa("add", f"alice@{topo.domain}", "100", "Alice", stdin=password + "\n")
    assert added.returncode == 0, added.stderr
    row = sql(db, "SELECT password, maildir, quota FROM postfixadmin.mailbox")
    hashed, maildir, quota = row.split("\t")
    assert hashed.startswith("{SHA512-CRYPT}$6$")
    assert maildir == f"{topo.domain}/alice/"
    assert quota == str(100 * 1048576)
    assert password not in row
    verify = in_base("doveadm", "pw", "-t", hashed, "-p", password)
    assert verify.returncode == 0 and "(verified)" in verify.stdout + verify.stderr
    # Refusals must be the helper's own, not any failure: a PHP fatal error or a missing
    # include also exits non-zero. Each writes nothing.
    duplicate = pfa("add", f"alice@{topo.domain}", "0", "", stdin=password)
    assert duplicate.returncode == 1 and duplicate.stdout == "", duplicate.stdout + duplicate.stderr
    assert duplicate.stderr == (
        f"mailcluster-mailbox: alice@{topo.domain} exists (use passwd to change its password)\n"
    )
    assert sql(db, "SELECT password FROM postfixadmin.mailbox") == hashed
    # The minimum length is the rendered config's rule (its regex and the number its message
    # states must agree); the text is Postfix Admin's own ($PALANG['password_too_short']), so
    # this proves its validation ran on our config.
    rule = re.search(r"'/\^\.\{(\d+),\}\$/' => 'password_too_short (\d+)'", local)
    assert rule and rule[1] == rule[2], local
    assert len("short") < int(rule[1])
    short = pfa("add", f"bob@{topo.domain}", "0", "", stdin="short")
    assert short.returncode == 1, short.stdout + short.stderr
    assert short.stderr.startswith("mailcluster-mailbox: "), short.stderr
    assert f"Password is too short - requires {rule[1]} characters" in short.stderr, short.stderr
    assert short.stdout == "", short.stdout
    assert sql(db, "SELECT username FROM postfixadmin.mailbox") == f"alice@{topo.domain}"

    # Roundcube's schema from Debian's own file, as the roundcube.schema step loads it.
    sql(db, "", stdin="USE roundcube;\n" + checkroot.path(apache.ROUNDCUBE_SQL).read_text())
    assert sql(db, "SHOW TABLES FROM roundcube LIKE 'system'") == "system"
