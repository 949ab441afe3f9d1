"""mailcluster: one Linode data centre per stack (dc1, dc2), provisioned from the per-host plan.

Every ``up`` builds and provisions: the firewall names no node (the internal ports are open to
the VPC subnet the program chose, the mesh port to anyone), so nothing waits for a node's
address. A first deployment: dc1 (serving), dc2 (replicating dc1), dc1 again (it learns dc2).
See README.md, "Deploy to Linode".
"""

import pulumi

from cluster.pulumi import config as pulumi_config
from cluster.pulumi.backup import backup_target
from cluster.pulumi.datacentre import DataCentre, DataCentreArgs, stack_outputs
from cluster.pulumi.deployed import read_deployed, refuse_unsafe_changes
from cluster.pulumi.material import cluster_material, generates_secrets, plan_secrets
from cluster.pulumi.peer import PeerStack
from cluster.pulumi.provision import Provisioning, ProvisioningArgs

config = pulumi_config.load()  # raises ConfigError naming every bad key, before any resource
deployed = read_deployed()
refuse_unsafe_changes(config, deployed)  # region, domain, dc: refused before any resource
stack_secrets = pulumi_config.load_secrets()
provision = config.provision
peer = PeerStack(config)
peer.remind_until_deployed(config)

dc = DataCentre(
    config.dc,
    DataCentreArgs(
        config=config,
        peer=peer,
        root_password=stack_secrets.root_password,
        deployed_ptrs=deployed.ptr_addresses,
        handover=provision,
        ssh_private_key=stack_secrets.ssh_private_key,
    ),
)
# The backup repository belongs to the stack that makes the material (dc1); dc2 reads it.
backup = (
    backup_target(config, stack_secrets.backup_access_key, stack_secrets.backup_secret_key)
    if generates_secrets(config)
    else None
)
material = cluster_material(config, peer, dc.addresses, backup=backup)

provisioned: list[pulumi.Resource] = []
topology_dcs: pulumi.Input[list[str]] = []
if provision:
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
