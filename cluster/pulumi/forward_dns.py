"""Does a name resolve to an address yet? Linode refuses a PTR until it does.

On a first deployment the forward names cannot resolve: they live in the zone our own BIND
serves, which the world finds only once the registrar's glue (``ns1``/``ns2.<domain>``) points
at the shared IPs this very run creates. Declaring the PTRs then would make the provider retry
for its whole timeout (15 minutes) and fail; instead the program looks the name up itself and
declares only what resolves, warning about the rest (``DataCentre.declare_dns``).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable


def system_lookup(name: str) -> set[str]:
    """The name's A and AAAA records through the system resolver; empty when it does not
    resolve (NXDOMAIN, no delegation yet, no network)."""
    try:
        infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError, OSError):
        return set()
    return {str(info[4][0]) for info in infos}


def system_resolves(name: str, address: str) -> bool:
    want = ipaddress.ip_address(address)
    return any(ipaddress.ip_address(found) == want for found in system_lookup(name))


# Replaced in the unit tests (no network there); the program asks the system resolver.
resolves: Callable[[str, str], bool] = system_resolves
