"""Failover benchmark in the lab (issue 5): run for real, as root, with the lab up; not in CI.

    python bench/failover.py [--rounds 10] [--rate 5] [--methods bgp,arp]
                             [--families ipv4,ipv6] [--skip-dc]

For each shared-IP method (dc1 is switched to it on the running lab, and back to bgp at the
end), per round: a steady sender over 587 runs from the client; the dc1 node holding the shared
IP is crashed (power cut, in-process so the crash instant is known to the millisecond); per
address family a probe in the client opens a new SMTP connection to that shared address every
20 ms and tries an IMAPS login every 20 ms. The crashed node is booted and waits to rejoin
before the next round, so the active node alternates. Figures are reported per method and
family: with bgp a crash costs the route servers' hold time, with arp Heartbeat's deadtime.
Then: messages lost (acknowledged, not readable at the end), MariaDB
replication lag under the send load (a row with the master's clock, polled on each replica
every ~5 ms inside the host), and the data-centre failover time (from the start of
`apply --stack dc2 --set activeDc=dc2` to the first message accepted on dc2's shared IP), after
which the lab is put back (heal, rejoin, failback).
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import time
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cluster.lab.driver import Lab, shared_ip, shared_ip6  # noqa: E402
from cluster.lab.run import LabError  # noqa: E402

VIP1 = shared_ip("dc1")
VIP2 = shared_ip("dc2")
FAMILIES = {"ipv4": VIP1, "ipv6": shared_ip6("dc1")}
DC1 = ("dc1-svr1", "dc1-svr2")
LAB = Lab()


def rejoined(host: str) -> bool:
    r = LAB.role(host, check=False)
    rep = r.get("replication", {})
    return bool(r.get("heartbeat_running") and not r.get("vip_held")
                and rep.get("io_running") == "Yes" and rep.get("sql_running") == "Yes")  # fmt: skip


LAG_WRITER = """set -eu
q() { mysql -uroot -N -B -e "$1"; }
q "CREATE DATABASE IF NOT EXISTS mcbench; CREATE TABLE IF NOT EXISTS mcbench.lag
   (id BIGINT PRIMARY KEY, at_us BIGINT)"
for i in $(seq 1 $1); do
  q "INSERT INTO mcbench.lag VALUES ($(date +%s%N), $(( $(date +%s%N) / 1000 )))"
  sleep 0.1
done
"""
# Prints "written_us seen_us" for each new row, polling every ~5 ms (the clock is shared).
LAG_READER = """q() { mysql -uroot -N -B -e "$1" 2>/dev/null; }
last=$(q "SELECT COALESCE(MAX(id),0) FROM mcbench.lag" || echo 0)
end=$(( $(date +%s) + $1 ))
while [ "$(date +%s)" -lt "$end" ]; do
  now=$(( $(date +%s%N) / 1000 ))
  rows=$(q "SELECT id, at_us FROM mcbench.lag WHERE id > $last ORDER BY id")
  if [ -n "$rows" ]; then
    while read -r id at; do echo "$at $now"; last=$id; done <<<"$rows"
  fi
  sleep 0.005
