"""Lab benchmark: how long the lab takes, and how fast the cluster moves mail end to end.

    python3 bench/lab.py [--skip-cold] [--messages 500] [--parallel 20] [--keep]

Prints, one line each (and all of it as JSON at the end):
- base build time, cold (a fresh debootstrap into a scratch cache; --skip-cold to skip);
- `up` time with the base cached (after `down`), and the plan apply time per host;
- the second `apply` time (nothing to do: every step's digest is unchanged);
- messages per second for N messages submitted in parallel from the client (587, STARTTLS,
  AUTH) until all are visible over IMAPS on the shared IP;
- the same for plain Postfix with hash maps delivering over LMTP to Dovecot (passwd-file), set
  up beside the cluster's daemons on the standby data centre's second node, and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cluster.lab import addresses as A  # noqa: E402

BASELINE_HOST = "dc2-svr2"
BASELINE_PORT_SMTP = 2587
BASELINE_PORT_IMAPS = 2993


def lab(*args: str, env: dict[str, str] | None = None, input: str | None = None) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "cluster.lab", "-q", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        input=input,
        env={**os.environ, **(env or {})},
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"lab {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def timed(*args: str, env: dict[str, str] | None = None) -> tuple[float, str]:
    t0 = time.monotonic()
    out = lab(*args, env=env)
    return time.monotonic() - t0, out


def clientlib(*args: str) -> dict[str, Any]:
    out = lab("client", "--", "python3", "-m", "cluster.lab.clientlib", *args)
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def per_host_apply(out: str) -> dict[str, float]:
    """From `apply dcN: ... (dc1-svr1 12.3s, dc1-svr2 11.0s)` lines."""
    times: dict[str, float] = {}
    for m in re.finditer(r"^apply dc\d: .*\((.*)\)$", out, re.M):
        for part in m.group(1).split(", "):
            host, secs = part.split()
            times[host] = float(secs.rstrip("s"))
    return times


BASELINE_SETUP = r"""
set -euo pipefail
addr=$1 smtp_port=$2 imaps_port=$3 user=$4
read -r password
id benchvmail >/dev/null 2>&1 \
  || useradd -r -M -d /var/lib/bench-vmail -s /usr/sbin/nologin benchvmail
