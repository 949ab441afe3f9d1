"""BIND: every node of both lab stacks renders a config named-checkconf accepts (zones loaded),
zones named-checkzone accepts, and the rules: no recursion, transfers only to the cluster's
secondaries, every record the design asks for, and a serial that moves exactly on change."""

from __future__ import annotations

import base64
import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from rendertools import base, files, in_base

from cluster.hostplan import build_host_plan
from cluster.lab.model import lab_topology
from cluster.material import ClusterSecrets
from cluster.plan import CHANGED_MARK, HostPlan
from cluster.services import bind, bindpaths, domains
from cluster.topology import Topology
from mailnode import domains as dom


def run(*args: str, env: dict[str, str] | None = None) -> str:
    proc = in_base(*args, env=env)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout}{proc.stderr}"
    return proc.stdout


def zone_script(tmp: Path, plan: HostPlan) -> Path:
    script = tmp / "mailcluster-zone"
    script.write_text(files(plan)[bind.ZONE_SCRIPT])
    script.chmod(0o755)
    return script


def make_zone(
    script: Path, body: str, zone: Path, origin: str, secondary: Path | None = None
) -> tuple[str, int]:
    body_file = zone.parent / "zone.body"
    body_file.write_text(body)
    out = run(str(script), str(body_file), str(zone), origin, str(secondary or ""))
    serial = int(
        run("named-checkzone", "-D", "-o", "-", origin, str(zone)).split("SOA")[1].split()[2]
    )
    return out, serial


HOSTED = "example.org"  # a further mail domain (mailnode/domains.py renders its zone)


def domains_config(plan: HostPlan) -> dom.Config:
    return dom.parse_config(json.loads(files(plan)[domains.CONFIG]))


def hosted_zone_file(plan: HostPlan, domain: str) -> str:
    return dom.zone_file(domains_config(plan), domain)


def write_hosted_domain(root: Path, plan: HostPlan, domain: str) -> None:
    """What mailcluster-domains writes on a DNS master for one further domain with a key."""
    cfg = domains_config(plan)
    key = dom.Key(domain, "s20261207", "", base64.b64encode(b"k" * 294).decode())
    for path, text in (
        (dom.zone_file(cfg, domain), dom.zone_text(cfg, domain, [key], 1765000000)),
        (cfg.hosted_conf, dom.hosted_conf_text(cfg, [domain])),
        (cfg.catalog_file, dom.catalog_text(cfg, [domain], 1765000000)),
    ):
        (root / path.lstrip("/")).write_text(text)


