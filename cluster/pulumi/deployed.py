"""What this stack deployed last time, read back from its own outputs, and the changes refused.

Why this stack's own outputs: they are exactly what the last successful ``up`` built (region,
the mail host and so the domain, the VPC subnet, the PTRs declared), they exist for every deployed
stack already, and reading them needs no credentials beyond the state backend the CLI uses
anyway. A Linode lookup by label would see the region but not the domain, and a
``StackReference`` resource would only give Outputs, too late to refuse before any resource is
declared. So the program calls the engine's builtin invoke ``pulumi:pulumi:readStackOutputs``
(pulumi/pulumi ``pkg/resource/deploy/builtins.go``; the Node SDK's synchronous StackReference
uses it too), synchronously, at start-up. Under mocks the harness answers it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi

from cluster.config import ConfigError, StackConfig
from cluster.pulumi.change_rules import KEY_CHANGES, REFUSED_KEYS
from cluster.pulumi.peer import OUT_MAIL_HOST, OUT_REVERSE_DNS, OUT_VPC_SUBNET

READ_STACK_OUTPUTS = "pulumi:pulumi:readStackOutputs"


@dataclass(frozen=True)
class Deployed:
    """This stack's outputs from its last ``up``; empty when it was never deployed."""

    outputs: dict[str, Any]

    @property
    def ptr_addresses(self) -> list[str]:
        return [str(a) for a in self.outputs.get(OUT_REVERSE_DNS) or []]

    def value(self, key: str) -> str | None:
        """The deployed value of a refused config key, when the outputs tell it."""
        if key == "domain":
            host = self.outputs.get(OUT_MAIL_HOST)
            return str(host).removeprefix("mail.") if host else None
        found = self.outputs.get(OUT_VPC_SUBNET if key == "vpcSubnet" else key)
        return str(found) if found else None


def read_deployed() -> Deployed:
    name = f"{pulumi.get_organization()}/{pulumi.get_project()}/{pulumi.get_stack()}"
    try:
        result = pulumi.runtime.invoke(READ_STACK_OUTPUTS, {"name": name})
    except Exception as exc:  # an engine without the builtin: say so, guard nothing
        pulumi.log.warn(f"cannot read this stack's previous outputs ({exc}); region, domain "
                        "and dc changes are not guarded on this run")  # fmt: skip
        return Deployed({})
    outputs = (result.value or {}).get("outputs") or {}
    return Deployed(dict(outputs))


def refuse_unsafe_changes(config: StackConfig, deployed: Deployed) -> None:
    """Raise ``ConfigError`` for a change ``KEY_CHANGES`` refuses, saying what to do instead."""
    attrs = {
        "domain": config.domain,
        "region": config.region,
        "dc": config.dc,
        "vpcSubnet": config.vpc_subnet,
    }
    errors = []
    for key in REFUSED_KEYS:
        was = deployed.value(key)
        if was is not None and was != attrs[key]:
            errors.append(
                f"mailcluster:{key}: this stack is deployed with {key} {was!r}; changing it to "
                f"{attrs[key]!r} would replace the nodes, their volumes or the shared IP. "
                f"Instead: {KEY_CHANGES[key].does}"
            )
    if errors:
        raise ConfigError("refused change:\n  " + "\n  ".join(errors))