done
"""


def lag_round(master: str, replicas: list[str], writes: int) -> list[float]:
    LAB.sql(master, "CREATE DATABASE IF NOT EXISTS mcbench; CREATE TABLE IF NOT EXISTS "
            "mcbench.lag (id BIGINT PRIMARY KEY, at_us BIGINT)")  # fmt: skip
    time.sleep(1)
    secs = int(writes * 0.15) + 5
    readers = {h: LAB.spawn("exec", h, "--", "bash", "-c", LAG_READER, "r", str(secs))
               for h in replicas}  # fmt: skip
    time.sleep(1)
    LAB.exec(master, "bash", "-c", LAG_WRITER, "w", str(writes))
    lags = []
    for p in readers.values():
        out, _ = p.communicate(timeout=secs + 30)
        for line in out.splitlines():
            at, seen = (int(x) for x in line.split())
            lags.append((seen - at) / 1e6)
    return lags


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--rate", type=float, default=5)
    ap.add_argument("--methods", default="bgp,arp")
    ap.add_argument("--families", default="ipv4,ipv6")
    ap.add_argument("--skip-dc", action="store_true")
    a = ap.parse_args()
    try:
        return run(a)
    except LabError as e:
        raise SystemExit(str(e)) from None


def run(a: argparse.Namespace) -> int:
    user, password = LAB.new_mailbox("example.com", "b")
    prefix = f"bench-{secrets.token_hex(4)}"
    sender = LAB.stream(VIP1, (user, password), prefix, seconds=100000, rate=a.rate)
    families = a.families.split(",")
    # (method, family) -> seconds from the crash to the first SMTP 220 / IMAPS login.
    banner: dict[tuple[str, str], list[float]] = {}
    imap: dict[tuple[str, str], list[float]] = {}
    unanswered: dict[tuple[str, str], int] = {}
    lags: list[float] = []
    try:
        for method in a.methods.split(","):
            LAB.run("apply", "--stack", "dc1", "--set", f"sharedIpMethod={method}")
            for n in range(a.rounds):
                active = next((h for h in DC1 if LAB.role(h, check=False).get("vip_held")), None)
                if active is None:
                    raise SystemExit("nobody holds dc1's shared IP")
                standby = DC1[1] if active == DC1[0] else DC1[0]
                LAB.wait_routed("dc1", active)
                if not lags:
                    lags += lag_round(active, [standby, "dc2-svr1", "dc2-svr2"], 100)
                time.sleep(2)
                t0 = time.time()
                LAB.crash_now(active)
                args = ("--ca", LAB.ca, "--user", user, "--password", password, "--timeout", "60")
                probes = {
                    fam: LAB.start_clientlib("probe", "--host", FAMILIES[fam], *args)
                    for fam in families
                }
                line = []
                for fam, probe in probes.items():
                    got = probe.result()
                    key = (method, fam)
                    if not got["ok"]:
                        unanswered[key] = unanswered.get(key, 0) + 1
                        line.append(f"{fam}: no banner within 60 s")
                        continue
                    banner.setdefault(key, []).append(got["smtp_at"] - t0)
                    if got.get("imap_at"):
                        imap.setdefault(key, []).append(got["imap_at"] - t0)
                    line.append(f"{fam}: SMTP banner {got['smtp_at'] - t0:.3f}s, IMAP login "
                                f"{(got.get('imap_at') or float('nan')) - t0:.3f}s")  # fmt: skip
                print(f"{method} round {n + 1}: crashed {active}: " + "; ".join(line), flush=True)
                LAB.run("boot", active)
                LAB.wait_for(f"{active} to rejoin", partial(rejoined, active), timeout=120)
    finally:
        LAB.run("apply", "--stack", "dc1", "--set", "sharedIpMethod=bgp")
    sent = sender.result()
    acked = set(sent["acked"])
    lost = acked - LAB.subjects(VIP1, (user, password), prefix, len(acked), timeout=120)
    print()
    cfg = LAB.stack_config("dc1")
    print(f"timers: bgp hold {cfg.bgp_hold_time_s} s / keepalive {cfg.bgp_keepalive_s} s; "
          f"Heartbeat keepalive {cfg.heartbeat_keepalive_ms} ms / deadtime "
          f"{cfg.heartbeat_deadtime_ms} ms")  # fmt: skip
    for (method, fam), values in sorted(banner.items()):
        print(f"{method} {fam}: {len(values)} crashes; crash -> SMTP 220: median "
              f"{statistics.median(values):.3f}s, max {max(values):.3f}s", end="")  # fmt: skip
        got_imap = imap.get((method, fam))
        if got_imap:
            print(f"; crash -> IMAPS login: median {statistics.median(got_imap):.3f}s, "
                  f"max {max(got_imap):.3f}s", end="")  # fmt: skip
        print()
    for (method, fam), count in sorted(unanswered.items()):
        print(f"{method} {fam}: {count} crashes without an SMTP banner within 60 s")
    print(f"messages: {sent['sent']} sent, {len(acked)} acknowledged, {len(lost)} lost, "
          f"{len(sent['permanent'])} refused permanently")  # fmt: skip
    if lags:
        print(
            f"replication lag under load ({len(lags)} samples, 3 replicas): median "
            f"{statistics.median(lags) * 1000:.1f} ms, p99 {pct(lags, 99) * 1000:.1f} ms"
        )
    if not a.skip_dc:
        dc_failover(user, password)
    return 1 if lost or unanswered else 0


def dc_failover(user: str, password: str) -> None:
    LAB.run("cut", "dc1")
    t0 = time.monotonic()
    LAB.run("apply", "--stack", "dc2", "--set", "activeDc=dc2")
    t_apply = time.monotonic() - t0
    while True:
        got = LAB.send(VIP2, (user, password), "bench-dc")
        if got["ok"]:
            break
        if time.monotonic() - t0 > 300:
            raise SystemExit(f"dc2 does not accept mail: {got}")
        time.sleep(0.2)
    total = time.monotonic() - t0
    print(f"data-centre failover: apply {t_apply:.1f}s, mail accepted on dc2 {total:.1f}s after "
          "the config change (+ the DNS TTL for clients that cached dc1)")  # fmt: skip
    LAB.run("heal", "dc1")
    LAB.run("apply", "--stack", "dc1", "--set", "activeDc=dc2")
    LAB.run("apply", "--stack", "dc2", "--set", "activeDc=dc1")
    LAB.run("apply", "--stack", "dc1", "--set", "activeDc=dc1")


if __name__ == "__main__":
    sys.exit(main())