@pytest.mark.checkers
def test_named_checkconf_and_checkzone(plan: tuple[Topology, HostPlan], tmp_path: Path) -> None:
    topo, hp = plan
    root = tmp_path / "root"
    # Copied inside the base: rndc.key is readable only by root and group bind.
    (root / "etc").mkdir(parents=True)
    assert in_base("cp", "-a", "/etc/bind", str(root / "etc")).returncode == 0
    for path, content in files(hp).items():
        if path.startswith("/etc/bind/"):
            (root / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
            (root / path.lstrip("/")).write_text(content)
    # What the packages put outside /etc/bind: the working directory and the root hints.
    (root / "var/cache/bind").mkdir(parents=True)
    shutil.copytree(base().path("/usr/share/dns"), root / "usr/share/dns")
    zone = root / bindpaths.zone_file(topo.domain).lstrip("/")
    zone.parent.mkdir(parents=True)
    node = topo.node(hp.host)
    for d in (domains.ZONE_DIR, domains.CATZ_DIR):
        (root / d.lstrip("/")).mkdir(parents=True, exist_ok=True)
    if topo.is_dns_master(node):
        out, serial = make_zone(zone_script(tmp_path, hp), files(hp)[bind.BODY], zone, topo.domain)
        assert CHANGED_MARK in out and serial > 2000000000
        run("named-checkzone", "-k", "fail", "-n", "fail", topo.domain, str(zone))
        # dnssec (the default): named serves the signed copy, the plan's file until signed.
        (root / bindpaths.signed_file(topo.domain).lstrip("/")).write_text(zone.read_text())
        write_hosted_domain(root, hp, HOSTED)
        hosted = root / hosted_zone_file(hp, HOSTED).lstrip("/")
        run("named-checkzone", "-k", "fail", "-n", "fail", HOSTED, str(hosted))
    # -t: every absolute path in the config resolves inside the rendered tree; -z loads the
    # primary zones. BIND 9.20 warns of options it deprecates: anything but a loaded zone fails.
    checked = in_base("named-checkconf", "-t", str(root), "-z", "/etc/bind/named.conf")
    out = checked.stdout + checked.stderr
    assert checked.returncode == 0, out
    assert not [ln for ln in out.splitlines() if not re.match(r"zone \S+: loaded serial", ln)], out


def test_no_recursion_and_restricted_transfers(plan: tuple[Topology, HostPlan]) -> None:
    topo, hp = plan
    options = files(hp)["/etc/bind/named.conf.options"]
    assert re.search(r"^\s*recursion no;", options, re.M)
    assert "allow-recursion { none; };" in options
    acl = options.split("acl mailcluster-secondaries {")[1].split("};")[0].split()
    assert "any;" not in acl and acl
    assert "allow-transfer { mailcluster-secondaries; };" in options
    # Transfers only to the secondaries' mesh addresses: no public address of a node.
    expected = {f"{topo.mesh_address(n)};" for n in topo.dns_slaves}
    assert expected == set(acl) or (not expected and acl == ["none;"])
    assert "104.237.137.10;" not in acl  # linodeSecondaryDns is off in the lab stacks
    assert "inet 127.0.0.1 port 8053 allow { 127.0.0.1; };" in options
    # Both families on every address; a shared IP arriving later is picked up by itself.
    assert "listen-on { any; };" in options and "listen-on-v6 { any; };" in options
    assert "automatic-interface-scan yes;" in options


def test_linode_secondary_adds_axfr_servers(secrets: ClusterSecrets) -> None:
    topo = lab_topology("dc1", {"linodeSecondaryDns": True})
    options = files(build_host_plan(topo, "dc1-svr1", secrets, "lab"))[
        "/etc/bind/named.conf.options"
    ]
    for addr in bind.LINODE_AXFR:
        assert f"    {addr};" in options


def test_a_master_serves_the_signed_copy_unless_dnssec_is_off(secrets: ClusterSecrets) -> None:
    """dnssec (the default): named serves the copy mailcluster-domains signs; off, or with
    Linode's name servers as secondaries (they serve no DNSSEC), the plan's file itself, and no
    stand-in is made; the further domains are signed unless dnssec is off."""
    for stack_config, signs_own, signs_further in (
        ({}, True, True),
        ({"dnssec": False}, False, False),
        ({"linodeSecondaryDns": True}, False, True),
    ):
        topo = lab_topology("dc1", stack_config)
        hp = build_host_plan(topo, "dc1-svr1", secrets, "lab")
        local = files(hp)["/etc/bind/named.conf.local"]
        served, other = bindpaths.signed_file, bindpaths.zone_file
        if not signs_own:
            served, other = other, served
        assert f'file "{served(topo.domain)}";' in local, stack_config
        assert f'file "{other(topo.domain)}";' not in local, stack_config
        zone_step = next(s for s in hp.steps if s.name == bind.ZONE_STEP)
        assert (bindpaths.signed_file(topo.domain) in zone_step.script) == signs_own
        cfg = domains_config(hp)
        assert (cfg.main_zone_signed, cfg.dnssec) == (signs_own, signs_further), stack_config


def test_roles_follow_active_dc(plan: tuple[Topology, HostPlan]) -> None:
    topo, hp = plan
    local = files(hp)["/etc/bind/named.conf.local"]
    node = topo.node(hp.host)
    if node.dc == topo.active_dc:
        assert "type primary;" in local and bind.BODY in files(hp)
        notify = local.split("also-notify")[1]
        for n in topo.dns_slaves:
            assert f"{topo.mesh_address(n)};" in notify
            assert n.public_ipv4 not in notify
    else:
        assert "type secondary;" in local and "masterfile-format text;" in local
        primaries = local.split("primaries {")[1].split("};")[0].split()
        assert primaries == [f"{a};" for a in topo.mesh_addresses(topo.active_dc)]
        assert bind.BODY not in files(hp)


def test_secondaries_consume_the_catalog_and_masters_serve_it(
    plan: tuple[Topology, HostPlan],
) -> None:
    """The further domains reach the standby data centre through the catalog alone: its nodes
    consume it from the active data centre's mesh addresses; a master does not consume its
    own catalog (BIND would skip every member it also has as a primary) but includes the
    domains' zones."""
    topo, hp = plan
    options = files(hp)["/etc/bind/named.conf.options"]
    local = files(hp)["/etc/bind/named.conf.local"]
    catalog = local.split(f'zone "{domains.CATALOG}"')[1].split("};\n};")[0]
    if topo.is_dns_master(topo.node(hp.host)):
        assert "catalog-zones" not in options
        assert "type primary;" in catalog and domains.CATALOG_FILE in catalog
        assert f'include "{domains.HOSTED_CONF}";' in local
    else:
        consumer = options.split("catalog-zones {")[1].split("min-update-interval")[0]
        assert f'zone "{domains.CATALOG}"' in consumer
        listed = consumer.split("default-primaries {")[1].split("}")[0].split()
        assert listed == [f"{a};" for a in topo.mesh_addresses(topo.active_dc)]
        assert "type secondary;" in catalog and domains.CATALOG_SECONDARY_FILE in catalog
        assert domains.HOSTED_CONF not in local


def test_zone_has_every_record(topologies: dict[str, Topology], secrets: ClusterSecrets) -> None:
    topo = topologies["dc1"]
    body = files(build_host_plan(topo, "dc1-svr1", secrets, "lab"))[bind.BODY]
    d = topo.domain
    assert f"$TTL {topo.config.dns_ttl}" in body
    assert re.search(rf"^@ IN NS ns1\.{re.escape(d)}\.$", body, re.M)
    assert re.search(r"^mail IN A \S+$", body, re.M)
    assert re.search(rf"^@ IN MX 10 mail\.{re.escape(d)}\.$", body, re.M)
    assert re.search(r'^@ IN TXT "v=spf1 ', body, re.M)
    assert re.search(r'^mail\._domainkey IN TXT "v=DKIM1; k=rsa; p=', body, re.M)
    assert re.search(r'^_dmarc IN TXT "v=DMARC1; p=', body, re.M)
    assert re.search(r'^_mta-sts IN TXT "v=STSv1; id=[0-9a-f]{20}"$', body, re.M)
    assert re.search(r"^mta-sts IN A ", body, re.M)
    assert re.search(r'^_smtp\._tls IN TXT "v=TLSRPTv1; rua=mailto:', body, re.M)
    # Dual stack: every name with an A for a shared IP has the AAAA of the same data centre's
    # shared IPv6; each node its own; SPF lists every IPv6 mail may leave from.
    active6 = topo.shared_ipv6(topo.active_dc)
    assert active6
    for label in ("@", "mail", "webmail", "mta-sts", "autoconfig", "ns1"):
        assert re.search(rf"^{re.escape(label)} IN AAAA {re.escape(active6)}$", body, re.M), label
    assert f"\nns2 IN AAAA {topo.shared_ipv6('dc2')}\n" in body
    for dc in ("dc1", "dc2"):
        assert f"\n{dc} IN AAAA {topo.shared_ipv6(dc)}\n" in body
    for n in topo.nodes:
        assert f"\n{n.name} IN AAAA {n.public_ipv6}\n" in body
    spf = re.search(r'^@ IN TXT "(v=spf1 [^"]*)"$', body, re.M)
    assert spf, body
    for addr in (topo.shared_ipv6("dc1"), topo.shared_ipv6("dc2"), *topo.outbound_addresses6()):
        assert f" ip6:{addr} " in spf.group(1)
    # A secret never lands in the zone: only the DKIM public key.
    assert secrets.dkim_private_key_pem.splitlines()[1] not in body


@pytest.mark.checkers
def test_serial_moves_exactly_on_change(
    topologies: dict[str, Topology], secrets: ClusterSecrets, tmp_path: Path
) -> None:
    topo = topologies["dc1"]
    hp = build_host_plan(topo, "dc1-svr1", secrets, "lab")
    script = zone_script(tmp_path, hp)
    body = files(hp)[bind.BODY]
    zone = tmp_path / "zones" / f"db.{topo.domain}"
    zone.parent.mkdir()
    out1, s1 = make_zone(script, body, zone, topo.domain)
    out2, s2 = make_zone(script, body, zone, topo.domain)
    assert CHANGED_MARK in out1 and CHANGED_MARK not in out2 and s2 == s1
    # A cluster that gains its shared IPv6s: one new serial for the AAAA records, then none.
    v4_only = Topology(
        topo.config, {dc: replace(a, shared_ipv6=None) for dc, a in topo.dcs.items()}
    )
    body4 = files(build_host_plan(v4_only, "dc1-svr1", secrets, "lab"))[bind.BODY]
    assert " AAAA " in body and f"AAAA {topo.shared_ipv6('dc1')}" not in body4
    zone4 = tmp_path / "zones4" / f"db.{topo.domain}"
    zone4.parent.mkdir()
    _, serial4 = make_zone(script, body4, zone4, topo.domain)
    out_v6, serial6 = make_zone(script, body, zone4, topo.domain)
    out_again, again = make_zone(script, body, zone4, topo.domain)
    assert CHANGED_MARK in out_v6 and serial6 > serial4
    assert CHANGED_MARK not in out_again and again == serial6
    changed = body.replace("IN MX 10", "IN MX 20")
    out3, s3 = make_zone(script, changed, zone, topo.domain)
    assert CHANGED_MARK in out3 and s3 == s1 + 1
    # A secondary's copy (no digest line, serial from the transfer) promoted to primary: the
    # serial continues from the copy, even when the body is the same as before.
    copy = run("named-checkzone", "-D", "-o", "-", topo.domain, str(zone))
    far = copy.replace(f" {s3} ", f" {s3 + 40} ", 1)
    zone.write_text(far)
    out4, s4 = make_zone(script, changed, zone, topo.domain)
    assert CHANGED_MARK in out4 and s4 == s3 + 41
    # Failback: this node's primary file is unchanged (same body, its digest matches), but while
    # it was a secondary it transferred the other data centre's zone with a higher serial. It
    # must serve a serial above that one, or the new secondaries would never transfer from it.
    secondary = zone.parent / f"db.{topo.domain}.secondary"
    secondary.write_text(copy.replace(f" {s3} ", f" {s4 + 7} ", 1))
    out5, s5 = make_zone(script, changed, zone, topo.domain, secondary)
    assert CHANGED_MARK in out5 and s5 == s4 + 8
    out6, s6 = make_zone(script, changed, zone, topo.domain, secondary)
    assert CHANGED_MARK not in out6 and s6 == s5
    # A broken body is refused and the zone file stays as it was.
    before = zone.read_text()
    (zone.parent / "zone.body").write_text(body.replace("IN MX 10", "IN MX"))
    bad = in_base(str(script), str(zone.parent / "zone.body"), str(zone), topo.domain)
    assert bad.returncode != 0 and zone.read_text() == before


@pytest.mark.checkers
def test_the_signed_file_has_a_stand_in_until_the_writer_signs(
    topologies: dict[str, Topology], secrets: ClusterSecrets, tmp_path: Path
) -> None:
    """dnssec: named serves the signed file, which mailcluster-domains writes from the database.
    Until it does, mailcluster-zone keeps a stand-in: on a fresh master the plan's file; on a
    master promoted from secondary, the signed copy it held as a secondary (a validating
    resolver refuses an unsigned answer for a signed zone). Never over a newer signed file."""
    topo = topologies["dc1"]
    hp = build_host_plan(topo, "dc1-svr1", secrets, "lab")
    script = zone_script(tmp_path, hp)
    body = tmp_path / "zone.body"
    body.write_text(files(hp)[bind.BODY])
    zone, signed = tmp_path / "db", tmp_path / "db.signed"
    secondary = tmp_path / "db.secondary"

    def apply() -> str:
        return run(str(script), str(body), str(zone), topo.domain, str(secondary), str(signed))

    out = apply()
    assert "unsigned until the writer signs it" in out and signed.read_text() == zone.read_text()
    assert CHANGED_MARK not in apply()
    # What the writer signed (here: any text with a higher serial) is left alone.
    found = re.search(r"\( (\d+) ", zone.read_text())
    assert found
    plan_serial = int(found.group(1))
    signed.write_text(zone.read_text().replace(f"( {plan_serial} ", f"( {plan_serial + 1} "))
    kept = signed.read_text()
    assert CHANGED_MARK not in apply() and signed.read_text() == kept
    # Promoted from secondary: its transferred copy (here: serial far ahead) stands in, and the
    # plan's file continues above it.
    held = zone.read_text().replace(f"( {plan_serial} ", f"( {plan_serial + 50} ")
    secondary.write_text(held)
    out = apply()
    assert "the signed copy held as a secondary" in out and signed.read_text() == held
    assert f"serial {plan_serial + 51}" in out
    assert CHANGED_MARK not in apply()


def test_bindgraph_samples_and_draws(
    topologies: dict[str, Topology], secrets: ClusterSecrets, tmp_path: Path
) -> None:
    """The Bindgraph replacement reads the statistics channel's JSON and draws every PNG. The
    channel is played by a loopback HTTP server with a canned answer of BIND 9.18's shape."""
    import http.server
    import json
    import threading

    hp = build_host_plan(topologies["dc1"], "dc1-svr1", secrets, "lab")
    script = tmp_path / "mailcluster-bindgraph"
    script.write_text(files(hp)["/usr/local/sbin/mailcluster-bindgraph"])
    script.chmod(0o755)
    answer = {"qtypes": {"A": 10, "MX": 3, "HINFO": 1}, "rcodes": {"NOERROR": 12, "REFUSED": 2}}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {
            "PATH": "/usr/bin:/bin",
            "BINDGRAPH_URL": f"http://127.0.0.1:{server.server_port}/json/v1/server",
            "BINDGRAPH_RRD_DIR": str(tmp_path / "rrd"),
            "BINDGRAPH_OUT_DIR": str(tmp_path / "www"),
        }
        for _ in range(2):
            run(str(script), env=env)
    finally:
        server.shutdown()
    for kind in ("types", "results"):
        assert (tmp_path / "rrd" / f"bind-{kind}.rrd").exists()
        for period in ("day", "week", "month", "year"):
            png = tmp_path / "www" / f"bind-{kind}-{period}.png"
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    info = run("rrdtool", "info", str(tmp_path / "rrd" / "bind-types.rrd"))
    assert 'ds[MX].type = "DERIVE"' in info and "ds[other]" in info
