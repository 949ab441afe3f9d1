"""Where BIND's zone files of the cluster's own domain live on a node: bind.py writes and
configures them, domains.py (which bind.py imports) tells mailcluster-domains where the zone to
sign is and where named serves it from."""

from __future__ import annotations

# On the volume (bind.DATA_DIR): the primary's serial lives in these files.
ZONE_DIR = "/var/lib/bind/mailcluster"


def zone_file(domain: str) -> str:
    """A master's zone as the plan makes it (mailcluster-zone): unsigned, its own serial."""
    return f"{ZONE_DIR}/db.{domain}"


def signed_file(domain: str) -> str:
    """A master's signed copy of the zone (``dnssec``), which named serves: mailcluster-domains
    writes it from the database, where the writer keeps the zone it signed (mailnode/dnssec.py);
    until then mailcluster-zone keeps a stand-in."""
    return f"{ZONE_DIR}/db.{domain}.signed"


def secondary_file(domain: str) -> str:
    """A secondary's transferred copy: its own file, so named's late dump of it can never be
    mistaken for (or overwrite) the primary zone this node writes when it is promoted."""
    return f"{ZONE_DIR}/db.{domain}.secondary"