install -d -o benchvmail -g benchvmail /var/lib/bench-vmail
install -d /etc/bench-postfix /etc/bench-dovecot /var/lib/bench-dovecot
install -d -o postfix -g postfix /var/lib/bench-postfix
if [ ! -f /etc/bench-dovecot/key.pem ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -subj /CN=bench -keyout /etc/bench-dovecot/key.pem -out /etc/bench-dovecot/cert.pem 2>/dev/null
fi
printf '%s:{PLAIN}%s\n' "$user" "$password" > /etc/bench-dovecot/users
chmod 0640 /etc/bench-dovecot/users; chgrp dovecot /etc/bench-dovecot/users
vuid=$(id -u benchvmail); vgid=$(id -g benchvmail)
cat > /etc/bench-dovecot/dovecot.conf <<EOF
instance_name = bench-dovecot
base_dir = /run/bench-dovecot
state_dir = /var/lib/bench-dovecot
protocols = imap lmtp
listen = $addr
log_path = syslog
syslog_facility = mail
ssl = required
ssl_cert = </etc/bench-dovecot/cert.pem
ssl_key = </etc/bench-dovecot/key.pem
mail_location = maildir:/var/lib/bench-vmail/%d/%n
first_valid_uid = $vuid
passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%u /etc/bench-dovecot/users
}
userdb {
  driver = static
  args = uid=$vuid gid=$vgid home=/var/lib/bench-vmail/%d/%n
}
service imap-login {
  inet_listener imap {
    port = 0
  }
  inet_listener imaps {
    port = $imaps_port
    ssl = yes
  }
}
service lmtp {
  unix_listener /var/spool/bench-postfix/private/bench-lmtp {
    user = postfix
    group = postfix
    mode = 0600
  }
}
service auth {
  unix_listener /var/spool/bench-postfix/private/bench-auth {
    user = postfix
    group = postfix
    mode = 0660
  }
}
EOF
domain=${user#*@}
cat > /etc/bench-postfix/main.cf <<EOF
compatibility_level = 3.6
queue_directory = /var/spool/bench-postfix
data_directory = /var/lib/bench-postfix
syslog_name = postfix-bench
myhostname = bench.$domain
mydestination =
inet_interfaces = $addr
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
virtual_mailbox_domains = $domain
virtual_mailbox_maps = hash:/etc/bench-postfix/vmailbox
virtual_transport = lmtp:unix:private/bench-lmtp
smtpd_tls_cert_file = /etc/bench-dovecot/cert.pem
smtpd_tls_key_file = /etc/bench-dovecot/key.pem
smtpd_tls_security_level = encrypt
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = dovecot
smtpd_sasl_path = private/bench-auth
smtpd_relay_restrictions = permit_sasl_authenticated, reject
smtpd_recipient_restrictions = permit_sasl_authenticated, reject
EOF
# Postfix's stock services, with only the benchmark's submission listener.
cat > /etc/bench-postfix/master.cf <<EOF
$smtp_port inet n - y - - smtpd
pickup    unix n - y 60 1 pickup
cleanup   unix n - y - 0 cleanup
qmgr      unix n - n 300 1 qmgr
tlsmgr    unix - - y 1000? 1 tlsmgr
rewrite   unix - - y - - trivial-rewrite
bounce    unix - - y - 0 bounce
defer     unix - - y - 0 bounce
trace     unix - - y - 0 bounce
verify    unix - - y - 1 verify
flush     unix n - y 1000? 0 flush
proxymap  unix - - n - - proxymap
smtp      unix - - y - - smtp
relay     unix - - y - - smtp
showq     unix n - y - - showq
error     unix - - y - - error
retry     unix - - y - - error
discard   unix - - y - - discard
lmtp      unix - - y - - lmtp
anvil     unix - - y - 1 anvil
scache    unix - - y - 1 scache
postlog   unix-dgram n - n - 1 postlogd
EOF
printf '%s OK\n' "$user" > /etc/bench-postfix/vmailbox
postmap hash:/etc/bench-postfix/vmailbox
install -d /var/spool/bench-postfix
postfix -c /etc/bench-postfix check
postfix -c /etc/bench-postfix status >/dev/null 2>&1 && postfix -c /etc/bench-postfix stop || true
postfix -c /etc/bench-postfix start
if [ -f /run/bench-dovecot/master.pid ]; then
  doveadm -c /etc/bench-dovecot/dovecot.conf stop || true
fi
dovecot -c /etc/bench-dovecot/dovecot.conf
"""

BASELINE_TEARDOWN = r"""
postfix -c /etc/bench-postfix stop >/dev/null 2>&1 || true
doveadm -c /etc/bench-dovecot/dovecot.conf stop >/dev/null 2>&1 || true
userdel benchvmail >/dev/null 2>&1 || true
rm -rf /etc/bench-postfix /etc/bench-dovecot /var/spool/bench-postfix /var/lib/bench-postfix \
  /var/lib/bench-dovecot /var/lib/bench-vmail
"""


def bulk(host: str, port: int, imap_port: int, ca: str, user: str, password: str,
         n: int, parallel: int) -> dict[str, Any]:  # fmt: skip
    return clientlib(
        "bulk", "--host", host, "--port", str(port), "--starttls", "--ca", ca,
        "--user", user, "--password", password, "--sender", user, "--to", user,
        "--subject", f"bench-{secrets.token_hex(4)}", "--count", str(n),
        "--parallel", str(parallel), "--imap-port", str(imap_port), "--timeout", "600",
    )  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--skip-cold", action="store_true", help="do not time a cold base build")
    p.add_argument("--messages", type=int, default=500)
    p.add_argument("--parallel", type=int, default=20)
    p.add_argument("--keep", action="store_true", help="leave the lab up at the end")
    p.add_argument("--running", action="store_true",
                   help="the running lab: no cold build, no down/up (implies --keep)")  # fmt: skip
    args = p.parse_args()
    figures: dict[str, Any] = {}

    if args.running:
        args.skip_cold = args.keep = True
    if not args.skip_cold:
        scratch = tempfile.mkdtemp(prefix="mclab-bench-cache-")
        try:
            secs, _ = timed("base", "--rebuild", env={"MAILCLUSTER_LAB_CACHE": scratch})
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        figures["base_build_cold_s"] = round(secs, 1)
        print(f"base build, cold:              {secs:7.1f} s", flush=True)

    if not args.running:
        lab("base")  # the real cache holds the base, so the next `up` is the cached case
        lab("down")
        secs, out = timed("up")
        figures["up_cached_s"] = round(secs, 1)
        figures["apply_per_host_s"] = per_host_apply(out)
        print(f"up with cached base:           {secs:7.1f} s", flush=True)
        for host, t in figures["apply_per_host_s"].items():
            print(f"  plan apply {host}:        {t:7.1f} s")
    secs, out = timed("apply")
    figures["second_apply_s"] = round(secs, 1)
    figures["second_apply_steps"] = int(re.findall(r"^apply: (\d+) steps run", out, re.M)[-1])
    print(f"second apply:                  {secs:7.1f} s "
          f"({figures['second_apply_steps']} steps run)", flush=True)  # fmt: skip

    status = json.loads(lab("status", "--json"))
    vip = status["dcs"][status["active_dc"]]["shared_ip"]
    ca = str(Path(os.environ.get("MAILCLUSTER_LAB_DIR", "/var/lib/mailcluster-lab")) / "ca.pem")
    user = f"bench{secrets.token_hex(3)}@{status['domain']}"
    password = "P" + secrets.token_hex(12)
    lab("mailbox", "add", user, password)
    cluster = bulk(vip, 587, 993, ca, user, password, args.messages, args.parallel)
    if not cluster["ok"]:
        raise SystemExit(f"cluster run failed: {cluster}")
    figures["cluster_msgs_per_s"] = round(cluster["per_second"], 1)
    print(f"cluster: {args.messages} msgs, {args.parallel} parallel: "
          f"{cluster['per_second']:7.1f} msg/s (submitted in {cluster['submit_seconds']:.1f} s, "
          f"all in IMAP after {cluster['total_seconds']:.1f} s)", flush=True)  # fmt: skip

    dc, slot = BASELINE_HOST.split("-")
    addr = A.lab_dc_addresses(dc).nodes[slot].public_ipv4
    lab("exec", BASELINE_HOST, "--", "bash", "-c", BASELINE_SETUP, "setup", addr,
        str(BASELINE_PORT_SMTP), str(BASELINE_PORT_IMAPS), user, input=password + "\n")  # fmt: skip
    try:
        plain = bulk(addr, BASELINE_PORT_SMTP, BASELINE_PORT_IMAPS, "none", user, password,
                     args.messages, args.parallel)  # fmt: skip
    finally:
        lab("exec", BASELINE_HOST, "--", "bash", "-c", BASELINE_TEARDOWN)
    if not plain["ok"]:
        raise SystemExit(f"baseline run failed: {plain}")
    figures["plain_msgs_per_s"] = round(plain["per_second"], 1)
    figures["ratio_cluster_to_plain"] = round(cluster["per_second"] / plain["per_second"], 2)
    print(f"plain Postfix+hash+Dovecot:    {plain['per_second']:7.1f} msg/s", flush=True)
    print(f"ratio cluster/plain:           {figures['ratio_cluster_to_plain']:7.2f}")
    print(json.dumps(figures))
    if not args.keep:
        lab("down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
