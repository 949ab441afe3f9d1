"""The lab's cluster secrets: generated once for the lab's life, as Pulumi generates them once
and keeps them in its state (TLS CA and certificates, DKIM key, Heartbeat authkeys, passwords)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from cryptography import x509

from cluster.config import DC_NAMES
from cluster.lab import s3server
from cluster.lab.model import lab_topology
from cluster.lab.paths import lab_dir
from cluster.lab.s3server import new_access_key
from cluster.material import (
    PASSWORD_LENGTHS,
    ClusterSecrets,
    generate,
    new_mesh_key,
    new_password,
    new_websync_key,
)
from cluster.topology import Topology


def secrets_file() -> Path:
    return lab_dir() / "secrets.json"


def ca_file() -> Path:
    """The cluster CA certificate (public), for clients that verify the lab's TLS."""
    return lab_dir() / "ca.pem"


def load_secrets() -> ClusterSecrets:
    """The lab's secrets, made on first use and kept 0600; the CA is written beside them."""
    path = secrets_file()
    topo = lab_topology("dc1")
    nodes = [n.name for n in topo.nodes]
    names = {dc: topo.certificate_names(dc) for dc in DC_NAMES}
    if path.exists():
        data = json.loads(path.read_text())
        # A lab made before a password was added gets it now (Pulumi makes a new
        # RandomPassword the same way), keeping the others.
        new = {f: new_password(n) for f, n in PASSWORD_LENGTHS.items() if f not in data}
        secrets = ClusterSecrets.from_dict({**data, **new})
        if not ca_file().exists():
            ca_file().write_text(secrets.ca_cert_pem)
        missing = [n for n in nodes if n not in secrets.mesh_keys]
        stale = _stale_certificates(secrets, topo)
        if (not missing and secrets.websync_ssh_key and not stale and not new
                and _has_backup(secrets)):  # fmt: skip
            return secrets
        # A lab made before the mesh: add its keys, and certificates that name the mesh
        # addresses (as Pulumi re-issues a certificate whose names changed); keep the rest.
        secrets = dataclasses.replace(
            secrets,
            mesh_keys={**secrets.mesh_keys, **{n: new_mesh_key() for n in missing}},
            websync_ssh_key=secrets.websync_ssh_key or new_websync_key(),
        )
        secrets = _with_backup(secrets)
        if stale:
            fresh = generate(topo.domain, DC_NAMES, names)
            secrets = dataclasses.replace(secrets, ca_cert_pem=fresh.ca_cert_pem, tls=fresh.tls)
            ca_file().write_text(secrets.ca_cert_pem)
        _save(path, secrets)
        return secrets
    # The same names and addresses the Pulumi program puts in each data centre's certificate.
    secrets = _with_backup(generate(topo.domain, DC_NAMES, names))
    _save(path, secrets)
    ca_file().write_text(secrets.ca_cert_pem)
    return secrets


def _has_backup(secrets: ClusterSecrets) -> bool:
    return bool(secrets.backup_password and secrets.backup_repository == s3server.repository())


def _with_backup(secrets: ClusterSecrets) -> ClusterSecrets:
    """The backup target of the lab: its S3 server in the client namespace, with a key pair
    made once (as Linode makes an Object Storage key), and restic's password (a lab made before
    backups existed gets one now)."""
    if _has_backup(secrets):
        return secrets
    access, secret = new_access_key()
    return dataclasses.replace(
        secrets,
        backup_password=secrets.backup_password
        or new_password(PASSWORD_LENGTHS["backup_password"]),
        backup_repository=s3server.repository(),
        backup_access_key=access,
        backup_secret_key=secret,
    )


def _stale_certificates(secrets: ClusterSecrets, topo: Topology) -> bool:
    """Whether a data centre's certificate lacks a name the topology wants in it."""
    for dc in DC_NAMES:
        pair = secrets.tls.get(dc)
        if pair is None:
            return True
        cert = x509.load_pem_x509_certificate(pair.cert_pem.encode())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        have = {str(v) for v in san.get_values_for_type(x509.IPAddress)}
        have |= set(san.get_values_for_type(x509.DNSName))
        if not set(topo.certificate_names(dc)) <= have:
            return True
    return False


def _save(path: Path, secrets: ClusterSecrets) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(secrets.to_dict(), f)
    os.replace(path.with_suffix(".tmp"), path)
