"""The lab's cluster secrets: generated once for the lab's life, as Pulumi generates them once
and keeps them in its state (TLS CA and certificates, DKIM key, Heartbeat authkeys, passwords)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from cluster.config import DC_NAMES
from cluster.lab.model import lab_topology
from cluster.lab.paths import lab_dir
from cluster.material import ClusterSecrets, generate, new_mesh_key, new_websync_key


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
    if path.exists():
        secrets = ClusterSecrets.from_dict(json.loads(path.read_text()))
        if not ca_file().exists():
            ca_file().write_text(secrets.ca_cert_pem)
        missing = [n for n in nodes if n not in secrets.mesh_keys]
        if not missing and secrets.websync_ssh_key:
            return secrets
        # A lab made before the mesh: add its keys, keep everything else (as a new Pulumi
        # resource joins an existing stack's state).
        secrets = dataclasses.replace(
            secrets,
            mesh_keys={**secrets.mesh_keys, **{n: new_mesh_key() for n in missing}},
            websync_ssh_key=secrets.websync_ssh_key or new_websync_key(),
        )
        _save(path, secrets)
        return secrets
    # The same names and addresses the Pulumi program puts in each data centre's certificate.
    secrets = generate(
        topo.domain, DC_NAMES, {dc: topo.certificate_names(dc) for dc in DC_NAMES}, nodes
    )
    _save(path, secrets)
    ca_file().write_text(secrets.ca_cert_pem)
    return secrets


def _save(path: Path, secrets: ClusterSecrets) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(secrets.to_dict(), f)
    os.replace(path.with_suffix(".tmp"), path)
