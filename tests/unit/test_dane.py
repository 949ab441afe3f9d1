"""DANE for the MX (cluster/services/dane.py): the TLSA record the cluster's zone carries, when it
carries one, and that it matches what both data centres present. The record is checked in the
lab by OpenSSL's DANE verifier against the served chain, validated by delv
(tests/lab/test_domains.py, and at dc2 in drill 3)."""

from __future__ import annotations

import re

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from cluster.hostcontext import HostContext
from cluster.material import ClusterSecrets
from cluster.services import bind, dane
from cluster.topology import DnsRecord, Topology


def ctx_of(topo: Topology, secrets: ClusterSecrets, **config: object) -> HostContext:
    t = Topology(topo.config.with_values(**config), topo.dcs) if config else topo
    return HostContext(t, t.node("dc1-svr1"), secrets, "lab")


def tlsa(ctx: HostContext) -> list[DnsRecord]:
    return [r for r in bind.zone_body_values(ctx)["records"] if r.type == "TLSA"]


def test_the_zone_names_the_cluster_ca_for_the_mx(
    topologies: dict[str, Topology], secrets: ClusterSecrets
) -> None:
    (record,) = tlsa(ctx_of(topologies["dc1"], secrets))
    assert record.name == "_25._tcp.mail"  # the MX host, relative to the zone
    usage, selector, matching, digest = record.value.split()
    assert (usage, selector, matching) == ("2", "1", "1")
    assert re.fullmatch(r"[0-9a-f]{64}", digest), digest
    assert digest == dane.spki_sha256(secrets.ca_cert_pem)
    # The same record in both data centres' plans: one name, one record, whichever is active.
    assert tlsa(ctx_of(topologies["dc2"], secrets)) == [record]


def test_both_data_centres_present_a_chain_the_record_matches(
    topologies: dict[str, Topology], secrets: ClusterSecrets
) -> None:
    """What DANE-TA needs of the chain each DC serves (RFC 7671 5.2.2, RFC 7672 3.2.3): the CA
    the record names is sent, it signed the leaf, and the leaf names the MX host."""
    (record,) = tlsa(ctx_of(topologies["dc1"], secrets))
    digest = record.value.split()[3]
    mx = topologies["dc1"].mail_host
    assert set(secrets.tls) == {"dc1", "dc2"}
    for dc, pair in secrets.tls.items():
        leaf, ca = x509.load_pem_x509_certificates(pair.cert_pem.encode())
        assert dane.spki_sha256(ca.public_bytes(Encoding.PEM).decode()) == digest, dc
        leaf.verify_directly_issued_by(ca)
        assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca, dc
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert mx in names.get_values_for_type(x509.DNSName), dc


def test_a_leaf_and_another_ca_give_other_digests(secrets: ClusterSecrets) -> None:
    """The digest is of the first certificate given: a chain's leaf is not the CA."""
    leaf_digest = dane.spki_sha256(secrets.tls["dc1"].cert_pem)
    assert leaf_digest != dane.spki_sha256(secrets.ca_cert_pem)
    assert leaf_digest != dane.spki_sha256(secrets.tls["dc2"].cert_pem)


@pytest.mark.parametrize(
    "config",
    [
        {"tls_mode": "letsencrypt", "letsencrypt_email": "hostmaster@example.com"},
        {"dnssec": False},
        {"linode_secondary_dns": True},
    ],
    ids=["letsencrypt: certbot changes the key", "unsigned zone", "Linode serves it unsigned"],
)
def test_no_record_where_it_could_be_wrong_or_is_ignored(
    topologies: dict[str, Topology], secrets: ClusterSecrets, config: dict[str, object]
) -> None:
    assert tlsa(ctx_of(topologies["dc1"], secrets, **config)) == []
