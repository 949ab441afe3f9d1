"""python -m cluster.ops (--lab | --stack NAME) COMMAND ...

The operator's one tool, for the lab and for deployed Linode stacks alike (a contract: users and
tests script it). Exactly one target is required.

  status [--json]                 every replication path and resource, per node; exit 1 if any fails
  admin add EMAIL                 a Postfix Admin superadmin (password from stdin or a prompt)
  domain add DOMAIN | del DOMAIN [--remove-mailboxes] | records DOMAIN | dkim-rotate DOMAIN
         | list
                                  a domain whole on every node: its DKIM key, its zone on
                                  every name server; add prints what to set at the registrar
  mailbox add EMAIL [--quota MB] | passwd EMAIL | del EMAIL | list [DOMAIN]
  alias add ADDRESS DEST [DEST...] | del ADDRESS | list [DOMAIN]
  switchover                      the active role to the other node of the active DC, as planned
  failover --to dc1|dc2 [--yes] [--dry-run]
                                  the data-centre failover, rejoin and failback runbooks
  alerts test                     a test alert to alertWebhook and alertEmail, from one node;
                                  exit 1 if a channel failed
  backup run | list [--json] | check
  restore mailbox USER [--snapshot ID] [--to-folder NAME] | database [--snapshot ID]
  restore cluster --snapshot ID   disaster recovery into freshly built nodes
  rescue NODE [--onto PEER] [--power-off]
                                  a node lost for good: its volume attached to its DC peer, its
                                  maildirs merged and its queue delivered there, then detached

Exit status: 0 done (status: all checks pass), 1 status found a failing check or a test alert
was not delivered, 2 an error (bad input, unreachable target), printed without a traceback.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from typing import Any

from cluster.ops.accounts import Accounts
from cluster.ops.alerts import send_test
from cluster.ops.backup import Backups, render_snapshots
from cluster.ops.failover import Applier, LabApplier, StackApplier, plan_failover, run_failover
from cluster.ops.linode_volumes import LinodeApi
from cluster.ops.rescue import LabVolumes, LinodeVolumes, Volumes, rescue
from cluster.ops.status import collect, render_text
from cluster.ops.switchover import switchover
from cluster.ops.target import LabTarget, OpsError, StackTarget, Target


def read_password(prompt: str) -> str:
    """From stdin when it is not a terminal (scripts), else a prompt asked twice."""
    if not sys.stdin.isatty():
        pw = sys.stdin.readline().rstrip("\r\n")
    else:
        pw = getpass.getpass(prompt)
        if getpass.getpass("again: ") != pw:
            raise OpsError("the two passwords differ")
    if not pw:
        raise OpsError("empty password")
    return pw


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m cluster.ops",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--lab", action="store_true", help="the namespace lab on this machine")
    where.add_argument("--stack", metavar="NAME", help="a deployed stack (dc1, dc2, org/proj/dc1)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("status", help="health of every node and replication path")
    s.add_argument("--json", action="store_true")

    a = sub.add_parser("admin", help="Postfix Admin superadmins").add_subparsers(
        dest="action", required=True
    )
    a.add_parser("add").add_argument("email")

    d = sub.add_parser("domain", help="mail domains").add_subparsers(dest="action", required=True)
    d.add_parser("add").add_argument("domain")
    ddel = d.add_parser("del")
    ddel.add_argument("domain")
    ddel.add_argument("--remove-mailboxes", action="store_true",
                      help="delete the domain's mailboxes too (refused without)")  # fmt: skip
    d.add_parser("records").add_argument("domain")
    d.add_parser("dkim-rotate").add_argument("domain")
    d.add_parser("list")

    m = sub.add_parser("mailbox", help="mailboxes").add_subparsers(dest="action", required=True)
    madd = m.add_parser("add")
    madd.add_argument("email")
    madd.add_argument("--quota", type=int, default=0, metavar="MB", help="0: unlimited")
    m.add_parser("passwd").add_argument("email")
    m.add_parser("del").add_argument("email")
    m.add_parser("list").add_argument("domain", nargs="?", default="")

    al = sub.add_parser("alias", help="aliases").add_subparsers(dest="action", required=True)
    aadd = al.add_parser("add")
    aadd.add_argument("address")
    aadd.add_argument("dest", nargs="+")
    al.add_parser("del").add_argument("address")
    al.add_parser("list").add_argument("domain", nargs="?", default="")

    sub.add_parser("switchover", help="move the active role to the DC peer (planned)")
    f = sub.add_parser("failover", help="make a data centre the active one (both stacks)")
    f.add_argument("--to", required=True, choices=("dc1", "dc2"))
    f.add_argument("--yes", action="store_true", help="do it without asking")
    f.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    alerts = sub.add_parser("alerts", help="alerts to alertWebhook and alertEmail")
    alerts.add_subparsers(dest="action", required=True).add_parser("test")
    add_backup_commands(sub)
    r = sub.add_parser("rescue", help="deliver a lost node's mail from its volume, on its peer")
    r.add_argument("node", help="the node lost for good (down: it must not answer)")
    r.add_argument("--onto", metavar="PEER", help="the node that takes its volume (default: the "
                   "other node of its data centre)")  # fmt: skip
    r.add_argument("--power-off", action="store_true", help="power the node off first when it "
                   "does not answer but still runs (a hung or cut-off node)")  # fmt: skip
    return p


def add_backup_commands(sub: Any) -> None:
    b = sub.add_parser("backup", help="backups (restic)").add_subparsers(dest="action",
                                                                         required=True)  # fmt: skip
    b.add_parser("run")
    b.add_parser("list").add_argument("--json", action="store_true")
    b.add_parser("check")
    r = sub.add_parser("restore", help="restores from a backup").add_subparsers(
        dest="action", required=True
    )
    rm = r.add_parser("mailbox")
    rm.add_argument("user")
    rm.add_argument("--snapshot", default="latest")
    rm.add_argument("--to-folder", default="", metavar="NAME")
    r.add_parser("database").add_argument("--snapshot", default="latest")
    r.add_parser("cluster").add_argument("--snapshot", required=True)


def run_backups(args: argparse.Namespace, b: Backups) -> None:
    cmd, action = args.command, args.action
    if (cmd, action) == ("backup", "run"):
        print(f"snapshot {b.run()}")
    elif (cmd, action) == ("backup", "list"):
        print(json.dumps(b.snapshots_json(), indent=2) if args.json
              else render_snapshots(b.snapshots()))  # fmt: skip
    elif (cmd, action) == ("backup", "check"):
        print(b.check())
    elif (cmd, action) == ("restore", "mailbox"):
        print(b.restore_mailbox(args.user, args.snapshot, args.to_folder), end="")
    elif (cmd, action) == ("restore", "database"):
        print(b.restore_database(args.snapshot), end="")
    elif (cmd, action) == ("restore", "cluster"):
        print(b.restore_cluster(args.snapshot), end="")


def target_of(args: argparse.Namespace) -> Target:
    if args.lab:
        return LabTarget()
    if args.stack:
        return StackTarget.from_stack(args.stack)
    raise OpsError("say where: --lab (the namespace lab) or --stack NAME (a deployed stack)")


def applier_of(args: argparse.Namespace) -> Applier:
    if args.lab:
        return LabApplier()
    if args.stack:
        return StackApplier(args.stack)
    raise OpsError("say where: --lab (the namespace lab) or --stack NAME (a deployed stack)")


def volumes_of(args: argparse.Namespace) -> Volumes:
    """Where volumes are attached: the lab, or the Linode API (its token checked first)."""
    if args.lab:
        return LabVolumes()
    if args.stack:
        return LinodeVolumes(LinodeApi.from_env(), args.stack)
    raise OpsError("say where: --lab (the namespace lab) or --stack NAME (a deployed stack)")


def run_rescue(args: argparse.Namespace) -> int:
    volumes = volumes_of(args)
    report = rescue(target_of(args), volumes, args.node, args.onto,
                    lambda line: print(line, flush=True), power_off=args.power_off)  # fmt: skip
    print(report.describe())
    print(volumes.next_steps(report.dead))
    return 0


def confirmed(yes: bool) -> bool:
    """--yes, or an operator at a terminal who types yes; a script without --yes is refused."""
    if yes:
        return True
    if not sys.stdin.isatty():
        raise OpsError("failover changes both stacks: add --yes (or --dry-run to see the plan)")
    return input("go ahead? type yes: ").strip() == "yes"


def run_failover_command(args: argparse.Namespace) -> int:
    applier = applier_of(args)
    plan = plan_failover(args.to, applier.views())
    print(plan.describe(), flush=True)
    if args.dry_run or not plan.steps:
        return 0
    if not confirmed(args.yes):
        print("not confirmed: nothing changed")
        return 2
    for name, seconds in run_failover(plan, applier, lambda line: print(line, flush=True)):
        print(f"{name}: {seconds:.1f} s")
    return 0


def run_accounts(args: argparse.Namespace, acc: Accounts) -> None:
    cmd, action = args.command, args.action
    if (cmd, action) == ("admin", "add"):
        print(acc.admin_add(args.email, read_password(f"password for {args.email}: ")), end="")
    elif (cmd, action) == ("domain", "add"):
        print(acc.domain_add(args.domain), end="")
    elif (cmd, action) == ("domain", "del"):
        print(acc.domain_del(args.domain, args.remove_mailboxes), end="")
    elif (cmd, action) == ("domain", "dkim-rotate"):
        print(acc.domain_dkim_rotate(args.domain), end="")
    elif (cmd, action) == ("domain", "records"):
        print(acc.domain_records(args.domain), end="")
    elif (cmd, action) == ("domain", "list"):
        print("\n".join(acc.domains()))
    elif (cmd, action) == ("mailbox", "add"):
        pw = read_password(f"password for {args.email}: ")
        print(acc.mailbox_add(args.email, pw, args.quota), end="")
    elif (cmd, action) == ("mailbox", "passwd"):
        print(acc.mailbox_passwd(args.email, read_password(f"new password for {args.email}: ")),
              end="")  # fmt: skip
    elif (cmd, action) == ("mailbox", "del"):
        print(acc.mailbox_del(args.email), end="")
    elif (cmd, action) == ("mailbox", "list"):
        print("\n".join(acc.mailboxes(args.domain)))
    elif (cmd, action) == ("alias", "add"):
        print(acc.alias_add(args.address, args.dest), end="")
    elif (cmd, action) == ("alias", "del"):
        print(acc.alias_del(args.address), end="")
    elif (cmd, action) == ("alias", "list"):
        print("\n".join(acc.aliases(args.domain)))


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "failover":
            return run_failover_command(args)
        if args.command == "rescue":
            return run_rescue(args)
        target = target_of(args)
        if args.command == "switchover":
            r = switchover(target, lambda line: print(line, flush=True))
            print(f"switchover {r.old} -> {r.new}: writable master after {r.promoted_s:.2f} s, "
                  f"{r.old} replicating after {r.rejoined_s:.2f} s")  # fmt: skip
            return 0
        if args.command == "status":
            data = collect(target)
            print(json.dumps(data, indent=2) if args.json else render_text(data))
            return 0 if data["ok"] else 1
        if args.command == "alerts":
            node, res = send_test(target)
            print(f"from {node}:\n{res.stdout}", end="")
            print(res.stderr, end="", file=sys.stderr)
            return 0 if res.returncode == 0 else 1
        if args.command in ("backup", "restore"):
            run_backups(args, Backups(target))
        else:
            run_accounts(args, Accounts(target))
        return 0
    except OpsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
