"""Read the stack's ``mailcluster:`` config from the Pulumi runtime into a validated StackConfig.

``pulumi.Config`` can only look keys up by name, so a typo (``mailcluster:activeDC``) would be
silently ignored. Instead we read the whole config map the language host handed the program
(``pulumi.runtime`` holds it, set from ``PULUMI_CONFIG`` or ``set_all_config``) and let
``load_config`` reject unknown keys before any resource is declared.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
from pulumi.runtime import config as runtime_config

from cluster.config import (
    SECRET_KEYS,
    ConfigError,
    StackConfig,
    check_linode_region,
    load_config,
)
from cluster.stackfiles import NAMESPACE


def raw_config() -> dict[str, Any]:
    """Every ``mailcluster:`` key of the running stack (without the prefix), secrets left out."""
    merged: dict[str, Any] = {**runtime_config.get_config_env(), **runtime_config.CONFIG.get()}
    out: dict[str, Any] = {}
    for full_key, value in merged.items():
        namespace, _, name = full_key.partition(":")
        if namespace != NAMESPACE:
            continue  # linode:token and other providers' keys are not ours to judge
        # Older engines pass "mailcluster:config:key".
        name = name.removeprefix("config:")
        if name not in SECRET_KEYS:
            out[name] = value
    return out


@dataclass(frozen=True)
class StackSecrets:
    """Config secrets, kept as secret Outputs: they never enter StackConfig."""

    root_password: pulumi.Output[str] | None
    ssh_private_key: pulumi.Output[str] | None
    backup_access_key: pulumi.Output[str] | None = None
    backup_secret_key: pulumi.Output[str] | None = None


def check_peer(config: StackConfig) -> None:
    """A standby data centre renders its config from the active one's addresses, which it can
    only read through ``peerStack``."""
    if config.peer_stack is None and config.active_dc != config.dc:
        raise ConfigError(
            "invalid stack config:\n  mailcluster:peerStack: is required when activeDc "
            f"({config.active_dc}) is not this stack's data centre ({config.dc}): name the "
            f"{config.active_dc} stack, e.g. {config.active_dc}"
        )


def load(raw: dict[str, Any] | None = None, stack: str | None = None) -> StackConfig:
    config = load_config(raw_config() if raw is None else raw, stack or pulumi.get_stack())
    check_peer(config)
    check_linode_region(config)  # IP sharing and the VPC: only Linode's rules, not the lab's
    return config


def load_secrets() -> StackSecrets:
    cfg = pulumi.Config(NAMESPACE)
    return StackSecrets(
        root_password=cfg.get_secret("rootPassword"),
        ssh_private_key=cfg.get_secret("sshPrivateKey"),
        backup_access_key=cfg.get_secret("backupAccessKey"),
        backup_secret_key=cfg.get_secret("backupSecretKey"),
    )
