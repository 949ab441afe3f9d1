"""MTA-STS (RFC 8461): the policy text, its id, and the policy file Apache serves at
https://mta-sts.<domain>/.well-known/mta-sts.txt.

The id goes into the ``_mta-sts`` TXT record (bind.py) and changes exactly when the policy text
does, so senders fetch the policy again only after a real change.
"""

from __future__ import annotations

import hashlib

from cluster.config import StackConfig
from cluster.hostcontext import HostContext
from cluster.plan import Step

PACKAGES: tuple[str, ...] = ()

WEBROOT = "/var/www/mta-sts"
POLICY = f"{WEBROOT}/.well-known/mta-sts.txt"
# RFC 8461 section 3.2: max_age in seconds; a week or more once enforcing, a day while testing.
MAX_AGE = {"enforce": 1209600, "testing": 86400, "none": 86400}


def policy(config: StackConfig) -> str:
    """The policy text (RFC 8461 3.2). It has no comment syntax, so no "managed by" header."""
    mode = config.mta_sts_mode
    return f"version: STSv1\nmode: {mode}\nmx: mail.{config.domain}\nmax_age: {MAX_AGE[mode]}\n"


def policy_id(config: StackConfig) -> str:
    """The id of the _mta-sts TXT record: changes exactly when the policy text does."""
    return hashlib.sha256(policy(config).encode()).hexdigest()[:20]


def steps(ctx: HostContext) -> list[Step]:
    return [ctx.literal_file(POLICY, policy(ctx.config))]
