"""Mail client autoconfiguration: what a client needs to set up an account from an address and a
password alone, served by Apache (apache.py) on ``autoconfig.<domain>`` and
``autodiscover.<domain>``, and the RFC 6186 SRV records BIND publishes (bind.py).

- Thunderbird's ``config-v1.1.xml`` (static: it depends only on config), at
  ``https://autoconfig.<domain>/mail/config-v1.1.xml`` and at
  ``/.well-known/autoconfig/mail/config-v1.1.xml`` on every HTTPS name.
  https://wiki.mozilla.org/Thunderbird:Autoconfiguration:ConfigFileFormat
- Outlook's POX Autodiscover (a small PHP script: it echoes the request's address),
  ``https://autodiscover.<domain>/autodiscover/autodiscover.xml`` in any letter case, POST or GET.
  https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/pox-autodiscover-response-for-exchange
- An Apple configuration profile for one address (PHP), ``/mobileconfig?email=<address>``:
  unsigned (a device shows it as "Not Verified"; signing would need a key the nodes hold for no
  other purpose). https://developer.apple.com/documentation/devicemanagement/mail
- SRV records: RFC 6186 (``_imaps``, ``_submission``, and "." for what is not offered), RFC 8314
  section 5.1 (``_submissions``), and Outlook's ``_autodiscover._tcp``.

Every host name and port comes from here, and here from ``cluster/ports.py`` and the topology:
the templates get plain data. No document carries a password: clients ask the user for it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from cluster import ports
from cluster.config import StackConfig
from cluster.hostcontext import HostContext
from cluster.plan import Step
from cluster.topology import DnsRecord, Topology

PACKAGES: tuple[str, ...] = ()  # Apache and PHP are apache.py's

WEBROOT = "/var/www/autoconfig"
CONFIG_XML = f"{WEBROOT}/mail/config-v1.1.xml"
# The PHP lives outside any document root: only the URLs apache's site maps to it run it.
SCRIPT_DIR = "/usr/local/lib/mailcluster/autoconfig"
# The settings both scripts share, and their checks of an address.
COMMON_PHP = f"{SCRIPT_DIR}/common.php"
AUTODISCOVER_PHP = f"{SCRIPT_DIR}/autodiscover.php"
MOBILECONFIG_PHP = f"{SCRIPT_DIR}/mobileconfig.php"
MOBILECONFIG_URL = "/mobileconfig"
# Thunderbird's second lookup (after autoconfig.<domain>): on the domain's own web server.
WELL_KNOWN_URL = "/.well-known/autoconfig/mail/config-v1.1.xml"

# RFC 6186 section 3.4: a target of "." says the service is not offered at all, so a client
# stops looking for it instead of guessing (no POP3 in this cluster).
NOT_OFFERED = "0 0 0 ."


@dataclass(frozen=True)
class Server:
    """One way in: ``socket`` in Thunderbird's words, "SSL" (implicit TLS) or "STARTTLS"."""

    hostname: str
    port: int
    socket: str
    srv: str  # the RFC 6186 / RFC 8314 SRV service label

    def __post_init__(self) -> None:
        # Every way in is TLS: the Apple profile's UseSSL is true for each server it names.
        if self.socket not in ("SSL", "STARTTLS"):
            raise ValueError(f"{self.hostname}:{self.port}: socket {self.socket!r} is not TLS")

    @property
    def outlook_encryption(self) -> str:
        """POX ``Encryption``: "SSL" is implicit TLS, "TLS" is STARTTLS (it overrides ``SSL``).
        https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/encryption-pox"""
        return "SSL" if self.socket == "SSL" else "TLS"


@dataclass(frozen=True)
class Settings:
    """What every document says, the preferred server of each direction first."""

    domain: str
    incoming: tuple[Server, ...]  # IMAP
    outgoing: tuple[Server, ...]  # SMTP submission

    @property
    def imap(self) -> Server:
        return self.incoming[0]

    @property
    def smtp(self) -> Server:
        return self.outgoing[0]


