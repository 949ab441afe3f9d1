"""`python -m cluster.lab COMMAND`: the lab's commands (a contract: users and tests script them).

up                               build or reuse the base, start hosts and client, apply both
                                 (a first deployment: dc1, dc2, then dc1 again to know dc2)
down                             remove everything the lab made
status [--json]                  hosts, addresses, services, replication, shared IP holders
exec HOST -- CMD...              run a command in a host
client -- CMD...                 run a command in the client namespace (this machine's python3)
apply [--stack S] [--set k=v]    re-apply after a config change (--set persists per stack)
crash HOST | boot HOST           power cut (disk stays) and power on
rebuild HOST                     a fresh OS disk (the base), the same volume; boot; apply its stack
wipe                             destroy all four nodes (OS disks and volumes); `up` builds new ones
cut HOST|dc1|dc2 | heal ...      pull or plug a host's cable or a data centre's uplink
volume attach HOST --to PEER     hot-plug a down host's volume into a running host (a rescue)
volume detach HOST               take it back (refused while it is mounted there)
mailbox add USER@DOMAIN PASSWORD via Postfix Admin's CLI on the active node
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any

from cluster.config import DC_NAMES
from cluster.lab import addresses as A
from cluster.lab import hosts, lifecycle, net, routeservers
from cluster.lab.apply import ApplyReport, apply_stack
from cluster.lab.paths import CLIENT_NS, HOSTS
from cluster.lab.run import LabError, Progress
from cluster.lab.secrets import load_secrets
from cluster.lab.stacks import (
    applied_topology,
    forget_applied,
    keep_sets,
    parse_sets,
    record_applied,
    stack_topology,
    stale_stacks,
)
from cluster.lab.state import HostRecord, LabState, locked
from cluster.lab.status import collect, render_text, vip_holder

MAILBOX_TOOL = "/usr/local/sbin/mailcluster-mailbox"


def _split_cmd(argv: list[str]) -> list[str]:
    cmd = argv[1:] if argv and argv[0] == "--" else argv
    if not cmd:
        raise LabError("no command given (use: ... -- CMD ARGS)")
    return cmd


def _print_report(r: ApplyReport) -> None:
    hosts_t = ", ".join(f"{h} {t:.1f}s" for h, t in r.per_host_seconds.items())
    print(
        f"apply {r.stack}: {r.run} steps run, {r.skipped} unchanged, {r.changed} changes "
        f"in {r.seconds:.1f}s ({hosts_t})",
        flush=True,
    )


def do_apply(state: LabState, stacks: list[str], progress: Progress) -> list[ApplyReport]:
    reports = []
    for stack in stacks:
        progress(f"apply: stack {stack}")
        topo = applied_topology(state, stack)  # what `pulumi up -s <stack>` would know
        report = apply_stack(state, topo, load_secrets(), lambda m: progress("  " + m))
        record_applied(state, topo)
        # The data centre routes its shared addresses as the stack's method says (after the
        # nodes are ready for it: announcing, or holding the address on the LAN).
        routeservers.route_shared(topo.config.dc, topo.config.shared_ip_method)
        state.active_dc = topo.active_dc
        state.save()
        _print_report(report)
        reports.append(report)
    return reports


def apply_all(state: LabState, progress: Progress) -> list[ApplyReport]:
    """Both stacks, then each whose apply did not know the other yet: a first deployment is
    dc1, dc2, dc1 (as on Linode); a deployed lab, dc1 and dc2."""
    reports = do_apply(state, list(DC_NAMES), progress)
    return reports + do_apply(state, stale_stacks(state), progress)


def cmd_up(args: argparse.Namespace) -> int:
    progress = Progress(args.quiet)
    lifecycle.up_machines(progress)
    with locked() as state:
        if not args.no_apply:
            apply_all(state, progress)
        data = collect(state)
    print(summary(data))
    progress("up: done")
    return 0


def summary(data: dict[str, Any]) -> str:
    d = data["domain"]
    active_dc = str(data["active_dc"])
    vip = A.lab_dc_addresses(active_dc).shared_ipv4
    lines = [
        render_text(data),
        "",
        f"client (the internet): {A.client_address()}  (`python -m cluster.lab client -- CMD`)",
        f"mail:     {d} MX mail.{d} -> {vip}; submission {vip}:587, IMAPS {vip}:993",
        f"webmail:  https://{vip}/  (Host: webmail.{d})",
        f"admin:    https://{vip}/postfixadmin/",
        f"DNS:      dig @{vip} {d} MX  (from the client)",
    ]
    return "\n".join(lines)


def cmd_base(args: argparse.Namespace) -> int:
    from cluster.lab import base

    s = base.spec()
    if args.print_key:
        print(s.key)  # CI caches the archive under this key
        return 0
    progress = Progress(args.quiet)
    if args.rebuild or not base.cached(s.key):
        secs = base.build(s, progress)
        print(f"base {s.key}: built in {secs:.1f}s")
    else:
        print(f"base {s.key}: cached")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    undone = lifecycle.down(Progress(args.quiet))
    print("down: nothing to remove" if not undone else f"down: removed {len(undone)} things")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    state = LabState.load()
    data = collect(state)
    print(json.dumps(data, indent=2) if args.json else render_text(data))
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    if args.host not in HOSTS:
        raise LabError(f"unknown host {args.host!r}; hosts: {', '.join(HOSTS)}")
    rec = LabState.load().hosts.get(args.host, HostRecord())
    if not hosts.alive(rec):
        raise LabError(f"{args.host} is down")
    argv = hosts.nsenter_argv(rec, _split_cmd(args.cmd))
    if sys.stdout.isatty():
        return subprocess.run(argv, check=False).returncode
    # Captured (a script, a test): through files, so a daemon the command starts cannot hold
    # the caller's pipe open (see hosts.run_captured).
    data = None if sys.stdin.isatty() else sys.stdin.read()
    proc = hosts.run_captured(argv, stdin=data if data is not None else "")
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    return proc.returncode


def cmd_client(args: argparse.Namespace) -> int:
    if CLIENT_NS not in net.lab_namespaces():
        raise LabError("the lab is not up")
    return subprocess.run(lifecycle.client_argv(_split_cmd(args.cmd)), check=False).returncode


def cmd_apply(args: argparse.Namespace) -> int:
    progress = Progress(args.quiet)
    sets = parse_sets(args.set or [])
    with locked() as state:
        if sets:
            if not args.stack:
                raise LabError("--set needs --stack (each stack has its own config)")
            keep_sets(state, args.stack, sets)  # a bad value fails before anything runs
        if args.stack:
            reports = do_apply(state, [args.stack], progress)
        else:
            reports = apply_all(state, progress)
    total = sum(r.run for r in reports)
    print(f"apply: {total} steps run, {sum(r.changed for r in reports)} changes")
    return 0


def cmd_crash(args: argparse.Namespace) -> int:
    lifecycle.crash(args.host)
    print(f"{args.host}: crashed (power cut; its disk is kept)")
    return 0


def cmd_boot(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    state = lifecycle.boot(args.host)
    print(f"{args.host}: booted in {time.monotonic() - t0:.1f}s (systemd: {state})")
    return 0


def cmd_rebuild(args: argparse.Namespace) -> int:
    progress = Progress(args.quiet)
    t0 = time.monotonic()
    lifecycle.rebuild(args.host)
    booted = time.monotonic() - t0
    progress(f"{args.host}: rebuilt and booted in {booted:.1f}s; applying its stack")
    stack = stack_of(args.host)
    with locked() as state:
        (report,) = do_apply(state, [stack], progress)
    print(
        f"{args.host}: rebuilt in {time.monotonic() - t0:.1f}s (boot {booted:.1f}s, apply "
        f"{report.seconds:.1f}s: {report.run} steps run, {report.changed} changes)"
    )
    return 0


def cmd_wipe(args: argparse.Namespace) -> int:
    wiped = lifecycle.wipe()
    with locked() as state:
        forget_applied(state)  # four new nodes: `up` deploys them as for the first time
    print(f"wipe: destroyed {', '.join(wiped)} (disks and volumes); `up` builds them anew")
    return 0


def stack_of(host: str) -> str:
    """The stack that owns a host: its data centre (``dc1-svr2`` -> ``dc1``)."""
    return host.split("-", 1)[0]


def cmd_cut(args: argparse.Namespace) -> int:
    lifecycle.cut(args.target, heal=args.command == "heal")
    print(f"{args.target}: {'healed' if args.command == 'heal' else 'cut'}")
    return 0


def cmd_volume(args: argparse.Namespace) -> int:
    if args.action == "attach":
        if not args.to:
            raise LabError("volume attach needs --to HOST: the running host that gets the volume")
        path = lifecycle.attach_volume(args.host, args.to)
        print(f"{args.host}'s volume: attached to {args.to} at {path}")
        return 0
    was = lifecycle.detach_volume(args.host)
    print(f"{args.host}'s volume: " + (f"detached from {was}" if was else "not attached elsewhere"))
    return 0


def active_node(state: LabState) -> str:
    topo = stack_topology(state, "dc1")
    dc = state.active_dc or topo.active_dc
    holder = vip_holder(dc, state)
    if holder is None:
        raise LabError(f"no host of the active data centre {dc} holds its shared IP")
    return holder


def cmd_mailbox(args: argparse.Namespace) -> int:
    state = LabState.load()
    host = active_node(state)
    proc = hosts.exec_in(host, state.hosts[host], [MAILBOX_TOOL, "add", args.address],
                         input=args.password + "\n", timeout=60)  # fmt: skip
    sys.stdout.write(proc.stdout)
    if proc.returncode != 0:
        raise LabError(f"mailbox add on {host} failed: {proc.stderr.strip()}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cluster.lab", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("up")
    s.add_argument("--no-apply", action="store_true", help="machines only (developing the lab)")
    s.set_defaults(func=cmd_up)
    sub.add_parser("down").set_defaults(func=cmd_down)
    s = sub.add_parser("base", help="build and cache the base root filesystem only")
    s.add_argument("--rebuild", action="store_true", help="even when it is cached")
    s.add_argument("--print-key", action="store_true", help="print the base's key (recipe and "
                   "package list), build nothing")  # fmt: skip
    s.set_defaults(func=cmd_base)
    s = sub.add_parser("status")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)
    s = sub.add_parser("exec")
    s.add_argument("host")
    s.add_argument("cmd", nargs=argparse.REMAINDER)
    s.set_defaults(func=cmd_exec)
    s = sub.add_parser("client")
    s.add_argument("cmd", nargs=argparse.REMAINDER)
    s.set_defaults(func=cmd_client)
    s = sub.add_parser("apply")
    s.add_argument("--stack", choices=DC_NAMES)
    s.add_argument("--set", action="append", metavar="KEY=VALUE")
    s.set_defaults(func=cmd_apply)
    for name, func in (("crash", cmd_crash), ("boot", cmd_boot)):
        s = sub.add_parser(name)
        s.add_argument("host", choices=HOSTS)
        s.set_defaults(func=func)
    s = sub.add_parser("rebuild", help="a fresh OS disk, the same volume; then apply its stack")
    s.add_argument("host", choices=HOSTS)
    s.set_defaults(func=cmd_rebuild)
    s = sub.add_parser("wipe", help="destroy the four nodes, keep the network and the client")
    s.set_defaults(func=cmd_wipe)
    for name in ("cut", "heal"):
        s = sub.add_parser(name)
        s.add_argument("target", choices=(*HOSTS, *DC_NAMES))
        s.set_defaults(func=cmd_cut)
    s = sub.add_parser("volume", help="attach a down host's volume to a running host, detach it")
    s.add_argument("action", choices=("attach", "detach"))
    s.add_argument("host", choices=HOSTS, help="the host whose volume it is")
    s.add_argument("--to", choices=HOSTS, help="attach: the running host that gets it")
    s.set_defaults(func=cmd_volume)
    s = sub.add_parser("mailbox")
    s.add_argument("action", choices=("add",))
    s.add_argument("address")
    s.add_argument("password")
    s.set_defaults(func=cmd_mailbox)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        rc: int = args.func(args)
    except LabError as e:
        print(f"lab: {e}", file=sys.stderr)
        return 1
    return rc
