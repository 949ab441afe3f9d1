"""Web docroot: /var/www/html pushed from the active node to the three others, over the mesh,
with least privilege.

- Receiving: no daemon of its own. sshd lets the unprivileged user ``websync`` in with one key
  only, from the other nodes' mesh addresses only (``from=``), and only to run Debian's
  ``rrsync -wo /var/www/html`` (``command=``, ``restrict``: no shell, no forwarding, no pty):
  rsync can write below the docroot, which ``websync`` owns, and nowhere else; nothing as root.
  The authorized_keys file and its directories are root's: ``websync`` cannot widen them.
- Sending: every minute a timer (``mailcluster-websync.timer``) runs
  /usr/local/sbin/mailcluster-websync on every node; it does nothing unless this node is the
  active one (``mailcluster-role is-writer``), and then pushes
  with ``rsync --delete`` over ssh to every other node's mesh address, with the key in
  /etc/mailcluster/secrets/websync (0600; a cluster secret, Pulumi's ``tls.PrivateKey``).
- Host keys are not pinned: the mesh address already proves the peer (WireGuard accepts a
  packet from an inner address only from the holder of that node's key), and a rebuilt node
  has new host keys that nobody could have pinned.

The docroot is the only content a user puts on the web server; the MTA-STS policy
(/var/www/mta-sts) comes from the plan on every node, the ACME webroot matters only where
certbot runs, and the graphs are per node. The old rsync daemon (root, password, plaintext,
writable from the network) is stopped, kept from starting at boot, and its files removed
(Debian's rsync.service starts only with /etc/rsyncd.conf, which goes too).
"""

from __future__ import annotations

import shlex

from cluster.hostcontext import HostContext
from cluster.plan import CHANGED_MARK, PACKAGES_STEP, Step, script_step, start_at_boot
from cluster.services import units
from cluster.services.role import ROLE_SCRIPT_STEP

# python3: Debian's rrsync is a Python script.
PACKAGES: tuple[str, ...] = ("rsync", "openssh-client", "openssh-server", "python3", "util-linux")

WEBSYNC = "/usr/local/sbin/mailcluster-websync"
WEBSYNC_UNIT = "mailcluster-websync"  # .service and .timer
DOCROOT = "/var/www/html"
USER = "websync"
HOME = "/var/lib/mailcluster-websync"
AUTHORIZED_KEYS = f"{HOME}/.ssh/authorized_keys"
CLIENT_KEY = "/etc/mailcluster/secrets/websync"
# Touched by mailcluster-websync after a push that reached every node: its mtime is the web
# sync's age for mailcluster-health.
WEBSYNC_STAMP = "/var/lib/mailcluster/websync.ok"
USER_STEP = "sync.user"
# What the rsync daemon of earlier versions left: stopped, disabled, removed.
OLD_DAEMON_FILES = ("/etc/rsyncd.conf", "/etc/rsyncd.secrets", "/etc/mailcluster/secrets/rsync")


def authorized_keys(ctx: HostContext) -> str:
    topo, node = ctx.topology, ctx.node
    senders = ",".join(topo.mesh_address(n) for n in topo.nodes if n.name != node.name)
    options = f'restrict,from="{senders}",command="/usr/bin/rrsync -wo {DOCROOT}"'
    return (
        "# managed by mailcluster; edits are overwritten\n"
        f"{options} {ctx.secrets.websync_public_key.strip()} mailcluster-websync\n"
    )


def _user_script() -> str:
    return f"""if ! getent passwd {USER} >/dev/null; then
  # A shell (sshd runs the forced command through it), no password: the key is the only way in.
  useradd --system --home-dir {HOME} --no-create-home --shell /bin/sh --user-group {USER}
  echo "{CHANGED_MARK} user {USER}"
fi
for d in {HOME} {HOME}/.ssh; do
  if [ ! -d "$d" ] || [ "$(stat -c %U:%a "$d")" != root:755 ]; then
    install -d -m 0755 -o root -g root "$d"
    echo "{CHANGED_MARK} $d"
  fi
done
if [ ! -d {DOCROOT} ] || [ "$(stat -c %U:%G "{DOCROOT}")" != {USER}:{USER} ]; then
  install -d -m 0755 {DOCROOT}
  chown -R {USER}:{USER} {DOCROOT}
  echo "{CHANGED_MARK} {DOCROOT} owned by {USER}"
fi
"""


def _retire_daemon_script() -> str:
    files = " ".join(shlex.quote(f) for f in OLD_DAEMON_FILES)
    return f"""if systemctl is-active --quiet rsync; then
  systemctl stop rsync
  echo "{CHANGED_MARK} rsync daemon stopped"
fi
{start_at_boot("rsync", enabled=False)}for f in {files}; do
  if [ -e "$f" ]; then
    rm -f "$f"
    echo "{CHANGED_MARK} removed $f"
  fi
done
"""


# sshd receives the pushes. A Linode runs it from its first boot; a host whose image has no host
# keys yet (the lab's base) gets them here, once, and the daemon started if it is not running.
SSHD_SCRIPT = f"""if ! ls /etc/ssh/ssh_host_*_key >/dev/null 2>&1; then
  ssh-keygen -A >/dev/null
  echo "{CHANGED_MARK} ssh host keys"
fi
if ! systemctl is-active --quiet ssh; then
  systemctl start ssh
  echo "{CHANGED_MARK} sshd started"
fi
"""


def steps(ctx: HostContext) -> list[Step]:
    user = script_step(USER_STEP, _user_script())
    keys = ctx.literal_file(AUTHORIZED_KEYS, authorized_keys(ctx), after=(user,))
    client = ctx.literal_file(CLIENT_KEY, ctx.secrets.websync_ssh_key, mode="0600", secret=True)
    websync = ctx.file(
        WEBSYNC,
        mode="0755",
        after=(PACKAGES_STEP, ROLE_SCRIPT_STEP),
        docroot=DOCROOT,
        user=USER,
        key=CLIENT_KEY,
        stamp=WEBSYNC_STAMP,
    )
    return [
        user,
        keys,
        script_step("sync.sshd", SSHD_SCRIPT, after=(keys,)),
        client,
        script_step("sync.retire-rsyncd", _retire_daemon_script(), after=(PACKAGES_STEP,)),
        websync,
        *units.periodic(
            ctx,
            WEBSYNC_UNIT,
            WEBSYNC,
            description="mailcluster web sync: push the docroot from the active node",
            on_calendar="minutely",
            after=(websync,),
        ),
    ]