def settings(topology: Topology) -> Settings:
    """The servers this cluster's config offers, from the port table: a port no firewall opens
    is never advertised."""
    host = topology.mail_host
    open_ports = set(ports.ports_by(ports.port_table(topology.config), ports.WORLD, "tcp"))
    incoming = [Server(host, ports.IMAPS_PORT, "SSL", "_imaps")]
    if ports.IMAP_PLAINTEXT_PORT in open_ports:
        # Dovecot requires TLS before login (ssl = required): STARTTLS, never cleartext.
        incoming.append(Server(host, ports.IMAP_PLAINTEXT_PORT, "STARTTLS", "_imap"))
    # 587 first, as the other documents' single choice; 465 as the alternative (RFC 8314).
    outgoing = [Server(host, ports.SUBMISSION_PORT, "STARTTLS", "_submission")]
    if ports.SUBMISSIONS_PORT in open_ports:
        outgoing.append(Server(host, ports.SUBMISSIONS_PORT, "SSL", "_submissions"))
    for server in incoming + outgoing:
        if server.port not in open_ports:
            raise ValueError(f"autoconfig would advertise {server.port}, which no rule opens")
    return Settings(topology.domain, tuple(incoming), tuple(outgoing))


def autodiscover_host(config: StackConfig) -> str:
    return f"autodiscover.{config.domain}"


def autoconfig_host(config: StackConfig) -> str:
    return f"autoconfig.{config.domain}"


def site_values(config: StackConfig) -> dict[str, str]:
    """What Apache's site (apache.py) maps: the names, URLs and files of this module."""
    return {
        "webroot": WEBROOT,
        "script_dir": SCRIPT_DIR,
        "config_xml": CONFIG_XML,
        "well_known_url": WELL_KNOWN_URL,
        "autodiscover_php": AUTODISCOVER_PHP,
        "mobileconfig_url": MOBILECONFIG_URL,
        "mobileconfig_php": MOBILECONFIG_PHP,
        "autoconfig_host": autoconfig_host(config),
        "autodiscover_host": autodiscover_host(config),
    }


def srv_records(topology: Topology) -> list[DnsRecord]:
    """The zone's SRV records (RFC 2782 value: priority weight port target). A server's priority
    is its place in its list, so clients prefer what the documents prefer (RFC 6186 3.4)."""
    s = settings(topology)
    out: list[DnsRecord] = []
    for servers in (s.incoming, s.outgoing):
        for priority, server in enumerate(servers):
            value = f"{priority} 1 {server.port} {server.hostname}."
            out.append(DnsRecord(f"{server.srv}._tcp", "SRV", value))
    offered = {server.srv for server in s.incoming + s.outgoing}
    # _submissions (RFC 8314) is simply absent when 465 is not served: it has no "not
    # offered" meaning in RFC 6186's list.
    for label in ("_imap", "_pop3", "_pop3s"):
        if label not in offered:
            out.append(DnsRecord(f"{label}._tcp", "SRV", NOT_OFFERED))
    # Outlook's lookup when autodiscover.<domain> has no address of its own (it has one here).
    target = autodiscover_host(topology.config)
    out.append(DnsRecord("_autodiscover._tcp", "SRV", f"0 1 {ports.HTTPS_PORT} {target}."))
    return out


def profile_namespace(domain: str) -> str:
    """The UUID namespace of the Apple profiles: fixed per domain, so each address's payload
    UUIDs (UUIDv5 of the address in it, computed by the PHP) are the same on every node and
    every request, and a new download replaces the installed profile instead of adding one."""
    return str(uuid.uuid5(uuid.NAMESPACE_DNS, f"mobileconfig.{domain}"))


def reverse_domain(domain: str) -> str:
    """``example.com`` -> ``com.example``: Apple's PayloadIdentifier is reverse-DNS."""
    return ".".join(reversed(domain.split(".")))


def template_values(topology: Topology) -> dict[str, Any]:
    s = settings(topology)
    return {
        "settings": s,
        "profile_namespace": profile_namespace(s.domain),
        "payload_prefix": f"{reverse_domain(s.domain)}.mailcluster.mail",
    }


def steps(ctx: HostContext) -> list[Step]:
    values = template_values(ctx.topology)
    return [
        ctx.file(CONFIG_XML, **values),
        ctx.file(COMMON_PHP, **values),
        ctx.file(AUTODISCOVER_PHP),
        ctx.file(MOBILECONFIG_PHP),
    ]
