"""How the program reaches a node: root over SSH, one place for both the plan and the handover."""

from __future__ import annotations

import pulumi
import pulumi_command.remote as remote

# A fresh Linode takes a minute or so to boot sshd; the provider retries failed dials.
DIAL_ERROR_LIMIT = 60


def connection(
    host: pulumi.Input[str], private_key: pulumi.Input[str] | None
) -> remote.ConnectionArgs:
    return remote.ConnectionArgs(
        host=host,
        user="root",
        # Without a key in config the provider uses the SSH agent (SSH_AUTH_SOCK).
        private_key=private_key,
        dial_error_limit=DIAL_ERROR_LIMIT,
    )
