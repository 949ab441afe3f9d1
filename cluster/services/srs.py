"""Forwarding to other domains keeps SPF passing: SRS (Debian's postsrsd) for forwarded copies
only, and never a forwarded copy of spam.

An alias of Postfix Admin may deliver to an address elsewhere. Sent on with the original sender
(someone@gmail.com), the copy fails SPF at the next hop, since our servers are no sender of
gmail.com. SRS rewrites that envelope sender into one of ours (``SRS0=hash=tt=gmail.com=someone@
<domain>``), whose bounces postsrsd turns back into the original.

Postfix applies canonical maps to a whole message, local copies included; a global
``sender_canonical_maps`` would put the SRS address into the Return-Path of every local
delivery of outside mail as well. So the rewriting is a second pass that only forwarded copies
take:

- ``sender_dependent_default_transport_maps`` picks the transport of recipients outside our
  domains (after alias expansion) by sender: our own domains, the null sender and SRS senders go
  out directly (``smtp:``); any other sender's copy is a forward and goes to ``srsfwd``, an SMTP
  client to a loopback listener (``REINJECT_PORT``);
- that listener hands the copy to ``srscleanup``, a cleanup with postsrsd's forward map as its
  ``sender_canonical_maps`` and a header check that DISCARDs a copy rspamd marked as spam (the
  local copy is untouched: it went to Dovecot, which files it into Junk), then sends it on with
  ``content_filter=smtp:`` (no second routing, so no loop);
- postsrsd's reverse map is global (``recipient_canonical_maps``): a bounce to an SRS address
  reaches the original sender.

postsrsd 1.10 (Debian 13) listens on loopback TCP (``tcp:`` tables). Every node has the same
secret (a Pulumi secret), so an address one node signed is valid on all of them after a
takeover or a failover. SRS addresses are in the cluster's domain, whose SPF record names the
cluster's addresses.
"""

from __future__ import annotations

from cluster import ports
from cluster.hostcontext import HostContext
from cluster.plan import Step, reload_or_start, script_step

PACKAGES: tuple[str, ...] = ("postsrsd",)

DEFAULTS = "/etc/default/postsrsd"
SECRET = "/etc/postsrsd.secret"
FORWARD_PORT = ports.SRS_FORWARD_PORT
REVERSE_PORT = ports.SRS_REVERSE_PORT
REINJECT_PORT = ports.SRS_REINJECT_PORT
FORWARD_MAP = f"tcp:127.0.0.1:{FORWARD_PORT}"
REVERSE_MAP = f"tcp:127.0.0.1:{REVERSE_PORT}"
SERVICE_STEP = "srs.postsrsd"


def steps(ctx: HostContext) -> list[Step]:
    defaults = ctx.file(
        DEFAULTS,
        secret_file=SECRET,
        forward_port=FORWARD_PORT,
        reverse_port=REVERSE_PORT,
    )
    # postsrsd reads the secret as root before it drops to its own user.
    secret = ctx.literal_file(SECRET, ctx.secrets.srs + "\n", mode="0600", secret=True)
    service = script_step(
        SERVICE_STEP,
        # postsrsd has no reload; a restart takes a moment, during which Postfix defers.
        reload_or_start("postsrsd", restart=True),
        watch=(defaults, secret),
    )
    return [defaults, secret, service]
