"""Accounts: admins, domains, mailboxes and aliases, through Postfix Admin's own code on the
writable master (``mailcluster-mailbox`` on the node; replicas get every change by MariaDB
replication). Passwords travel on stdin, never on a command line.

Checks here are the ones Postfix Admin cannot make before it writes anything: a malformed
address, or a mailbox/alias in a domain that does not exist. Postfix Admin itself refuses
duplicates and weak passwords (its ``password_validation`` rules), and writes nothing then.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence

from cluster.ops.status import writer_of
from cluster.ops.target import OpsError, Target
from cluster.services.domains import SCRIPT as DOMAINS_CLI
from cluster.services.domains import SYNC_EVERY_S
from cluster.services.dovecot import AUTH_CACHE_TTL_S
from cluster.services.postfixadmin import MAILBOX_CLI

_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
_LOCAL = re.compile(r"^[a-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}$")


def check_domain(domain: str) -> str:
    d = domain.strip().lower()
    if not _DOMAIN.match(d):
        raise OpsError(f"{domain!r} is not a domain name (like example.com)")
    return d


def check_address(address: str) -> str:
    a = address.strip().lower()
    local, _, domain = a.partition("@")
    if not local or not _LOCAL.match(local) or not _DOMAIN.match(domain):
        raise OpsError(f"{address!r} is not an e-mail address (like alice@example.com)")
    return a


def flush_auth_cache(target: Target, users: Sequence[str] = ()) -> None:
    """Drops ``users`` (every user when empty) from each node's Dovecot auth cache, so a changed
    password, a deleted mailbox or a restored database counts at once on every node, not only
    after the cache's TTL (dovecot.py). A node that cannot do it is named on stderr; the change
    itself is made, and that node's cache forgets the old entry within the TTL."""
    for node in target.nodes():
        res = target.run(node, ["doveadm", "auth", "cache", "flush", *users])
        if res.returncode != 0:
            why = (res.stderr.strip() or res.stdout.strip() or "failed").splitlines()[-1]
            print(f"warning: {node}: Dovecot's auth cache not flushed ({why}); there the old "
                  f"password may work for up to {AUTH_CACHE_TTL_S} s", file=sys.stderr)  # fmt: skip


