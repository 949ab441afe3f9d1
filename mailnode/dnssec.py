"""DNSSEC for the zones mailcluster-domains serves: one key per zone, kept in the replicated
database, and the zone signed once, by the writer, into the database too.

Why not BIND's inline signing (``dnssec-policy``) on each master: both masters of the active
data centre serve every zone, and two signers diverge. Each re-signs on its own random schedule
and bumps its own serial, so the secondaries follow whichever serial is higher and an IXFR across
the two histories fails; and a master promoted in the other data centre, starting without the
old signed copy, signs below the serial the secondaries hold, which then ignore it (BIND 9.20's
``receive_secure_serial``; notes in the issue). One signer per zone, with the output shared,
avoids all of it:

- the key (ECDSA P-256, algorithm 13, RFC 8624's MUST; one CSK, no rollover: the DS at the parent
  never has to change) is made once by the writer with ``dnssec-keygen`` and kept in the
  database, so whichever node or data centre is the master later signs with the same key and the
  chain of trust holds across every failover;
- the writer signs with ``dnssec-signzone`` when the content changes or the signatures have less
  than ``RESIGN_LEFT_S`` to live, and stores the signed text with the serial; every master then
  writes those exact bytes (same serial, same RRSIGs), the secondaries transfer them.

The key's files exist only in a private temporary directory for the moment a tool runs (0700,
the private one 0600), never in the plan, a command line or a log.
"""

from __future__ import annotations

import calendar
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

ALGORITHM = "ECDSAP256SHA256"  # 13: RFC 8624 MUST for signers, BIND's dnssec-policy default
# Signatures live this long; the writer re-signs once less than RESIGN_LEFT_S is left (every 3
# days), and a node alerts once what it serves has less than ALERT_LEFT_S (4 days of a writer
# that failed to re-sign: mail-in-a-box#2168 was signatures nobody watched run out).
VALIDITY_S = 14 * 86400
RESIGN_LEFT_S = 11 * 86400
ALERT_LEFT_S = 7 * 86400
# Signatures valid from an hour ago: a validator whose clock is a little behind accepts them.
BACKDATE_S = 3600
_KEY_NAME = re.compile(r"K([a-z0-9.-]+)\.\+013\+(\d{5})")

Runner = Callable[..., subprocess.CompletedProcess[Any]]


class DnssecError(Exception):
    """A DNSSEC tool failed or answered what was not expected."""


@dataclass(frozen=True)
class ZoneKey:
    """A zone's signing key (a CSK: flags 257, signs every record), as BIND's two files."""

    zone: str
    name: str  # K<zone>.+013+<tag>
    public: str  # the .key file: the DNSKEY record, public
    private: str  # the .private file: a secret, only in the database and for a signing run
    ds: str  # the DS record (SHA-256, RFC 4509) the parent zone publishes

    @property
    def dnskey(self) -> str:
        """The DNSKEY record line (``ZONE. TTL IN DNSKEY 257 3 13 ...``)."""
        for line in self.public.splitlines():
            if line.strip() and not line.startswith(";"):
                return line.strip()
        raise DnssecError(f"{self.name}.key holds no DNSKEY record")

    @property
    def tag(self) -> int:
        return int(self.name.rsplit("+", 1)[1])

    def trust_anchor(self) -> str:
        return trust_anchor(self.dnskey)


def trust_anchor(dnskey: str) -> str:
    """A DNSKEY record line as a validator's trust anchor (``delv -a``, named's
    ``trust-anchors``)."""
    owner, _ttl, _cls, _type, flags, proto, alg, *material = dnskey.split()
    return (f'trust-anchors {{ {owner} static-key {flags} {proto} {alg} '
            f'"{"".join(material)}"; }};\n')  # fmt: skip


def key_name_of(zone: str, name: str) -> bool:
    """Whether ``name`` is what dnssec-keygen calls a key of ``zone`` with our algorithm (the
    name becomes a file name: nothing else may pass)."""
    found = _KEY_NAME.fullmatch(name)
    return found is not None and found.group(1) == zone.rstrip(".")


def stamp(t: float) -> str:
    """An RRSIG time (RFC 4034 3.2): YYYYMMDDHHMMSS in UTC."""
    return time.strftime("%Y%m%d%H%M%S", time.gmtime(t))


def parse_stamp(text: str) -> int:
    return calendar.timegm(time.strptime(text, "%Y%m%d%H%M%S"))


def _write(path: str, text: str, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def new_key(zone: str, ttl: int, run: Runner = subprocess.run) -> ZoneKey:
    """A fresh key for ``zone`` (the writer, once per zone)."""
    with tempfile.TemporaryDirectory(prefix="mailcluster-dnssec-") as tmp:
        made = run(["dnssec-keygen", "-q", "-K", tmp, "-a", ALGORITHM, "-f", "KSK", "-L",
                    str(ttl), zone], capture_output=True, text=True, check=True)  # fmt: skip
        name = made.stdout.strip()
        if not key_name_of(zone, name):
            raise DnssecError(f"dnssec-keygen named its key {name!r}, not K{zone}.+013+NNNNN")
        with open(f"{tmp}/{name}.key") as f:
            public = f.read()
        with open(f"{tmp}/{name}.private") as f:
            private = f.read()
        ds = run(["dnssec-dsfromkey", "-2", f"{tmp}/{name}.key"], capture_output=True,
                 text=True, check=True).stdout.strip()  # fmt: skip
    return ZoneKey(zone, name, public, private, ds)


def sign(
    zone: str, unsigned: str, key: ZoneKey, now: float, run: Runner = subprocess.run
) -> tuple[str, int]:
    """``unsigned`` (which must carry ``key.dnskey``) signed with ``key``: the signed zone's
    text and the moment its signatures expire. NSEC (the names of a mail domain are no secret);
    dnssec-signzone verifies its own output before it prints it."""
    expires = int(now) + VALIDITY_S
    with tempfile.TemporaryDirectory(prefix="mailcluster-dnssec-") as tmp:
        _write(f"{tmp}/{key.name}.key", key.public, 0o644)
        _write(f"{tmp}/{key.name}.private", key.private, 0o600)
        _write(f"{tmp}/zone", unsigned, 0o600)
        signed = run(
            ["dnssec-signzone", "-q", "-z", "-K", tmp, "-d", tmp, "-o", zone, "-N", "keep",
             "-s", stamp(now - BACKDATE_S), "-e", stamp(expires), "-f", "-",
             f"{tmp}/zone", f"{tmp}/{key.name}"],
            capture_output=True, text=True, check=True, cwd=tmp,
        )  # fmt: skip
    if " RRSIG" not in signed.stdout:
        raise DnssecError(f"dnssec-signzone printed no signed zone for {zone}: {signed.stderr}")
    return signed.stdout, expires


def served_expiry(zone: str, server: str, run: Runner = subprocess.run) -> int | None:
    """When the signatures ``server`` serves for ``zone`` expire (its SOA's RRSIG: a zone signed
    in one run has one expiry), or None when it serves the zone unsigned or not at all."""
    argv = ["dig", "+dnssec", "+norec", "+time=2", "+tries=1", "+noall", "+answer", f"@{server}",
            zone, "SOA"]  # fmt: skip
    asked = run(argv, capture_output=True, text=True, check=False)
    for line in asked.stdout.splitlines():
        fields = line.split()
        # OWNER TTL IN RRSIG SOA ALG LABELS ORIGTTL EXPIRATION INCEPTION TAG SIGNER SIG
        if len(fields) > 8 and fields[3] == "RRSIG" and fields[4] == "SOA":
            return parse_stamp(fields[8])
    return None
