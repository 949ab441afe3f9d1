"""Lab benchmark: how long the lab takes, and how fast the cluster moves mail end to end.

    python3 bench/lab.py [--skip-cold] [--messages 500] [--parallel 20] [--mailboxes 20] [--keep]

Prints, one line each (and all of it as JSON at the end):
- base build time, cold (a fresh debootstrap into a scratch cache; --skip-cold to skip);
- `up` time with the base cached (after `down`), and the plan apply time per host;
- the second `apply` time (nothing to do: every step's digest is unchanged);
- messages per second for N messages submitted in parallel from the client (587, STARTTLS,
  AUTH), spread over M mailboxes, until all are visible over IMAPS on the shared IP;
- CPU milliseconds per delivered message, summed over the four hosts: each host's cgroup
  (``cluster/lab/cgroups.py``) from the first submission until the hosts are back to idle
  after the last message is readable (replication included), minus the
  hosts' idle rate (Heartbeat, the guard; measured just before and after) over that time;
- the same two figures for the cluster's own stack on one node without replication (TLS, the
  SQL maps, rspamd, LMTP, Dovecot: the active node with its replication controller stopped,
  counted on that host alone): what replication itself costs is the difference;
- the same two figures for plain Postfix with hash maps delivering over LMTP to Dovecot
  (passwd-file), set up beside the cluster's daemons on the standby data centre's second node
  and counted on that host alone, and the ratios.

The rate is bounded by this machine (its cores run four hosts and the client at once) and does
not carry to real machines; the CPU per message is the work each message costs, and does.
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cluster.lab.driver import Lab, public_ip  # noqa: E402
from cluster.lab.paths import HOSTS  # noqa: E402
from cluster.lab.run import LabError  # noqa: E402

BASELINE_HOST = "dc2-svr2"
REPLICATION_UNIT = "mailcluster-replication"
BASELINE_PORT_SMTP = 2587
BASELINE_PORT_IMAPS = 2993
IDLE_S = 10.0  # how long the idle CPU rate is measured before each run
SETTLE_S = 5.0  # after creating the mailboxes; and the shortest wait after the last message
SETTLE_MAX_S = 120.0  # replication (dsync) goes on after the messages are readable: wait for it
LAB = Lab()


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
addr=$1 smtp_port=$2 imaps_port=$3; shift 3  # then the mailboxes
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
for user in "$@"; do printf '%s:{PLAIN}%s\n' "$user" "$password"; done \
  > /etc/bench-dovecot/users
chmod 0640 /etc/bench-dovecot/users; chgrp dovecot /etc/bench-dovecot/users
vuid=$(id -u benchvmail); vgid=$(id -g benchvmail)
cat > /etc/bench-dovecot/dovecot.conf <<EOF
dovecot_config_version = 2.4.1
dovecot_storage_version = 2.4.1
instance_name = bench-dovecot
base_dir = /run/bench-dovecot
state_dir = /var/lib/bench-dovecot
protocols = imap lmtp
listen = $addr
log_path = syslog
syslog_facility = mail
ssl = required
ssl_server_cert_file = /etc/bench-dovecot/cert.pem
ssl_server_key_file = /etc/bench-dovecot/key.pem
mail_driver = maildir
mail_home = /var/lib/bench-vmail/%{user | domain}/%{user | username}
mail_path = %{home}
first_valid_uid = $vuid
passdb passwd-file {
  passwd_file_path = /etc/bench-dovecot/users
}
userdb static {
  fields {
    uid = $vuid
    gid = $vgid
    home = /var/lib/bench-vmail/%{user | domain}/%{user | username}
  }
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
domain=${1#*@}
cat > /etc/bench-postfix/main.cf <<EOF
compatibility_level = 3.10
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
printf '%s OK\n' "$@" > /etc/bench-postfix/vmailbox
postmap hash:/etc/bench-postfix/vmailbox
install -d /var/spool/bench-postfix
postfix -c /etc/bench-postfix check
postfix -c /etc/bench-postfix status >/dev/null 2>&1 && postfix -c /etc/bench-postfix stop || true
postfix -c /etc/bench-postfix start
if [ -f /run/bench-dovecot/master.pid ]; then
  doveadm -c /etc/bench-dovecot/dovecot.conf stop || true
fi
dovecot -c /etc/bench-dovecot/dovecot.conf
# The node's firewall (table inet mailcluster) drops every port it does not name: admit the
# benchmark's two for its run (the teardown removes the rule by its comment).
nft list chain inet mailcluster input | grep -q mailcluster-bench \
  || nft insert rule inet mailcluster input tcp dport "{ $smtp_port, $imaps_port }" accept \
       comment '"mailcluster-bench"'
"""

