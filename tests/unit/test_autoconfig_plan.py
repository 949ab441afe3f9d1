"""Client autoconfiguration (cluster/services/autoconfig.py): what it advertises follows the port
table and the topology; the names it needs are in the certificates. The documents themselves are
parsed in tests/render/test_autoconfig_render.py."""

from __future__ import annotations

import pytest

from cluster import ports
from cluster.services import autoconfig, dovecot
from cluster.topology import Topology


def test_default_servers(topologies: dict[str, Topology]) -> None:
    s = autoconfig.settings(topologies["dc1"])
    host = topologies["dc1"].mail_host
    assert [(x.hostname, x.port, x.socket) for x in s.incoming] == [(host, 993, "SSL")]
    assert [(x.hostname, x.port, x.socket) for x in s.outgoing] == [
        (host, 587, "STARTTLS"),
        (host, 465, "SSL"),
    ]
    assert (s.imap.outlook_encryption, s.smtp.outlook_encryption) == ("SSL", "TLS")


def test_servers_follow_the_port_table(topologies: dict[str, Topology]) -> None:
    """143 is advertised (STARTTLS, after IMAPS) exactly when ``imapPlaintext`` opens it."""
    topo = topologies["dc1"]
    plain = Topology(topo.config.with_values(imap_plaintext=True), topo.dcs)
    incoming = [(s.port, s.socket) for s in autoconfig.settings(plain).incoming]
    assert incoming == [(993, "SSL"), (143, "STARTTLS")]
    open_ports = ports.ports_by(ports.port_table(plain.config), ports.WORLD, "tcp")
    s = autoconfig.settings(plain)
    assert {x.port for x in s.incoming + s.outgoing} <= set(open_ports)
    srv = {r.name: r.value for r in autoconfig.srv_records(plain)}
    assert srv["_imap._tcp"] == f"1 1 143 {plain.mail_host}."
    # Dovecot listens where the table says (its constant is its own; they must not drift).
    assert dovecot.IMAPS_PORT == ports.IMAPS_PORT


def test_certificates_name_autodiscover_and_the_domain(topologies: dict[str, Topology]) -> None:
    topo = topologies["dc1"]
    for dc in ("dc1", "dc2"):
        names = topo.certificate_names(dc)
        for name in (f"autodiscover.{topo.domain}", f"autoconfig.{topo.domain}", topo.domain):
            assert name in names, (dc, name)


def test_a_server_without_tls_is_refused() -> None:
    with pytest.raises(ValueError, match="not TLS"):
        autoconfig.Server("mail.example.com", 143, "plain", "_imap")


def test_profile_ids_are_per_domain() -> None:
    assert autoconfig.profile_namespace("example.com") == autoconfig.profile_namespace(
        "example.com"
    )
    assert autoconfig.profile_namespace("example.com") != autoconfig.profile_namespace(
        "example.org"
    )
    assert autoconfig.reverse_domain("mail.example.co.uk") == "uk.co.example.mail"