class Accounts:
    def __init__(self, target: Target) -> None:
        self.target = target
        writer = writer_of(target, target.nodes())
        if writer is None:
            raise OpsError(
                f"{target.description}: no node is the writable master (is the cluster up? "
                "`status` shows why)"
            )
        self.node = writer

    def _run(self, *args: str, stdin: str = "") -> str:
        res = self.target.run(self.node, [MAILBOX_CLI, *args], stdin=stdin)
        if res.returncode != 0:
            raise OpsError((res.stderr.strip() or res.stdout.strip())[-500:] or "failed")
        return res.stdout

    def domains(self) -> list[str]:
        return self._run("domain-list").split()

    def _known_domain(self, address: str) -> None:
        domain = address.partition("@")[2]
        if domain not in self.domains():
            raise OpsError(f"unknown domain {domain!r}: add it first (`domain add {domain}`)")

    def admin_add(self, email: str, password: str) -> str:
        return self._run("admin-add", check_address(email), stdin=password + "\n")

    def _domains_cli(self, node: str, *args: str) -> str:
        res = self.target.run(node, [DOMAINS_CLI, *args])
        if res.returncode != 0:
            raise OpsError((res.stderr.strip() or res.stdout.strip())[-500:] or "failed")
        return res.stdout

    def domain_add(self, domain: str) -> str:
        """The domain in Postfix Admin, then whole on every node at once: its DKIM key made on
        the writer, its zone on the DNS masters (the catalog takes it to the secondaries), the
        key with every node's rspamd. Prints what to set at the registrar."""
        d = check_domain(domain)
        self._domains_cli(self.node, "check", d)
        out = self._run("domain-new", d)
        self.follow(d, present=True)
        return out + self._domains_cli(self.node, "records", d)

    def domain_del(self, domain: str, remove_mailboxes: bool = False) -> str:
        """Refused while the domain has mailboxes, unless ``remove_mailboxes`` (each removed as
        ``mailbox del`` does); then the domain, its aliases, key and zone go on every node."""
        d = check_domain(domain)
        self._domains_cli(self.node, "check", d)
        if d not in self.domains():
            raise OpsError(f"no domain {d}")
        boxes = [line.split("\t", 1)[0] for line in self._run("list", d).splitlines()]
        if boxes and not remove_mailboxes:
            raise OpsError(
                f"{d} still has {len(boxes)} mailbox(es) ({', '.join(boxes[:3])}"
                f"{', ...' if len(boxes) > 3 else ''}): delete them first, or add "
                "--remove-mailboxes (their mail stays on the nodes' disks, as with `mailbox del`)"
            )
        out = "".join(self._run("del", box) for box in boxes)
        if boxes:
            flush_auth_cache(self.target, boxes)
        out += self._run("domain-del", d)
        self.follow(d, present=False)
        return out

    def domain_dkim_rotate(self, domain: str) -> str:
        """A new DKIM key for a further domain: published on every name server at once, signing
        only after two TTLs (mailnode/domains.py); the old key stays published a week more."""
        d = check_domain(domain)
        self._domains_cli(self.node, "check", d)
        out = self._domains_cli(self.node, "rotate", d)
        self.follow(d, present=True)
        return out

    def domain_records(self, domain: str) -> str:
        return self._domains_cli(self.node, "records", check_domain(domain))

    def follow(self, domain: str, present: bool) -> None:
        """Every node's keys and zones follow the database now, the writer first (it makes
        the key the others copy). A node that cannot is named; its timer catches up."""
        flag = "--expect" if present else "--expect-gone"
        for node in (self.node, *(n for n in self.target.nodes() if n != self.node)):
            res = self.target.run(node, [DOMAINS_CLI, "sync", flag, domain])
            if res.returncode != 0:
                if node == self.node:
                    raise OpsError((res.stderr.strip() or "sync failed")[-500:])
                why = (res.stderr.strip() or res.stdout.strip() or "failed").splitlines()[-1]
                print(f"warning: {node}: not synced now ({why}); its timer does it within "
                      f"{SYNC_EVERY_S} s of its return", file=sys.stderr)  # fmt: skip

    def mailbox_add(self, address: str, password: str, quota_mb: int = 0) -> str:
        a = check_address(address)
        self._known_domain(a)
        return self._run("add", a, "--quota", str(quota_mb), stdin=password + "\n")

    def mailbox_passwd(self, address: str, password: str) -> str:
        a = check_address(address)
        out = self._run("passwd", a, stdin=password + "\n")
        flush_auth_cache(self.target, [a])
        return out

    def mailbox_del(self, address: str) -> str:
        a = check_address(address)
        out = self._run("del", a)
        flush_auth_cache(self.target, [a])
        return out

    def mailboxes(self, domain: str = "") -> list[str]:
        """One line per mailbox: Postfix Admin's (address, active, quota in MB; tab-separated)
        and two more columns from Dovecot on the writable master: the space used in MB and
        the share of the quota ("-" without a quota; "?" when Dovecot did not answer)."""
        args = [check_domain(domain)] if domain else []
        lines = self._run("list", *args).splitlines()
        used = self.usage()
        out = []
        for line in lines:
            address = line.split("\t", 1)[0]
            if used is None or address not in used:
                out.append(f"{line}\t?\t?")
                continue
            kib, limit_kib = used[address]
            share = f"{100 * kib // limit_kib}%" if limit_kib else "-"
            out.append(f"{line}\t{kib / 1024:.1f}\t{share}")
        return out

    def usage(self) -> dict[str, tuple[int, int | None]] | None:
        """Every mailbox's storage in use and its limit, in KiB (``doveadm quota get -A``, as
        Dovecot counts it; no limit: None), or None when Dovecot did not answer."""
        res = self.target.run(self.node, ["doveadm", "-f", "tab", "quota", "get", "-A"])
        if res.returncode != 0:
            return None
        rows = res.stdout.splitlines()
        if not rows:
            return {}
        head = rows[0].split("\t")
        out: dict[str, tuple[int, int | None]] = {}
        for row in rows[1:]:
            cell = dict(zip(head, row.split("\t"), strict=False))
            if cell.get("Type") != "STORAGE":
                continue
            limit = cell.get("Limit", "-")
            out[cell["Username"]] = (int(cell["Value"]), int(limit) if limit.isdigit() else None)
        return out

    def alias_add(self, address: str, goto: list[str]) -> str:
        a = check_address(address)
        self._known_domain(a)
        dests = [check_address(g) for g in goto]
        if not dests:
            raise OpsError("an alias needs at least one destination address")
        return self._run("alias-add", a, "--goto", ",".join(dests))

    def alias_del(self, address: str) -> str:
        return self._run("alias-del", check_address(address))

    def aliases(self, domain: str = "") -> list[str]:
        args = [check_domain(domain)] if domain else []
        return self._run("alias-list", *args).splitlines()
