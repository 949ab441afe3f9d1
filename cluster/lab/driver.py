"""The lab as a program drives it: tests and benchmarks script ``python -m cluster.lab`` through
this one class, as users and CI script the command line.

Failures raise ``DriverError``, which is also an ``AssertionError``: in a test a lab command that
fails or a wait that times out is a failed expectation, and pytest reports it as one.
"""

from __future__ import annotations

import collections
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from cluster import ports
from cluster.config import StackConfig
from cluster.lab import addresses as A
from cluster.lab import cgroups, holdwatch, lifecycle, routeservers
from cluster.lab.model import lab_topology
from cluster.lab.run import LabError
from cluster.lab.secrets import ca_file
from cluster.lab.stacks import stack_topology
from cluster.lab.state import LabState
from cluster.services import bayes
from mailnode import dnssec

REPO = Path(__file__).resolve().parents[2]
ROLE_TOOL = "mailcluster-role"
T = TypeVar("T")


class DriverError(LabError, AssertionError):
    """A lab command failed, or what a caller waited for did not happen in time."""


def public_ip(host: str) -> str:
    dc, slot = host.split("-")
    return A.lab_dc_addresses(dc).nodes[slot].public_ipv4


def private_ip(host: str) -> str:
    dc, slot = host.split("-")
    return A.lab_dc_addresses(dc).nodes[slot].private_ipv4


def mesh_ip(host: str) -> str:
    """A host's address on the WireGuard mesh (the lab's meshCidr)."""
    topo = lab_topology("dc1")
    return topo.mesh_address(topo.node(host))


def shared_ip(dc: str) -> str:
    return A.lab_dc_addresses(dc).shared_ipv4


def shared_ip6(dc: str) -> str:
    """The shared IPv6 of ``dc`` (an address of its shared routed range)."""
    addr = A.lab_dc_addresses(dc).shared_ipv6
    assert addr is not None  # the lab is dual stack
    return addr


def last_json(out: str) -> dict[str, Any]:
    """The JSON object a clientlib command prints as its last line."""
    data: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return data


class Background:
    """A clientlib command running in the client while the caller does other things."""

    def __init__(
        self, argv: list[str], stop_file: Path | None = None, progress_file: Path | None = None
    ) -> None:
        self.stop_file = stop_file
        self.progress_file = progress_file
        self.proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, text=True)

    def progress(self) -> int:
        """The lines of progress reported so far."""
        assert self.progress_file is not None, "this command reports no progress"
        if not self.progress_file.exists():
            return 0
        return len(self.progress_file.read_text().splitlines())

    def wait_progress(self, count: int, timeout: float = 30) -> float:
        """Until the command reported ``count`` lines of progress (a stream: acknowledged
        messages), instead of sleeping for what a warm-up usually takes. Returns the seconds."""
        assert self.progress_file is not None, "this command reports no progress"
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.progress() >= count:
                return time.monotonic() - t0
            if self.proc.poll() is not None:
                raise DriverError(f"the command ended before {count} lines of progress: "
                                  f"{self.proc.communicate()[0]}")  # fmt: skip
            time.sleep(0.1)
        raise DriverError(f"timed out after {timeout:.0f}s waiting for {count} lines of progress")

    def result(self, timeout: float = 300) -> dict[str, Any]:
        """Ask it to stop (when it takes a stop file), then its JSON result."""
        if self.stop_file is not None:
            self.stop_file.touch()
        out, _ = self.proc.communicate(timeout=timeout)
        return last_json(out)


