"""Secret material generated once per cluster and identical on every node.

The Pulumi program makes these with pulumi-random and pulumi-tls (kept in state as secrets, dc2
reads dc1's through its StackReference); the lab, which has no Pulumi engine, makes them with
``generate`` and keeps them in a 0600 file. The plan only ever sees this plain dataclass, inside
an ``Output.apply`` on the Pulumi side, so whatever it renders from them stays secret.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import secrets
import string
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

# Every generated password by field, with its length; both appliers make them from this table
# (the lab with ``generate``, Pulumi with pulumi-random), letters and digits only.
PASSWORD_LENGTHS: dict[str, int] = {
    "db_postfix": 32,
    "db_dovecot": 32,
    "db_postfixadmin": 32,
    "db_roundcube": 32,
    "db_replication": 32,
    "postfixadmin_setup": 32,
    # Roundcube's des_key must be exactly 24 characters for its default cipher (3DES);
    # see des_key in Roundcube's config/defaults.inc.php.
    "roundcube_des_key": 24,
    "heartbeat_authkey": 32,
    "doveadm": 32,
    "rsync": 32,
}
PASSWORD_FIELDS = tuple(PASSWORD_LENGTHS)


@dataclass(frozen=True)
class TlsPair:
    cert_pem: str  # leaf first, then the CA: a full chain
    key_pem: str


@dataclass(frozen=True)
class ClusterSecrets:
    db_postfix: str
    db_dovecot: str
    db_postfixadmin: str
    db_roundcube: str
    db_replication: str
    postfixadmin_setup: str
    roundcube_des_key: str
    heartbeat_authkey: str
    doveadm: str
    rsync: str
    dkim_private_key_pem: str
    ca_cert_pem: str
    tls: dict[str, TlsPair] = field(default_factory=dict)  # by data centre
    # This stack's rootPassword (a config secret, per stack, never exported to the peer);
    # empty: Linode's random one stays.
    root_password: str = ""

    @property
    def dkim_public_key_b64(self) -> str:
        """The p= value of the DKIM TXT record: base64 of the DER SubjectPublicKeyInfo."""
        key = serialization.load_pem_private_key(self.dkim_private_key_pem.encode(), None)
        der = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(der).decode()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClusterSecrets:
        tls = {dc: TlsPair(**pair) for dc, pair in data.get("tls", {}).items()}
        return cls(**{**data, "tls": tls})


def _password(length: int) -> str:
    # Letters and digits only: these land in SQL, Dovecot and Postfix map files unquoted.
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))


def pem_key(key: Any) -> str:
    """A private key as unencrypted PKCS#8 PEM: what Pulumi's tls.PrivateKey also produces."""
    return str(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
    )


def generate(
    domain: str, dc_names: Iterable[str], san_by_dc: dict[str, list[str]]
) -> ClusterSecrets:
    """Make a fresh set: passwords, DKIM key, a cluster CA and one certificate per DC."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"mailcluster CA {domain}")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM).decode()
    tls: dict[str, TlsPair] = {}
    for dc in dc_names:
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = []
        for san in san_by_dc[dc]:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(san)))
            except ValueError:
                names.append(x509.DNSName(san))
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, san_by_dc[dc][0])]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=825))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        tls[dc] = TlsPair(
            cert_pem=cert.public_bytes(serialization.Encoding.PEM).decode() + ca_pem,
            key_pem=pem_key(key),
        )
    dkim = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ClusterSecrets(
        **{name: _password(length) for name, length in PASSWORD_LENGTHS.items()},
        dkim_private_key_pem=pem_key(dkim),
        ca_cert_pem=ca_pem,
        tls=tls,
    )