BASELINE_TEARDOWN = r"""
for h in $(nft -a list chain inet mailcluster input \
             | sed -n 's/.*"mailcluster-bench".*# handle //p'); do
  nft delete rule inet mailcluster input handle "$h"
done
postfix -c /etc/bench-postfix stop >/dev/null 2>&1 || true
doveadm -c /etc/bench-dovecot/dovecot.conf stop >/dev/null 2>&1 || true
userdel benchvmail >/dev/null 2>&1 || true
rm -rf /etc/bench-postfix /etc/bench-dovecot /var/spool/bench-postfix /var/lib/bench-postfix \
  /var/lib/bench-dovecot /var/lib/bench-vmail
"""


def bulk(host: str, port: int, imap_port: int, ca: str, mailboxes: Sequence[str], password: str,
         n: int, parallel: int) -> dict[str, Any]:  # fmt: skip
    """N messages from the first mailbox (587, STARTTLS, AUTH) spread over all of them."""
    sender = mailboxes[0]
    return LAB.clientlib(
        "bulk", "--host", host, "--port", str(port), "--starttls", "--ca", ca,
        "--user", sender, "--password", password, "--sender", sender,
        *(arg for box in mailboxes for arg in ("--to", box)),
        "--subject", f"bench-{secrets.token_hex(4)}", "--count", str(n),
        "--parallel", str(parallel), "--imap-port", str(imap_port), "--timeout", "600",
    )  # fmt: skip


def cpu_total(hosts: Sequence[str]) -> float:
    return sum(LAB.cpu_seconds(hosts).values())


def idle_rate(hosts: Sequence[str]) -> float:
    """CPU seconds per second the hosts spend with no mail to move (Heartbeat, the guard)."""
    c0, t0 = cpu_total(hosts), time.monotonic()
    time.sleep(IDLE_S)
    return (cpu_total(hosts) - c0) / (time.monotonic() - t0)