class HoldWatch:
    """``holdwatch.WATCH`` running in each of ``hosts`` until ``result()`` (see holdwatch.py)."""

    def __init__(self, lab: Lab, hosts: Iterable[str]) -> None:
        self.lab, self.hosts = lab, list(hosts)
        tag = secrets.token_hex(4)
        self.stop, self.out = f"/run/mclab-holdwatch-{tag}.stop", f"/run/mclab-holdwatch-{tag}"
        for host in self.hosts:
            # setsid -f: the watch outlives this exec (its output goes to a file, not to us).
            lab.exec(host, "setsid", "-f", "python3", "-c", holdwatch.WATCH,
                     holdwatch.ANNOUNCE_FILE, self.stop, self.out,
                     str(holdwatch.INTERVAL_S))  # fmt: skip
        for host in self.hosts:  # started: its first line is written
            lab.wait_for(f"the hold watch on {host}", partial(self._output, host), timeout=20,
                         interval=0.2)  # fmt: skip

    def _output(self, host: str, ended: bool = False) -> str:
        """The watch's output on ``host`` so far ("" while there is none, or, with ``ended``,
        while it has not ended)."""
        text = self.lab.exec(host, "cat", self.out, check=False).stdout
        return text if text.strip() and (not ended or text.rstrip().endswith("end")) else ""

    def result(self) -> list[tuple[float, float]]:
        """Stop the watches; the stretches (unix times) during which two or more held."""
        for host in self.hosts:
            self.lab.exec(host, "touch", self.stop)
        timelines, ends = {}, []
        for host in self.hosts:
            text = self.lab.wait_for(f"the hold watch on {host} to end",
                                     partial(self._output, host, True), timeout=10,
                                     interval=0.2)  # fmt: skip
            timelines[host], end = holdwatch.parse(text)
            ends.append(end)
            self.lab.exec(host, "rm", "-f", self.stop, self.out)
        return holdwatch.overlaps(timelines, min(ends))


