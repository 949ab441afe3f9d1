"""DNSSEC with Debian 13's own BIND tools (mailnode/dnssec.py): a further domain's zone, as the
plan's records and mailcluster-domains render it, signed with a key dnssec-keygen made; the
signed zone verified by dnssec-verify and loaded by named-checkzone; the DS and the trust anchor
in the form a registrar and a validator take."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from rendertools import base, files

from cluster.hostplan import build_host_plan
from cluster.material import ClusterSecrets
from cluster.services import domains
from cluster.topology import Topology
from mailnode import dnssec
from mailnode import domains as dom

pytestmark = pytest.mark.checkers

ZONE = "shop.example"


def in_base(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    """mailnode's runner (``subprocess.run``'s keywords), in the base where BIND's tools are."""
    proc = base().run(argv, cwd=kw.get("cwd"), check=False)
    if kw.get("check") and proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, argv, proc.stdout, proc.stderr)
    return proc


def check(argv: list[str]) -> str:
    proc = in_base(argv)
    assert proc.returncode == 0, f"{argv}: {proc.stdout}{proc.stderr}"
    return proc.stdout + proc.stderr


def test_a_further_domain_signs_verifies_and_loads(
    topologies: dict[str, Topology], secrets: ClusterSecrets, tmp_path: Path
) -> None:
    plan = build_host_plan(topologies["dc1"], "dc1-svr1", secrets, "lab")
    cfg = dom.parse_config(json.loads(files(plan)[domains.CONFIG]))
    assert cfg.dnssec  # the default
    key = dnssec.new_key(ZONE, cfg.zone.ttl, in_base)
    assert re.fullmatch(rf"K{re.escape(ZONE)}\.\+013\+\d{{5}}", key.name)
    assert re.fullmatch(rf"{re.escape(ZONE)}\. {cfg.zone.ttl} IN DNSKEY 257 3 13 \S+ \S+",
                        key.dnskey)  # fmt: skip
    assert "Algorithm: 13 (ECDSAP256SHA256)" in key.private
    assert re.fullmatch(rf"{re.escape(ZONE)}\. IN DS {key.tag} 13 2 [0-9A-F]{{64}}", key.ds)

    unsigned = dom.zone_text(cfg, ZONE, [], 1_800_000_000, key)
    # Now: dnssec-signzone verifies its output at the time it runs (a signature made for a
    # future clock fails that check).
    now = time.time()
    signed, expires = dnssec.sign(ZONE, unsigned, key, now, in_base)
    assert expires == int(now) + dnssec.VALIDITY_S
    path = tmp_path / f"db.{ZONE}"
    path.write_text(signed)
    # Every RRset signed by the key, NSEC chain complete (dnssec-verify), and named loads it.
    # -z: one key with the KSK flag signs everything (a CSK, as dnssec-signzone -z made it).
    out = check(["dnssec-verify", "-z", "-o", ZONE, str(path)])
    assert "Zone fully signed" in out and "Algorithm: ECDSAP256SHA256: KSKs: 1 active" in out
    check(["named-checkzone", "-k", "fail", "-n", "fail", ZONE, str(path)])
    rrsigs = [f for f in (ln.split() for ln in signed.splitlines()) if f[3:4] == ["RRSIG"]]
    assert rrsigs and {r[8] for r in rrsigs} == {dnssec.stamp(expires)}
    assert {r[9] for r in rrsigs} == {dnssec.stamp(now - dnssec.BACKDATE_S)}
    for record in ("MX", "TXT", "SRV", "NS", "SOA", "DNSKEY", "NSEC"):
        assert any(r[4] == record for r in rrsigs), record
    # The serial is the one given: the database's, the same on every master.
    assert re.search(r"IN SOA\s+\S+ \S+ 1800000000 ", signed)
    assert key.private.split("PrivateKey:")[1].split()[0] not in signed

    # The DS the operator publishes is the one BIND computes from the signed zone's DNSKEY.
    from_zone = check(["dnssec-dsfromkey", "-2", "-f", str(path), ZONE]).split()
    assert from_zone[-4:] == key.ds.split()[-4:]
    # The trust anchor as delv and named take it.
    anchor = tmp_path / "anchor.conf"
    anchor.write_text(key.trust_anchor())
    check(["named-checkconf", str(anchor)])