def measured(hosts: Sequence[str], run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``run()`` (a bulk send) with the CPU the hosts spent on it: their cgroups' usage from the
    first submission until the hosts are back to their idle rate after the last message was
    readable (replication included), minus what they spend idle over the same time (the mean of
    IDLE_S measured just before and just after)."""
    before = idle_rate(hosts)
    c1, t1 = cpu_total(hosts), time.monotonic()
    result = run()
    if not result["ok"]:
        raise SystemExit(f"bulk run failed: {result}")
    time.sleep(SETTLE_S)
    # Settled: two seconds that cost no more than 1.25 times the idle rate.
    while time.monotonic() - t1 < SETTLE_MAX_S:
        c = cpu_total(hosts)
        time.sleep(2)
        if cpu_total(hosts) - c <= 2 * 1.25 * before:
            break
    gross = cpu_total(hosts) - c1
    window = time.monotonic() - t1
    after = idle_rate(hosts)
    idle_per_s = (before + after) / 2
    sent = result["sent"]
    return {**result, "cpu_ms_per_msg": 1000 * (gross - idle_per_s * window) / sent,
            "cpu_ms_per_msg_gross": 1000 * gross / sent, "idle_cpu_ms_per_s": 1000 * idle_per_s,
            "idle_before_after": (1000 * before, 1000 * after), "window_s": window}  # fmt: skip


def report(name: str, r: dict[str, Any], figures: dict[str, Any]) -> None:
    figures[f"{name}_msgs_per_s"] = round(r["per_second"], 1)
    figures[f"{name}_cpu_ms_per_msg"] = round(r["cpu_ms_per_msg"], 2)
    figures[f"{name}_cpu_ms_per_msg_gross"] = round(r["cpu_ms_per_msg_gross"], 2)
    figures[f"{name}_idle_cpu_ms_per_s"] = round(r["idle_cpu_ms_per_s"], 1)
    print(f"{name + ':':8} {r['sent']} msgs to {r['mailboxes']} mailboxes: "
          f"{r['per_second']:7.1f} msg/s (submitted in {r['submit_seconds']:.1f} s, all in IMAP "
          f"after {r['total_seconds']:.1f} s); CPU {r['cpu_ms_per_msg']:.2f} ms/msg "
          f"({r['cpu_ms_per_msg_gross']:.2f} gross; idle %.0f/%.0f ms/s before/after, window "
          f"{r['window_s']:.1f} s)" % r["idle_before_after"], flush=True)  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--skip-cold", action="store_true", help="do not time a cold base build")
    p.add_argument("--messages", type=int, default=500)
    p.add_argument("--parallel", type=int, default=20)
    p.add_argument("--mailboxes", type=int, default=20, help="recipients the messages spread over")
    p.add_argument("--keep", action="store_true", help="leave the lab up at the end")
    p.add_argument("--running", action="store_true",
                   help="the running lab: no cold build, no down/up (implies --keep)")  # fmt: skip
    args = p.parse_args()
    try:
        return bench(args)
    except LabError as e:
        raise SystemExit(str(e)) from None


def bench(args: argparse.Namespace) -> int:
    figures: dict[str, Any] = {}
    if args.running:
        args.skip_cold = args.keep = True
    if not args.skip_cold:
        scratch = tempfile.mkdtemp(prefix="mclab-bench-cache-")
        try:
            secs, _ = LAB.timed("base", "--rebuild", env={"MAILCLUSTER_LAB_CACHE": scratch},
                                timeout=3600)  # fmt: skip
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        figures["base_build_cold_s"] = round(secs, 1)
        print(f"base build, cold:              {secs:7.1f} s", flush=True)

    if not args.running:
        LAB.run("base", timeout=3600)  # the real cache holds the base: the next `up` is cached
        LAB.run("down")
        secs, proc = LAB.timed("up", timeout=1800)
        figures["up_cached_s"] = round(secs, 1)
        figures["apply_per_host_s"] = per_host_apply(proc.stdout)
        print(f"up with cached base:           {secs:7.1f} s", flush=True)
        for host, t in figures["apply_per_host_s"].items():
            print(f"  plan apply {host}:        {t:7.1f} s")
    secs, proc = LAB.timed("apply")
    figures["second_apply_s"] = round(secs, 1)
    steps = re.findall(r"^apply: (\d+) steps run", proc.stdout, re.M)[-1]
    figures["second_apply_steps"] = int(steps)
    print(f"second apply:                  {secs:7.1f} s ({steps} steps run)", flush=True)

    status = LAB.status()
    vip = status["dcs"][status["active_dc"]]["shared_ip"]
    tag = secrets.token_hex(3)
    boxes = [f"bench{tag}-{i:02d}@{status['domain']}" for i in range(args.mailboxes)]
    password = "P" + secrets.token_hex(12)
    for box in boxes:
        LAB.add_mailbox(box, password)
    time.sleep(2 * SETTLE_S)  # the new mailboxes' first replication is not the messages' cost
    n, par = args.messages, args.parallel
    cluster = measured(HOSTS, lambda: bulk(vip, 587, 993, LAB.ca, boxes, password, n, par))
    report("cluster", cluster, figures)

    holder = next(h for h in HOSTS if LAB.role(h)["role"] == "active")
    LAB.exec(holder, "systemctl", "stop", REPLICATION_UNIT)
    try:
        single = measured([holder], lambda: bulk(vip, 587, 993, LAB.ca, boxes, password, n, par))
    finally:
        # Started again, it queues what changed while it was stopped (its catch-up).
        LAB.exec(holder, "systemctl", "start", REPLICATION_UNIT)
    report("single", single, figures)

    addr = public_ip(BASELINE_HOST)
    LAB.exec(BASELINE_HOST, "bash", "-c", BASELINE_SETUP, "setup", addr, str(BASELINE_PORT_SMTP),
             str(BASELINE_PORT_IMAPS), *boxes, input=password + "\n")  # fmt: skip
    try:
        plain = measured([BASELINE_HOST], lambda: bulk(addr, BASELINE_PORT_SMTP,
                         BASELINE_PORT_IMAPS, "none", boxes, password, n, par))  # fmt: skip
    finally:
        LAB.exec(BASELINE_HOST, "bash", "-c", BASELINE_TEARDOWN)
    report("plain", plain, figures)
    for name, other in (("single", single), ("plain", plain)):
        figures[f"ratio_cluster_to_{name}"] = round(cluster["per_second"] / other["per_second"], 2)
        figures[f"cpu_ratio_cluster_to_{name}"] = round(
            cluster["cpu_ms_per_msg"] / other["cpu_ms_per_msg"], 2
        )
        print(f"ratio cluster/{name}: rate {figures[f'ratio_cluster_to_{name}']:.2f}, "
              f"CPU per message {figures[f'cpu_ratio_cluster_to_{name}']:.2f}")  # fmt: skip
    print(json.dumps(figures))
    if not args.keep:
        LAB.run("down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
