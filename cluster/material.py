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
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa, x25519
from cryptography.x509.oid import NameOID

from cluster.topology import SLOTS, node_name

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
    # The MariaDB account of the Prometheus mysqld exporter (services/metrics.py).
    "db_metrics": 32,
    # restic's repository key: without it the backups cannot be read (README: keep a copy of
    # it outside the cluster). 48 letters and digits: 285 bits.
    "backup_password": 48,
    # Valkey's password (rspamd's Bayes store, services/bayes.py), on every node alike.
    "valkey": 32,
    # rspamd's controller, which the learn program posts moves to (mailnode/learn.py).
    "rspamd_controller": 32,
    # postsrsd's key (services/srs.py), on every node alike: a bounce to an SRS address one
    # node signed is valid on all of them.
    "srs": 32,
}
PASSWORD_FIELDS = tuple(PASSWORD_LENGTHS)
# A WireGuard private key is 32 random bytes (base64); WireGuard clamps them itself.
MESH_KEY_BYTES = 32


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
    db_metrics: str
    dkim_private_key_pem: str
    ca_cert_pem: str
    tls: dict[str, TlsPair] = field(default_factory=dict)  # by data centre
    # WireGuard private keys of the mesh by node name (base64 of 32 random bytes); the public
    # keys are derived (``mesh_public_key``), so only these are stored.
    mesh_keys: dict[str, str] = field(default_factory=dict)
    # The web-sync SSH key (OpenSSH private key, ed25519): the active node pushes the docroots
    # with it to the unprivileged sync user of the others (services/sync.py).
    websync_ssh_key: str = ""
    # This stack's rootPassword (a config secret, per stack, never exported to the peer);
    # empty: Linode's random one stays.
    root_password: str = ""
    # restic's repository key (generated, PASSWORD_LENGTHS); after the defaults because a set
    # made before backups existed lacks it (the lab's loader fills it in).
    backup_password: str = ""
    # Where the backups go (restic's ``s3:`` repository string) and the S3 key pair: the
    # backupRepository config or the stack's Object Storage bucket (services/backup.py).
    backup_repository: str = ""
    backup_access_key: str = ""
    backup_secret_key: str = ""
    # Added after the first deployments (PASSWORD_LENGTHS): a set without them gets them.
    valkey: str = ""
    rspamd_controller: str = ""
    srs: str = ""

    @property
    def dkim_public_key_b64(self) -> str:
        """The p= value of the DKIM TXT record: base64 of the DER SubjectPublicKeyInfo."""
        key = serialization.load_pem_private_key(self.dkim_private_key_pem.encode(), None)
        der = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(der).decode()

    def mesh_private_key(self, node: str) -> str:
        try:
            return self.mesh_keys[node]
        except KeyError:
            raise KeyError(f"no WireGuard mesh key for {node} in the cluster secrets") from None

    def mesh_public_key(self, node: str) -> str:
        """``wg pubkey`` of the node's private key: X25519 of the base point."""
        return mesh_public_key(self.mesh_private_key(node))

    @property
    def websync_public_key(self) -> str:
        """The web-sync key's OpenSSH public line (``ssh-ed25519 AAAA...``)."""
        key = serialization.load_ssh_private_key(self.websync_ssh_key.encode(), None)
        return (
            key.public_key()
            .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
            .decode()
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClusterSecrets:
        tls = {dc: TlsPair(**pair) for dc, pair in data.get("tls", {}).items()}
        return cls(**{**data, "tls": tls})


def new_password(length: int) -> str:
    # Letters and digits only: these land in SQL, Dovecot and Postfix map files unquoted.
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))


def mesh_public_key(private_b64: str) -> str:
    raw = base64.b64decode(private_b64, validate=True)
    if len(raw) != MESH_KEY_BYTES:
        raise ValueError(f"a WireGuard key is {MESH_KEY_BYTES} bytes, got {len(raw)}")
    public = x25519.X25519PrivateKey.from_private_bytes(raw).public_key()
    return base64.b64encode(public.public_bytes_raw()).decode()


def new_mesh_key() -> str:
    return base64.b64encode(secrets.token_bytes(MESH_KEY_BYTES)).decode()


def new_websync_key() -> str:
    key = ed25519.Ed25519PrivateKey.generate()
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()


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
    """Make a fresh set: passwords, DKIM key, a cluster CA and one certificate per DC, a mesh
    key per node of those DCs and the web-sync key."""
    dc_names = list(dc_names)
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
        **{name: new_password(length) for name, length in PASSWORD_LENGTHS.items()},
        dkim_private_key_pem=pem_key(dkim),
        ca_cert_pem=ca_pem,
        tls=tls,
        mesh_keys={node_name(dc, slot): new_mesh_key() for dc in dc_names for slot in SLOTS},
        websync_ssh_key=new_websync_key(),
    )
