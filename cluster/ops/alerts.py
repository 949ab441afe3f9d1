"""``alerts test``: one test alert through the very path the nodes' alerts take
(``mailcluster-alerts test`` on a node: the webhook and the mail to the alert addresses)."""

from __future__ import annotations

from cluster.ops.status import writer_of
from cluster.ops.target import OpsError, Result, Target
from cluster.services.alerts import ALERTS_SCRIPT


def send_test(target: Target) -> tuple[str, Result]:
    """(the node that sent it, its result). The writable master sends it when there is one
    (its Postfix takes the mail itself); else the first node that answers."""
    nodes = target.nodes()
    writer = writer_of(target, nodes)
    for node in [writer] if writer else nodes:
        res = target.run(node, [ALERTS_SCRIPT, "test"])
        if res.returncode != 255:
            return node, res
    raise OpsError(f"{target.description}: no node answers (is the cluster up?)")
