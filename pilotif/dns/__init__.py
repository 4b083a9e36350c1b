"""`HOSTNAME.pilot` for unmodified programs: the node's DNS responder and the code that points
the machine's resolver at it (and restores it)."""

from pilotif.dns.resolver import ResolverConfig, ResolverError
from pilotif.dns.responder import (
    DOMAIN,
    Action,
    Addresses,
    DnsDrop,
    DnsResponder,
    DnsServer,
    NameTable,
    serve_dns,
)

__all__ = [
    "DOMAIN",
    "Action",
    "Addresses",
    "DnsDrop",
    "DnsResponder",
    "DnsServer",
    "NameTable",
    "ResolverConfig",
    "ResolverError",
    "serve_dns",
]
