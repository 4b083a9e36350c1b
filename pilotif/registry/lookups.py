"""The ops that read: `lookup` (a node by name, address, key or tag), `trust_list` (a
node's trusted peers and the requests either way, a page at a time) and `relay_tickets`
(what the node presents to one of our standalone relays)."""

import contextlib
from ipaddress import IPv4Address, ip_address
from typing import Any, Final

from pilotif.control.relay_info import RelayInfo
from pilotif.control.tickets import TICKET_LIFETIME_S, issue_ticket, ticket_key
from pilotif.registry.directory import Directory
from pilotif.registry.requests import (
    Handler,
    Refused,
    Request,
    fit,
    hostname_field,
    offset_field,
    tags_field,
)
from pilotif.registry.store import NodeRecord
from pilotif.wg.keys import InvalidKeyError, decode_key

LOOKUP_LIMIT: Final = 20
"""Most nodes one lookup returns (fewer if they do not fit one reply)."""
TICKET_PAGE_LIMIT: Final = 12
"""Most relay tickets one reply holds (the node forwards them in one attach)."""
TRUST_PAGE_LIMIT: Final = 20
"""Most entries one trust_list page holds (fewer if they do not fit one reply)."""
_TAG_PREFIX: Final = "tag:"
_TRUST_LISTS: Final = ("trusted", "incoming", "outgoing")


class Lookups:
    """See the module docstring. `relays` are the standalone relays whose tickets we
    issue (with `private_key`, the registry's)."""

    def __init__(
        self, directory: Directory, private_key: bytes, relays: tuple[RelayInfo, ...]
    ) -> None:
        self._directory = directory
        self._store = directory.store
        self._ticket_keys = {relay.key: ticket_key(private_key, relay.key) for relay in relays}

    def handlers(self) -> dict[str, Handler]:
        """The ops this class answers."""
        return {
            "lookup": self.lookup,
            "trust_list": self.trust_list,
            "relay_tickets": self.relay_tickets,
        }

    def lookup(self, request: Request, node: NodeRecord) -> dict[str, Any]:
        """The nodes a query finds, but those of closed networks the node is not in."""
        query = request.message.get("query")
        offset = offset_field(request.message)
        if not isinstance(query, str):
            raise Refused("bad_request", "lookup needs a query")
        closed = self._store.closed_networks()
        found = [
            n
            for n in self._find(query.strip(), offset)
            if n.network not in closed or n.network == node.network
        ]
        nodes = [self._directory.describe(n, request.now) for n in found]
        return fit({"nodes": []}, [("nodes", node) for node in nodes], offset, LOOKUP_LIMIT)

    def _find(self, query: str, offset: int) -> list[NodeRecord]:
        if query.startswith(_TAG_PREFIX):
            tag = tags_field([query.removeprefix(_TAG_PREFIX)])[0]
            return self._store.nodes_with_tag(tag, LOOKUP_LIMIT + 1, offset)
        if offset:
            return []
        found: NodeRecord | None
        with contextlib.suppress(ValueError):
            address = ip_address(query)
            if isinstance(address, IPv4Address):
                found = self._store.node_by_ipv4(address)
            else:
                found = self._store.node_by_ipv6(address)
            return [] if found is None else [found]
        with contextlib.suppress(InvalidKeyError):
            found = self._store.node_by_key(decode_key(query))
            return [] if found is None else [found]
        found = self._store.node_by_hostname(hostname_field(query.removesuffix(".pilot")))
        return [] if found is None else [found]

    def trust_list(self, request: Request, node: NodeRecord) -> dict[str, Any]:
        """One page of the node's trusted peers, then requests to it, then its own: read
        from the database from `offset` on, never the whole lists."""
        key, now = request.sender, request.now
        describe = self._directory.describe
        offset = offset_field(request.message)
        entries: list[tuple[str, Any]] = []
        start = offset
        for name, total in zip(_TRUST_LISTS, self._store.trust_counts(key), strict=True):
            wanted = TRUST_PAGE_LIMIT + 1 - len(entries)
            if start >= total or wanted <= 0:
                start = max(0, start - total)
                continue
            if name == "trusted":
                entries += [
                    (name, describe(n, now)) for n in self._store.trusted(key, wanted, start)
                ]
            elif name == "incoming":
                entries += [
                    (name, {"node": describe(n, now), "message": text})
                    for n, text in self._store.incoming(key, wanted, start)
                ]
            else:
                entries += [
                    (name, describe(n, now)) for n in self._store.outgoing(key, wanted, start)
                ]
            start = 0
        empty: dict[str, list[Any]] = {name: [] for name in _TRUST_LISTS}
        return fit(empty, entries, offset, TRUST_PAGE_LIMIT)

    def relay_tickets(self, request: Request, node: NodeRecord) -> dict[str, Any]:
        """One page of tickets for one of our relays, a ticket per trusted peer: what the
        node presents to that relay to send through it."""
        key, now = request.sender, request.now
        relay = request.message.get("relay")
        try:
            mac_key = self._ticket_keys.get(decode_key(relay)) if isinstance(relay, str) else None
        except InvalidKeyError:
            mac_key = None
        if mac_key is None:
            raise Refused("unknown_relay", "this registry lists no such relay")
        offset = offset_field(request.message)
        expires = int(now) + TICKET_LIFETIME_S
        peers = self._store.trusted(key, TICKET_PAGE_LIMIT + 1, offset)
        entries = [("tickets", issue_ticket(mac_key, key, p.public_key, expires)) for p in peers]
        return fit({"tickets": []}, entries, offset, TICKET_PAGE_LIMIT)
