"""DANE for the cluster's MX (RFC 7672): a TLSA record that lets a DANE-aware sender (Postfix
with ``smtp_tls_security_level = dane``, Exim, Microsoft's and Google's MTAs) insist on TLS to
``mail.<domain>`` and verify the certificate it is shown, so nobody on the path can strip
STARTTLS or present a certificate of their own.

The record is ``2 1 1``: DANE-TA, the SHA-256 of the cluster CA's public key. Not ``3 1 1`` (the
leaf's key), for three reasons of this cluster:

- The MX name moves between data centres (``activeDc``) and each DC presents its own
  certificate and key (``ClusterSecrets.tls[dc]``), so a leaf record would need both DCs' keys,
  and each stack knows only its own.
- The Pulumi program re-issues a DC's certificate with a new key 60 days before it expires
  (``CERT_EARLY_RENEWAL_HOURS``): a leaf record would need a rollover (new record published two
  TTLs before the new key is served) or mail from DANE senders is deferred.
- Both DCs' certificates come from the one cluster CA (10 years), and every daemon sends the CA
  after the leaf (``TlsPair.cert_pem`` is a full chain), which DANE-TA requires (RFC 7671 5.2.2).
  With DANE-TA the sender also checks that the certificate names the MX host (RFC 7672 3.2.3):
  ``mail.<domain>`` is its first name.

Published only when it can be true and useful:

- ``tlsMode: selfsigned``: the MX presents the cluster CA's certificates. With ``letsencrypt``
  certbot makes a new key at every renewal and Let's Encrypt changes its intermediates, so no
  record is published rather than one that may stop matching (README, "Domains").
- The zone is signed (``domains.signs_own_zone``): a sender ignores TLSA in an unsigned zone.

The further domains need nothing of their own: their MX is ``mail.<domain>`` too, and a sender
looks the TLSA up at the MX host's name.
"""

from __future__ import annotations

import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from cluster import ports
from cluster.hostcontext import HostContext
from cluster.services import domains
from cluster.topology import DnsRecord

# RFC 6698 2.1: usage 2 (DANE-TA), selector 1 (SubjectPublicKeyInfo), matching type 1 (SHA-256).
USAGE_DANE_TA, SELECTOR_SPKI, MATCHING_SHA256 = 2, 1, 1


def spki_sha256(cert_pem: str) -> str:
    """The SHA-256 of the first certificate's DER SubjectPublicKeyInfo, in hex."""
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()


def publishes(ctx: HostContext) -> bool:
    return ctx.config.tls_mode == "selfsigned" and domains.signs_own_zone(ctx)


def tlsa_name(ctx: HostContext) -> str:
    """The TLSA owner name, relative to the cluster's zone."""
    topo = ctx.topology
    return f"_{ports.SMTP_PORT}._tcp.{topo.mail_host.removesuffix('.' + topo.domain)}"


def records(ctx: HostContext) -> list[DnsRecord]:
    if not publishes(ctx):
        return []
    digest = spki_sha256(ctx.secrets.ca_cert_pem)
    data = f"{USAGE_DANE_TA} {SELECTOR_SPKI} {MATCHING_SHA256} {digest}"
    return [DnsRecord(tlsa_name(ctx), "TLSA", data)]
