"""The cluster's secret material as Pulumi resources: generated once, kept secret in state.

The WireGuard keys of all four nodes are generated here too (pulumi-random ``RandomBytes``) and
shared like the passwords: dc2 already holds the CA key and every password, so keeping a node's
mesh key in its own stack only would add a cross-stack exchange of public keys for no gain.

dc1 (or a stack without a peer) generates every password with pulumi-random and the DKIM key and
cluster CA with pulumi-tls, and exports them as secret outputs. dc2 reads them through its
StackReference, so both data centres run with identical passwords, DKIM key and CA. Each DC
signs its own certificate with the CA: its names include the DC's addresses, which only its own
stack knows when it runs. A DC's TLS private key never leaves its stack's state.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_random as random
import pulumi_tls as tls

from cluster.config import DC_NAMES, StackConfig
from cluster.material import MESH_KEY_BYTES, PASSWORD_LENGTHS
from cluster.pulumi.peer import OUT_CA_KEY, OUT_SECRETS, PeerStack, dict_to_addresses
from cluster.topology import SLOTS, Topology, node_name

CA_VALIDITY_HOURS = 10 * 365 * 24
# 825 days: the longest validity clients accept for a server certificate (CA/B Forum, Apple).
CERT_VALIDITY_HOURS = 825 * 24
# Re-issue 60 days ahead: the next `pulumi up` in that window replaces the certificate.
CERT_EARLY_RENEWAL_HOURS = 60 * 24


def generates_secrets(config: StackConfig) -> bool:
    """dc1 owns the material; a stack without a peer has nobody to read it from."""
    return config.dc == "dc1" or config.peer_stack is None


def certificate_names(config: StackConfig, own: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(DNS names, IP addresses) of this DC's certificate, from ``Topology.certificate_names``
    so the lab and Linode certify the same names. Only this DC's addresses matter to it."""
    topo = Topology(config.with_values(active_dc=config.dc), {config.dc: dict_to_addresses(own)})
    names = topo.certificate_names(config.dc)
    ips = [n for n in names if _is_ip(n)]
    return [n for n in names if not _is_ip(n)], ips


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class ClusterMaterial(pulumi.ComponentResource):
    """What every node of both DCs shares: passwords, the DKIM key and the cluster CA.

    ``shared``: secret ``Output`` of ``ClusterSecrets.to_dict()`` without ``tls``;
    ``ca_key``: secret ``Output`` of the CA's private key (each DC signs its own certificate,
    whose names include its addresses, which only that DC's stack knows).
    """

    def __init__(
        self, name: str, config: StackConfig, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mailcluster:index:ClusterMaterial", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        passwords: dict[str, pulumi.Output[str]] = {}
        for field, length in PASSWORD_LENGTHS.items():
            # Letters and digits only: the values land unquoted in SQL and map files.
            pw = random.RandomPassword(
                f"{name}-{field.replace('_', '-')}", length=length, special=False, opts=child
            )
            passwords[field] = pw.result
        # The mesh's WireGuard private keys, one per node of both data centres (32 random bytes;
        # the public keys are derived in Python, ClusterSecrets.mesh_public_key).
        mesh_keys = {
            node: random.RandomBytes(
                f"{name}-mesh-{node}", length=MESH_KEY_BYTES, opts=child
            ).base64
            for node in (node_name(dc, slot) for dc in DC_NAMES for slot in SLOTS)
        }
        websync = tls.PrivateKey(f"{name}-websync", algorithm="ED25519", opts=child)
        dkim = tls.PrivateKey(f"{name}-dkim", algorithm="RSA", rsa_bits=2048, opts=child)
        ca_key = tls.PrivateKey(f"{name}-ca", algorithm="ECDSA", ecdsa_curve="P256", opts=child)
        ca = tls.SelfSignedCert(
            f"{name}-ca",
            private_key_pem=ca_key.private_key_pem,
            is_ca_certificate=True,
            subject=tls.SelfSignedCertSubjectArgs(common_name=f"mailcluster CA {config.domain}"),
            validity_period_hours=CA_VALIDITY_HOURS,
            allowed_uses=["cert_signing", "crl_signing"],
            opts=child,
        )
        combined = pulumi.Output.all(
            passwords=pulumi.Output.all(**passwords),
            dkim=dkim.private_key_pem_pkcs8,
            ca=ca.cert_pem,
            mesh=pulumi.Output.all(**mesh_keys),
            websync=websync.private_key_openssh,
        ).apply(_secrets_dict)
        self.shared: pulumi.Output[dict[str, Any]] = pulumi.Output.secret(combined)
        self.ca_key: pulumi.Output[str] = pulumi.Output.secret(ca_key.private_key_pem)
        self.register_outputs({})


class DcCertificate(pulumi.ComponentResource):
    """This DC's key and certificate, signed by the cluster CA; ``pair``: secret ``Output`` of
    ``{"cert_pem": leaf + CA, "key_pem": ...}``. Re-issued when the DC's addresses change."""

    def __init__(
        self,
        name: str,
        config: StackConfig,
        own_addresses: pulumi.Output[dict[str, Any]],
        ca_key: pulumi.Input[str],
        ca_cert: pulumi.Input[str],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("mailcluster:index:DcCertificate", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        names = own_addresses.apply(lambda own: certificate_names(config, own))
        key = tls.PrivateKey(name, algorithm="ECDSA", ecdsa_curve="P256", opts=child)
        csr = tls.CertRequest(
            name,
            private_key_pem=key.private_key_pem,
            subject=tls.CertRequestSubjectArgs(common_name=f"mail.{config.domain}"),
            dns_names=names.apply(lambda n: n[0]),
            ip_addresses=names.apply(lambda n: n[1]),
            opts=child,
        )
        cert = tls.LocallySignedCert(
            name,
            cert_request_pem=csr.cert_request_pem,
            ca_private_key_pem=ca_key,
            ca_cert_pem=ca_cert,
            validity_period_hours=CERT_VALIDITY_HOURS,
            early_renewal_hours=CERT_EARLY_RENEWAL_HOURS,
            allowed_uses=["digital_signature", "key_encipherment", "server_auth", "client_auth"],
            opts=child,
        )
        self.cert_pem = cert.cert_pem
        self.pair: pulumi.Output[dict[str, str]] = pulumi.Output.secret(
            pulumi.Output.all(cert.cert_pem, ca_cert, key.private_key_pem_pkcs8).apply(_pair)
        )
        self.register_outputs({"certPem": cert.cert_pem})


def _pair(values: list[str]) -> dict[str, str]:
    cert, ca, key = values
    # A full chain, leaf first, as ClusterSecrets.TlsPair expects.
    return {"cert_pem": cert.rstrip("\n") + "\n" + ca, "key_pem": key}


def _secrets_dict(values: dict[str, Any]) -> dict[str, Any]:
    return {
        **values["passwords"],
        "dkim_private_key_pem": values["dkim"],
        "ca_cert_pem": values["ca"],
        "mesh_keys": values["mesh"],
        "websync_ssh_key": values["websync"],
    }


@dataclass
class Material:
    """``secrets``: the full ``ClusterSecrets`` dict this DC's plans use (with ``tls[dc]``);
    ``exports``: the secret outputs the peer reads (only from the generating stack)."""

    secrets: pulumi.Output[dict[str, Any]]
    certificate: DcCertificate
    exports: dict[str, pulumi.Output[Any]]


def cluster_material(
    config: StackConfig,
    peer: PeerStack,
    own_addresses: pulumi.Output[dict[str, Any]],
    opts: pulumi.ResourceOptions | None = None,
    backup: pulumi.Output[dict[str, str]] | None = None,
) -> Material:
    """``backup``: the backup target's fields (cluster/pulumi/backup.py), shared with the rest
    by the generating stack."""
    exports: dict[str, pulumi.Output[Any]] = {}
    if generates_secrets(config):
        generated = ClusterMaterial(f"{config.dc}-material", config, opts)
        shared, ca_key = generated.shared, generated.ca_key
        if backup is not None:
            shared = pulumi.Output.secret(
                pulumi.Output.all(shared, backup).apply(lambda v: {**v[0], **v[1]})
            )
        exports = {OUT_SECRETS: shared, OUT_CA_KEY: ca_key}
    else:
        source = peer.name

        def require(data: Any) -> Any:
            if not data:
                raise RuntimeError(
                    f"{config.dc} reads the cluster's passwords, keys and CA from stack "
                    f"{source!r} (peerStack), which has no {OUT_SECRETS!r} output yet: run "
                    f"`pulumi up -s {source}` first"
                )
            return data

        shared = pulumi.Output.secret(peer.secrets.apply(require))
        ca_key = pulumi.Output.secret(peer.output(OUT_CA_KEY).apply(require))
    ca_cert = shared.apply(lambda s: str(s["ca_cert_pem"]))
    cert = DcCertificate(f"{config.dc}-tls", config, own_addresses, ca_key, ca_cert, opts)
    full = pulumi.Output.all(shared, cert.pair).apply(lambda v: {**v[0], "tls": {config.dc: v[1]}})
    return Material(pulumi.Output.secret(full), cert, exports)


def plan_secrets(
    material: Material, root_password: pulumi.Input[str] | None
) -> pulumi.Output[dict[str, Any]]:
    """What the plans are built with: the material plus this stack's own rootPassword, which
    the access step sets (the peer never sees it: it is not in ``exports``)."""
    return pulumi.Output.secret(
        pulumi.Output.all(material.secrets, root_password or "").apply(
            lambda v: {**v[0], "root_password": v[1]}
        )
    )
