"""What Linode sets up only when it creates a node, managed by the plan from then on.

Linode writes root's ``authorized_keys`` and password at creation only, and a change of either
input would replace the node (``cluster/pulumi/change_rules.py``), so the Instance ignores them
after creation and these steps keep them in step with ``sshKeys`` and ``rootPassword``. With
Network Helper off (Linode's failover guide asks for it), nothing configures the node's address
on its VPC interface either: on Linode a step adds it (the lab's network gives it).
"""

from __future__ import annotations

import ipaddress
import shlex

from cluster.hostcontext import HostContext
from cluster.plan import CHANGED_MARK, Step, script_step
from cluster.topology import VPC_INTERFACE

PACKAGES: tuple[str, ...] = ()  # coreutils, passwd (chpasswd) and perl-base are essential

AUTHORIZED_KEYS = "/root/.ssh/authorized_keys"
PRIVATE_IF = "/etc/network/interfaces.d/mailcluster-private"

# The whole file from stdin, atomically, 0600 in a 0700 directory (install -d would loosen an
# existing directory's mode, so the directory is only created here).
KEYS_SCRIPT = f"""f={AUTHORIZED_KEYS}
d=$(dirname "$f")
[ -d "$d" ] || install -d -m 0700 "$d"
tmp=$(mktemp "$d/.authorized_keys.mc-XXXXXX")
trap 'rm -f "$tmp"' EXIT
cat > "$tmp"
chmod 0600 "$tmp"
if [ -f "$f" ] && cmp -s "$tmp" "$f" && [ "$(stat -c %a "$f")" = 600 ]; then
  exit 0
fi
mv -f "$tmp" "$f"
trap - EXIT
echo "{CHANGED_MARK} $f"
"""

# The password arrives on stdin and only ever passes through bash builtins (printf) into pipes:
# never an argument, never printed. crypt(3) of the password with the current hash as salt
# gives the current hash back exactly when it matches, whatever the scheme (yescrypt, SHA-512),
# so a second run changes nothing. Empty stdin: no rootPassword, Linode's random one stays.
PASSWORD_SCRIPT = f"""pw=$(cat)
[ -n "$pw" ] || exit 0
case "$pw" in *$'\\n'*) echo "rootPassword must be a single line" >&2; exit 1 ;; esac
current=$(getent shadow root | cut -d: -f2)
if printf '%s\\n%s\\n' "$current" "$pw" | perl -e \\
    'chomp(my $h = <STDIN>); chomp(my $p = <STDIN>); my $c = crypt($p, $h);
     exit(defined $c && $c eq $h ? 0 : 1)'; then
  exit 0
fi
printf 'root:%s\\n' "$pw" | chpasswd
echo "{CHANGED_MARK} root password"
"""


def _authorized_keys(ctx: HostContext) -> str:
    lines = ["# managed by mailcluster (sshKeys); edits are overwritten", *ctx.config.ssh_keys]
    return "\n".join(lines) + "\n"


def _private_address_script(address: str, prefixlen: int) -> str:
    """Add the node's VPC address to the VPC interface now and at boot (the subnet's prefix,
    no gateway: the default route stays on the public interface). A node whose Network Helper
    is on has it configured by Network Helper: an address already there while our stanza does
    not exist is someone else's, and a stanza of ours would add it twice at boot."""
    dev = VPC_INTERFACE
    cidr = shlex.quote(f"{address}/{prefixlen}")
    has = f"ip -o -4 addr show dev {dev} | grep -qF ' inet {address}/'"
    return f"""conf={PRIVATE_IF}
if [ ! -e "$conf" ] && {has}; then
  exit 0
fi
want="# managed by mailcluster; edits are overwritten
auto {dev}
iface {dev} inet static
    address "{cidr}
if [ "$(cat "$conf" 2>/dev/null)" != "$want" ]; then
  install -d -m 0755 "$(dirname "$conf")"
  printf '%s\\n' "$want" > "$conf"
  echo "{CHANGED_MARK} $conf"
fi
ip link set {dev} up
if ! {has}; then
  ip addr add {cidr} dev {dev}
  echo "{CHANGED_MARK} {address} on {dev}"
fi
"""


def steps(ctx: HostContext) -> list[Step]:
    out = [
        script_step("access.authorized-keys", KEYS_SCRIPT, stdin=_authorized_keys(ctx)),
        script_step(
            "access.root-password", PASSWORD_SCRIPT, stdin=ctx.secrets.root_password, secret=True
        ),
    ]
    if ctx.platform == "linode":
        prefixlen = ipaddress.IPv4Network(ctx.config.vpc_subnet).prefixlen
        out.append(
            script_step(
                "access.private-address",
                _private_address_script(ctx.node.private_ipv4, prefixlen),
            )
        )
    return out
