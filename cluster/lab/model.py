"""The lab's stacks: the committed stack configs, with only what a lab must differ in."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cluster.config import DC_NAMES, StackConfig, load_config
from cluster.lab.addresses import VPC_SUBNETS, client_address, client_address6, lab_dc_addresses
from cluster.services.storage import device_path
from cluster.stackfiles import read_stack_config
from cluster.topology import Topology

# Where the lab's webhook listener (in the client namespace) listens.
ALERT_WEBHOOK_PORT = 8089

# The shared IP moves by BGP, as on Linode (the lab's route servers: routeservers.py); `apply
# --set sharedIpMethod=arp` drills the legacy method. Let's Encrypt cannot reach the lab.
# The admin is the client's own address (192.0.2.100), not the whole "internet" (the stack
# files' 192.0.2.0/24): other client addresses are strangers to the firewall and to fail2ban.
# The mesh in RFC 2544 benchmark space, like the rest of the lab (never a real network).
LAB_SUBMISSION_LIMIT = 100000
LAB_SPAM_JUNK_SCORE = 13
LAB_SPAM_REJECT_SCORE = 22
LAB_OVERRIDES: Mapping[str, Any] = {
    "sharedIpMethod": "bgp",
    "tlsMode": "selfsigned",
    "meshCidr": "198.19.10.0/24",
    "adminCidrs": [f"{client_address()}/32", f"{client_address6()}/128"],
    # The client scrapes the exporters, as an operator's Prometheus would.
    "metricsCidrs": [f"{client_address()}/32", f"{client_address6()}/128"],
    # A listener in the client namespace ("the internet") plays the operator's webhook
    # receiver (tests/lab/test_alerts.py runs it).
    "alertWebhook": f"http://{client_address()}:{ALERT_WEBHOOK_PORT}/alerts",
    # The drills' and the benchmarks' steady senders send thousands of messages an hour as one
    # user; the stack's default (200) deferred them within a minute. tests/lab/test_security.py
    # sets the default for its own test of the limit.
    "submissionRateLimitPerHour": LAB_SUBMISSION_LIMIT,
    # The lab's internet has no DNS: every message from the client over port 25 scores 7.3 in
    # rspamd for that alone (no reverse DNS for its address: RDNS_NONE 2.0 and
    # HFILTER_HOSTNAME_UNKNOWN 2.5; a HELO name and a sender domain that resolve nowhere:
    # HFILTER_HELO_IP_A 1.0, HFILTER_HELO_NORES_A_OR_MX 0.3, HFILTER_FROMHOST_NORES_A_OR_MX
    # 1.5), which would file all of it into Junk at the default 6. Both scores move up by
    # that much, rounded: tests/lab/test_mailbox_features.py keeps a message between them.
    "spamJunkScore": LAB_SPAM_JUNK_SCORE,
    "spamRejectScore": LAB_SPAM_REJECT_SCORE,
}


def lab_config(stack: str, sets: Mapping[str, Any] | None = None) -> StackConfig:
    # Each data centre's VPC is the lab's network for it (net.py): fixed, like the addresses.
    raw = {**read_stack_config(stack), **LAB_OVERRIDES, "vpcSubnet": VPC_SUBNETS[stack],
           **(sets or {})}  # fmt: skip
    return load_config(raw, stack)


def lab_topology(stack: str, sets: Mapping[str, Any] | None = None) -> Topology:
    return Topology(
        config=lab_config(stack, sets), dcs={dc: lab_dc_addresses(dc) for dc in DC_NAMES}
    )


def volume_path(host: str) -> str:
    """Where a host finds its data volume: the path the plan's storage step waits for on a
    Linode, which the lab makes point at the host's loop device."""
    return device_path(lab_topology("dc1").node(host))
