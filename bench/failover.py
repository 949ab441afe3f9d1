"""Failover benchmark in the lab (issue 5): run for real, as root, with the lab up; not in CI.

    python bench/failover.py [--rounds 10] [--rate 5] [--skip-dc]

Per round: a steady sender over 587 runs from the client; the dc1 node holding the shared IP is
crashed (power cut, in-process so the crash instant is known to the millisecond); a probe in
the client opens a new SMTP connection to the shared IP every 20 ms and tries an IMAPS login
every 20 ms. The crashed node is booted and waits to rejoin before the next round, so the
active node alternates. Then: messages lost (acknowledged, not readable at the end), MariaDB
replication lag under the send load (a row with the master's clock, polled on each replica
every ~5 ms inside the host), and the data-centre failover time (from the start of
`apply --stack dc2 --set activeDc=dc2` to the first message accepted on dc2's shared IP), after
which the lab is put back (heal, rejoin, failback).
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cluster.lab import addresses as A  # noqa: E402
from cluster.lab import lifecycle  # noqa: E402

CA = "/var/lib/mailcluster-lab/ca.pem"
VIP1 = A.lab_dc_addresses("dc1").shared_ipv4
VIP2 = A.lab_dc_addresses("dc2").shared_ipv4
DC1 = ("dc1-svr1", "dc1-svr2")


def lab(*args: str, input: str | None = None, check: bool = True) -> str:
    proc = subprocess.run([sys.executable, "-m", "cluster.lab", "-q", *args], cwd=REPO,
                          input=input, capture_output=True, text=True, check=False)  # fmt: skip
    if check and proc.returncode != 0:
        raise SystemExit(f"lab {' '.join(args)}: {proc.stdout}{proc.stderr}")
    return proc.stdout


def role(host: str) -> dict[str, Any]:
    out = lab("exec", host, "--", "mailcluster-role", "status", "--json", check=False)
    try:
        data: dict[str, Any] = json.loads(out)
    except ValueError:
        return {}
    return data


def client(*args: str) -> subprocess.Popen[str]:
    argv = lifecycle.client_argv([sys.executable, "-m", "cluster.lab.clientlib", *args])
    return subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, text=True)


def result(p: subprocess.Popen[str], timeout: float = 300) -> dict[str, Any]:
    out, _ = p.communicate(timeout=timeout)
    data: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return data


def wait(what: str, probe: Any, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return
        time.sleep(0.5)
    raise SystemExit(f"timed out waiting for {what}")


def rejoined(host: str) -> bool:
    r = role(host)
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
    lab("exec", master, "--", "mysql", "-uroot", "-e",
        "CREATE DATABASE IF NOT EXISTS mcbench; CREATE TABLE IF NOT EXISTS mcbench.lag "
        "(id BIGINT PRIMARY KEY, at_us BIGINT)")  # fmt: skip
    time.sleep(1)
    secs = int(writes * 0.15) + 5
    argv = [sys.executable, "-m", "cluster.lab", "-q", "exec"]
    readers = {h: subprocess.Popen([*argv, h, "--", "bash", "-c", LAG_READER, "r", str(secs)],
                                   cwd=REPO, stdout=subprocess.PIPE, text=True)
               for h in replicas}  # fmt: skip
    time.sleep(1)
    lab("exec", master, "--", "bash", "-c", LAG_WRITER, "w", str(writes))
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
    ap.add_argument("--skip-dc", action="store_true")
    a = ap.parse_args()
    user = f"b{secrets.token_hex(4)}@example.com"
    password = "P" + secrets.token_hex(12)
    lab("mailbox", "add", user, password)
    prefix = f"bench-{secrets.token_hex(4)}"
    stop = Path(tempfile.mkdtemp()) / "stop"
    sender = client("stream", "--host", VIP1, "--ca", CA, "--user", user, "--password", password,
                    "--subject", prefix, "--seconds", "100000", "--rate", str(a.rate),
                    "--stop", str(stop))  # fmt: skip
    banner: list[float] = []
    imap: list[float] = []
    lags: list[float] = []
    for n in range(a.rounds):
        active = next((h for h in DC1 if role(h).get("vip_held")), None)
        if active is None:
            raise SystemExit("nobody holds dc1's shared IP")
        standby = DC1[1] if active == DC1[0] else DC1[0]
        if n == 0:
            lags += lag_round(active, [standby, "dc2-svr1", "dc2-svr2"], 100)
        time.sleep(2)
        t0 = time.time()
        lifecycle.crash(active)
        probe = client("probe", "--host", VIP1, "--ca", CA, "--user", user, "--password",
                       password, "--timeout", "60")  # fmt: skip
        got = result(probe)
        if not got["ok"]:
            raise SystemExit(f"round {n}: no banner within 60 s: {got}")
        banner.append(got["smtp_at"] - t0)
        if got.get("imap_at"):
            imap.append(got["imap_at"] - t0)
        print(f"round {n + 1}: crashed {active}: SMTP banner {banner[-1]:.3f}s, IMAP login "
              f"{(got.get('imap_at') or float('nan')) - t0:.3f}s", flush=True)  # fmt: skip
        lab("boot", active)
        wait(f"{active} to rejoin", lambda h=active: rejoined(h))
    stop.touch()
    sent = result(sender)
    acked = set(sent["acked"])
    seen = result(client("subjects", "--host", VIP1, "--ca", CA, "--user", user, "--password",
                         password, "--subject", prefix, "--count", str(len(acked)),
                         "--timeout", "120"))  # fmt: skip
    lost = acked - set(seen["subjects"])
    print()
    print(f"crashes: {len(banner)} (keepalive/deadtime from the stack config)")
    print(f"crash -> SMTP 220 on the shared IP: median {statistics.median(banner):.3f}s, "
          f"max {max(banner):.3f}s")  # fmt: skip
    if imap:
        print(f"crash -> IMAPS login: median {statistics.median(imap):.3f}s, max {max(imap):.3f}s")
    print(f"messages: {sent['sent']} sent, {len(acked)} acknowledged, {len(lost)} lost, "
          f"{len(sent['permanent'])} refused permanently")  # fmt: skip
    if lags:
        print(
            f"replication lag under load ({len(lags)} samples, 3 replicas): median "
            f"{statistics.median(lags) * 1000:.1f} ms, p99 {pct(lags, 99) * 1000:.1f} ms"
        )
    if not a.skip_dc:
        dc_failover(user, password)
    return 1 if lost else 0


def dc_failover(user: str, password: str) -> None:
    lab("cut", "dc1")
    t0 = time.monotonic()
    lab("apply", "--stack", "dc2", "--set", "activeDc=dc2")
    t_apply = time.monotonic() - t0
    while True:
        got = result(client("send", "--host", VIP2, "--port", "587", "--starttls", "--ca", CA,
                            "--user", user, "--password", password, "--sender", user,
                            "--to", user, "--subject", "bench-dc"))  # fmt: skip
        if got["ok"]:
            break
        if time.monotonic() - t0 > 300:
            raise SystemExit(f"dc2 does not accept mail: {got}")
        time.sleep(0.2)
    total = time.monotonic() - t0
    print(f"data-centre failover: apply {t_apply:.1f}s, mail accepted on dc2 {total:.1f}s after "
          "the config change (+ the DNS TTL for clients that cached dc1)")  # fmt: skip
    lab("heal", "dc1")
    lab("apply", "--stack", "dc1", "--set", "activeDc=dc2")
    lab("apply", "--stack", "dc2", "--set", "activeDc=dc1")
    lab("apply", "--stack", "dc1", "--set", "activeDc=dc1")


if __name__ == "__main__":
    sys.exit(main())
