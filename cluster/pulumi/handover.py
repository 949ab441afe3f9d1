"""The handover before svr1 goes down: svr2 takes the shared IP and the mail role over.

A ``remote.Command`` on svr2 whose ``triggers`` are the inputs whose change takes a node down
(the Linode plan: a resize; the VPC interface: adding it to a node that has none powers the node
off and on). svr1's Instance depends on it (``DataCentre._instance_order``),
so a rolling update is: svr2 updated (and back), handover, svr1 updated. Heartbeat runs with
``auto_failback off``: svr2 stays the holder afterwards, as after any failover.
"""

from __future__ import annotations

import shlex

import pulumi
import pulumi_command.remote as remote
import pulumi_linode as linode

from cluster.config import StackConfig
from cluster.plan import CHANGED_MARK, STATE_DIR
from cluster.pulumi.ssh import connection
from cluster.services.role import ROLE_SCRIPT

ROLE = ROLE_SCRIPT
HB_TAKEOVER = "/usr/share/heartbeat/hb_takeover"
WAIT_TENTHS = 600

STATE = f"{STATE_DIR}/handover-for"


def script(pending: str) -> str:
    """Take over when the disruptive inputs differ from those of the last run (a change is
    pending), never when this Command is merely new: a first `up` (nothing provisioned yet) or
    the first `up` of a running cluster with this program. If svr2 cannot take over, the
    command fails, the stamp keeps the old value (a retry takes over again) and svr1 is left
    running, not taken down."""
    want = shlex.quote(pending)
    return f"""set -euo pipefail
want={want}
prev=$(cat {STATE} 2>/dev/null || true)
stamp() {{ install -d -m 0700 "$(dirname {STATE})"; printf '%s\\n' "$want" > {STATE}; }}
if [ -z "$prev" ] || [ "$prev" = "$want" ] \\
   || [ ! -x {ROLE} ] || ! cl_status hbstatus >/dev/null 2>&1; then
  stamp
  exit 0
fi
if ! {ROLE} is-holder; then
  {HB_TAKEOVER} all >/dev/null 2>&1 || true
  for _ in $(seq 1 {WAIT_TENTHS}); do {ROLE} is-holder && break; sleep 0.1; done
  if ! {ROLE} is-holder; then
    echo "$(hostname) did not take the shared IP over in {WAIT_TENTHS // 10} s: svr1 left up" >&2
    exit 1
  fi
  echo "{CHANGED_MARK} $(hostname) took the shared IP and the role over"
fi
stamp
"""


def disruptive_inputs(config: StackConfig) -> list[str]:
    """The config behind the Instance inputs change_rules.RULES calls disruptive and the
    program sets (root_pass is create-time only: the plan sets the password): the plan, and
    the VPC interface (``interfaces``), whose subnet is refused once deployed (vpcSubnet) but
    whose arrival on a node deployed without one is such an update."""
    return [config.instance_type, f"vpc {config.vpc_subnet}"]


def handover_command(
    name: str,
    config: StackConfig,
    svr2: linode.Instance,
    ssh_private_key: pulumi.Input[str] | None,
    parent: pulumi.Resource,
) -> remote.Command:
    return remote.Command(
        name,
        connection=connection(pulumi.get(svr2, "ip_address"), ssh_private_key),
        create="bash -c " + shlex.quote(script(" ".join(disruptive_inputs(config)))),
        triggers=disruptive_inputs(config),
        add_previous_output_in_env=False,
        opts=pulumi.ResourceOptions(parent=parent),
    )
