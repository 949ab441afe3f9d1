"""Ports of the cluster that more than one layer needs to agree on.

The WireGuard mesh's port is here so that the mesh (services) and the firewalls (host and
cloud) name the same number.
"""

from __future__ import annotations

MESH_PORT = 51820  # WireGuard, UDP: only from the cluster's other nodes
MESH_INTERFACE = "wgmesh"  # the WireGuard interface on every node: internal services live behind it
