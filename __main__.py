"""mailcluster: one Linode data centre per stack (dc1, dc2), provisioned from the per-host plan.

Order of a first deployment: ``pulumi up -s dc1``, ``pulumi up -s dc2``, ``pulumi up -s dc1``
(so dc1 learns dc2's addresses). See README.md, "Deploy to Linode".
"""

import pulumi

from cluster.pulumi import config as pulumi_config
from cluster.pulumi.datacentre import DataCentre, DataCentreArgs, stack_outputs
from cluster.pulumi.deployed import read_deployed, refuse_unsafe_changes
from cluster.pulumi.material import cluster_material, plan_secrets
from cluster.pulumi.peer import PeerStack
from cluster.pulumi.provision import Provisioning, ProvisioningArgs

config = pulumi_config.load()  # raises ConfigError naming every bad key, before any resource
deployed = read_deployed()
refuse_unsafe_changes(config, deployed)  # region, domain, dc: refused before any resource
stack_secrets = pulumi_config.load_secrets()
peer = PeerStack(config)

dc = DataCentre(
    config.dc,
    DataCentreArgs(
        config=config,
        peer=peer,
        root_password=stack_secrets.root_password,
        deployed_addresses=deployed.addresses,
        deployed_ptrs=deployed.ptr_addresses,
        handover=config.provision,
        ssh_private_key=stack_secrets.ssh_private_key,
    ),
)
material = cluster_material(config, peer, dc.addresses)

provisioned: list[pulumi.Resource] = []
topology_dcs: pulumi.Input[list[str]] = []
if config.provision:
    provisioning = Provisioning(
        f"{config.dc}-provision",
        ProvisioningArgs(
            config=config,
            own_addresses=dc.addresses,
            peer_addresses=peer.addresses,
            secrets=plan_secrets(material, stack_secrets.root_password),
            ssh_private_key=stack_secrets.ssh_private_key,
            infrastructure=dc.infrastructure,
        ),
    )
    provisioned = list(provisioning.commands.values())
    # The data centres this stack's nodes were configured with: the peer reads it to know
    # when our BIND serves its names (see DataCentre.declare_dns).
    topology_dcs = peer.addresses.apply(
        lambda p: sorted([config.dc, config.peer_dc]) if p else [config.dc]
    )
dc.declare_dns(provisioned)

outputs = stack_outputs(dc, material.exports, topology_dcs, material.certificate.cert_pem)
for key, value in outputs.items():
    pulumi.export(key, value)