class Lab:
    """The lab's command line, plus what every script of it needs on top."""

    def __init__(self) -> None:
        self.up_seconds = 0.0  # the session's `up`, and whether its base was in the cache
        self.base_was_cached = True

    # -- the command line ----------------------------------------------------------------------

    def run(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 900,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """``python -m cluster.lab -q ARGS``; ``env`` adds to this process's environment."""
        proc = subprocess.run(
            [sys.executable, "-m", "cluster.lab", "-q", *args],
            cwd=REPO,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=None if env is None else {**os.environ, **env},
            check=False,
        )
        if check and proc.returncode != 0:
            raise DriverError(
                f"lab {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def ops(
        self, *args: str, stdin: str = "", check: bool = True, timeout: float = 900
    ) -> subprocess.CompletedProcess[str]:
        """The operator CLI against this lab: ``python -m cluster.ops --lab ARGS``."""
        proc = subprocess.run(
            [sys.executable, "-m", "cluster.ops", "--lab", *args],
            cwd=REPO,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise DriverError(
                f"ops {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def spawn(self, *args: str) -> subprocess.Popen[str]:
        """``python -m cluster.lab -q ARGS`` in the background, its stdout piped."""
        argv = [sys.executable, "-m", "cluster.lab", "-q", *args]
        return subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, text=True)

    def timed(self, *args: str, **kw: Any) -> tuple[float, subprocess.CompletedProcess[str]]:
        t0 = time.monotonic()
        proc = self.run(*args, **kw)
        return time.monotonic() - t0, proc

    def exec(
        self, host: str, *cmd: str, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return self.run("exec", host, "--", *cmd, check=check, input=input)

    def client(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("client", "--", *cmd, check=check)

    def validated(self, server: str, dnskey: str, name: str, rtype: str) -> str:
        """``delv`` at ``server`` from the client, a zone's DNSKEY record (``dnskey``) its only
        trust anchor: delv's answer when it is "fully validated"; a DriverError with delv's
        words otherwise."""
        anchor = Path(tempfile.mkdtemp(prefix="mclab-anchor-")) / "anchor.conf"
        anchor.write_text(dnssec.trust_anchor(dnskey))
        zone = dnskey.split()[0]
        out = self.client("delv", f"@{server}", "-a", str(anchor), f"+root={zone}", name, rtype,
                          check=False)  # fmt: skip
        shutil.rmtree(anchor.parent)
        text = out.stdout + out.stderr
        if "; fully validated" not in text:
            raise DriverError(f"delv @{server} {name} {rtype}: not validated:\n{text}")
        return text

    def tlsa_validated(self, server: str, dnskey: str, name: str) -> list[str]:
        """The TLSA records of ``name`` at ``server``, validated (``validated``), each as its
        presentation data in one piece (usage selector matching HEX)."""
        text = self.validated(server, dnskey, name, "TLSA")
        found = []
        for fields in map(str.split, text.splitlines()):
            if fields[3:4] == ["TLSA"] and not fields[0].startswith(";"):
                found.append(" ".join([*fields[4:7], "".join(fields[7:]).upper()]))
        return found

    def smtp_dane(self, server: str, mx_host: str, tlsa: str) -> str:
        """OpenSSL's DANE verifier (the library Postfix's ``dane`` level uses) at
        ``server``:25 after STARTTLS, ``tlsa`` the MX host's only record and ``mx_host`` the
        name a DANE-TA record requires the certificate to carry (RFC 7672 3.2.3): OpenSSL's
        "DANE TLSA ... matched" line; a DriverError with OpenSSL's words otherwise."""
        host = f"[{server}]" if ":" in server else server
        out = self.client("openssl", "s_client", "-brief", "-connect", f"{host}:{ports.SMTP_PORT}",
                          "-starttls", "smtp", "-dane_tlsa_domain", mx_host,
                          "-dane_tlsa_rrdata", tlsa, "-verify_return_error",
                          check=False)  # fmt: skip
        text = out.stdout + out.stderr
        matched = [ln for ln in text.splitlines() if ln.startswith("DANE TLSA ")]
        if out.returncode or "Verification: OK" not in text or not matched:
            raise DriverError(f"DANE at {server} for {mx_host} with {tlsa}: not verified:\n{text}")
        return matched[0]

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.run("status", "--json").stdout)
        return data

    def add_mailbox(self, address: str, password: str) -> None:
        self.run("mailbox", "add", address, password)

    def new_mailbox(self, domain: str, prefix: str = "u") -> tuple[str, str]:
        """A fresh mailbox with a random name and password: (address, password)."""
        address = f"{prefix}{secrets.token_hex(4)}@{domain}"
        password = "P" + secrets.token_hex(12)
        self.add_mailbox(address, password)
        return address, password

    def rebuild(self, host: str) -> tuple[float, str]:
        """`rebuild HOST`: a fresh OS disk, the same volume, boot, its stack applied. Returns
        the seconds it took and the command's report line."""
        seconds, proc = self.timed("rebuild", host, timeout=1800)
        return seconds, proc.stdout.strip().splitlines()[-1]

    def crash_now(self, host: str) -> None:
        """`crash HOST` in this process, so the caller knows the crash instant to the ms."""
        lifecycle.crash(host)

    # -- the client ("the internet") -----------------------------------------------------------

    @property
    def ca(self) -> str:
        """The cluster CA, for clients that verify the lab's TLS."""
        return str(ca_file())

    def clientlib(self, *args: str) -> dict[str, Any]:
        """``python3 -m cluster.lab.clientlib ARGS`` in the client: its JSON result."""
        proc = self.client("python3", "-m", "cluster.lab.clientlib", *args, check=False)
        try:
            return last_json(proc.stdout)
        except (IndexError, ValueError) as e:
            raise DriverError(f"clientlib {args[0]}: {proc.stdout}\n{proc.stderr}") from e

    def start_clientlib(
        self, *args: str, stop_file: Path | None = None, progress_file: Path | None = None
    ) -> Background:
        """A clientlib command in the background (directly in the client namespace: no CLI
        start-up delay, for probes that must start at once)."""
        argv = [sys.executable, "-m", "cluster.lab.clientlib", *args]
        return Background(lifecycle.client_argv(argv), stop_file, progress_file)

    def watch_port(self, host: str, port: int = 25, interval: float = 0.05) -> Background:
        """Connections to ``host``:``port`` every ``interval`` s from the client until
        ``result()``: the longest stretch without an answer (clientlib watch)."""
        stop = Path(tempfile.mkdtemp()) / "stop"
        return self.start_clientlib("watch", "--host", host, "--port", str(port),
                                    "--interval", str(interval), "--stop", str(stop),
                                    stop_file=stop)  # fmt: skip

    def browser(
        self, ip: str, host: str, command: str, *args: str, password: str = "",
        timeout: float = 180,
    ) -> dict[str, Any]:  # fmt: skip
        """A user's headless chromium in the client (``cluster.lab.browser COMMAND ARGS``,
        with the venv's python, which has selenium): ``host`` maps to ``ip``, TLS is checked
        against the lab's CA, ``password`` goes on stdin. Its JSON result."""
        proc = self.run("client", "--", sys.executable, "-m", "cluster.lab.browser",
                        "--ca", self.ca, "--host", host, "--ip", ip, command, *args,
                        input=password + "\n", check=False, timeout=timeout)  # fmt: skip
        try:
            return last_json(proc.stdout)
        except (IndexError, ValueError) as e:
            raise DriverError(f"browser {command}: {proc.stdout}\n{proc.stderr}") from e

    def managesieve(
        self, ip: str, host: str, login: tuple[str, str], *action: str
    ) -> subprocess.CompletedProcess[str]:
        """Debian's sieve-connect from the client to ``ip``:4190 as ``login``: STARTTLS, the
        certificate checked against the lab's CA and ``host``; the password through a 0600 file
        on a file descriptor, never on a command line."""
        with tempfile.TemporaryDirectory() as tmp:
            pw = Path(tmp) / "password"
            pw.touch(mode=0o600)
            pw.write_text(login[1] + "\n")
            return self.client(
                "sh", "-c", 'exec sieve-connect "$@" 3<"$0"', str(pw),
                "--server", ip, "--port", str(ports.MANAGESIEVE_PORT), "--user", login[0],
                "--passwordfd", "3", "--tlscafile", self.ca, "--tlshostname", host, *action,
                check=False,
            )  # fmt: skip

    def watch_holders(self, hosts: Iterable[str]) -> HoldWatch:
        """Whether each of ``hosts`` holds its shared IP (bgp), every 50 ms inside the node,
        until ``result()``: the stretches during which two held at once."""
        return HoldWatch(self, hosts)

    def send(self, host: str, user: tuple[str, str], subject: str, port: int = 587) -> Any:
        """A message from ``user`` to itself over submission: STARTTLS, AUTH."""
        return self.clientlib(
            "send", "--host", host, "--port", str(port), "--ca", self.ca, "--starttls",
            "--user", user[0], "--password", user[1], "--sender", user[0], "--to", user[0],
            "--subject", subject,
        )  # fmt: skip

    def _read_mail(
        self, host: str, user: tuple[str, str], prefix: str, *wait: str, timeout: float
    ) -> dict[str, Any]:
        """``clientlib subjects`` for the user's INBOX over IMAPS; ``wait``: its --count or
        --expect."""
        got: dict[str, Any] = self.clientlib(
            "subjects", "--host", host, "--ca", self.ca, "--user", user[0],
            "--password", user[1], "--subject", prefix, *wait, "--timeout", str(timeout),
        )  # fmt: skip
        return got

    def subjects(
        self, host: str, user: tuple[str, str], prefix: str, count: int, timeout: float = 60
    ) -> set[str]:
        """The subjects starting with ``prefix`` in the user's INBOX over IMAPS, once ``count``
        are there (or ``timeout`` passed)."""
        got = self._read_mail(host, user, prefix, "--count", str(count), timeout=timeout)
        return set(got["subjects"])

    def mail(
        self, host: str, user: tuple[str, str], prefix: str, expect: Iterable[str],
        timeout: float = 60,
    ) -> collections.Counter[str]:  # fmt: skip
        """How many copies of each message whose subject starts with ``prefix`` the user's INBOX
        holds over IMAPS, once every subject of ``expect`` is there (or ``timeout`` passed): a
        message delivered twice counts 2."""
        got = self._read_mail(host, user, prefix, "--expect", json.dumps(sorted(expect)),
                              timeout=timeout)  # fmt: skip
        counts = collections.Counter({s: 1 for s in got["subjects"]})
        counts.update({s: n - 1 for s, n in got["copies"].items()})
        return counts

    def stream(
        self, host: str, user: tuple[str, str], prefix: str, seconds: float = 120,
        rate: float = 5,
    ) -> Background:  # fmt: skip
        """The client's steady sender over 587 (clientlib stream) until ``result()``;
        ``wait_progress(n)`` waits for its n-th 250."""
        tmp = Path(tempfile.mkdtemp())
        stop, progress = tmp / "stop", tmp / "acked"
        return self.start_clientlib("stream", "--host", host, "--ca", self.ca,
                                    "--user", user[0], "--password", user[1],
                                    "--subject", prefix, "--seconds", str(seconds),
                                    "--rate", str(rate), "--stop", str(stop),
                                    "--progress", str(progress),
                                    stop_file=stop, progress_file=progress)  # fmt: skip

    # -- inside the hosts ----------------------------------------------------------------------

    def inbox_subjects(self, host: str, user: str) -> list[str]:
        """Every INBOX subject of ``user`` on ``host`` as Dovecot there has it (duplicates
        kept), read with doveadm on the node: also where nothing serves IMAP."""
        out = self.exec(host, "doveadm", "-f", "tab", "fetch", "-u", user, "hdr.subject",
                        "mailbox", "INBOX", "all").stdout  # fmt: skip
        return sorted(line for line in out.splitlines()[1:] if line)

    def role(self, host: str, *, check: bool = True) -> dict[str, Any]:
        """``mailcluster-role status --json`` on the host. With ``check=False`` a host that
        cannot answer (down, booting) gives ``{}`` instead of an error."""
        proc = self.exec(host, ROLE_TOOL, "status", "--json", check=check)
        try:
            data: dict[str, Any] = json.loads(proc.stdout)
        except ValueError:
            if check:
                raise
            return {}
        return data

    def bayes(self, host: str) -> dict[str, Any]:
        """``mailcluster-bayes status --json`` on the host: what rspamd has learned, as its
        Valkey holds it ("learned": {"spam", "ham"}), and that Valkey's role and source."""
        data: dict[str, Any] = json.loads(self.exec(host, bayes.SCRIPT, "status", "--json").stdout)
        return data

    def holders(self, hosts: Iterable[str]) -> list[str]:
        """Which of ``hosts`` hold their data centre's shared IP."""
        return [h for h in hosts if self.role(h)["vip_held"]]

    def sql(self, host: str, query: str) -> str:
        return self.exec(host, "mysql", "-uroot", "-N", "-B", "-e", query).stdout.strip()

    def cpu_seconds(self, hosts: Iterable[str]) -> dict[str, float]:
        """Each host's CPU time (user + system) so far, from its cgroup (see cgroups.py)."""
        state = LabState.load()
        out = {}
        for host in hosts:
            rec = state.hosts.get(host)
            if rec is None or not rec.pid:
                raise DriverError(f"{host} is not running")
            out[host] = cgroups.cpu_seconds(rec.cgroup)
        return out

    # -- the route servers (sharedIpMethod bgp) ------------------------------------------------

    def stack_config(self, dc: str) -> StackConfig:
        """The stack's config as the lab applies it (with its kept ``--set`` overrides)."""
        return stack_topology(LabState.load(), dc).config

    def shared_ip_method(self, dc: str) -> str:
        """How the router reaches ``dc``'s shared addresses now: "bgp" or "arp"."""
        return routeservers.routed_method(dc)

    def routed_to(self, dc: str) -> dict[str, str | None]:
        """The node the route servers of ``dc`` send each family's shared address to."""
        return routeservers.preferred(dc)

    def wait_routed(self, dc: str, host: str, timeout: float = 60) -> float:
        """With bgp, until the route servers send both shared addresses of ``dc`` to ``host``
        (after a crash: the dead node's hold time); with arp, at once. Returns the seconds."""
        t0 = time.monotonic()
        if self.shared_ip_method(dc) == "bgp":
            self.wait_for(f"the route servers of {dc} to route to {host}",
                          lambda: set(self.routed_to(dc).values()) == {host},
                          timeout=timeout, interval=0.2)  # fmt: skip
        return time.monotonic() - t0

    # -- waiting -------------------------------------------------------------------------------

    def wait_for(
        self, what: str, probe: Callable[[], T], timeout: float = 60, interval: float = 0.5
    ) -> T:
        """Poll ``probe()`` until it returns something truthy; fail naming ``what``."""
        deadline = time.monotonic() + timeout
        last: T | None = None
        while time.monotonic() < deadline:
            last = probe()
            if last:
                return last
            time.sleep(interval)
        raise DriverError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last}")
