"""The `register` op (a node's first registration and every heartbeat after it): its
name, tags, network and address from the store, where it is now, what its peers learn
when it changes, the trust requests that wait for it, and the limits on new nodes. It
also keeps each node's counter floor in the store (`keep_counter_floor`).

The `family_endpoint` op: a dual-stack node registers over one IP family and sends this
(sealed, after each registration) to our address of the other family; where it came
from is the node's public endpoint of that family, which its peers get among its
candidates. An older node never sends it: its one endpoint is all we keep, as before."""

from collections.abc import Mapping
from typing import Any, Final

from pilotif.control.gate import PrefixLimit, PrefixRate
from pilotif.control.ratelimit import TokenBuckets
from pilotif.control.relay_info import RelayInfo
from pilotif.control.wire import COUNTER_LEASE, format_endpoint
from pilotif.registry.directory import Directory
from pilotif.registry.requests import (
    Handler,
    Refused,
    Request,
    hostname_field,
    join_key_field,
    lan_field,
    tags_field,
)
from pilotif.registry.store import NodeRecord, Store, StoreError
from pilotif.util.logs import log_event
from pilotif.wg.events import Endpoint
from pilotif.wg.keys import encode_key

PENDING_PUSH_LIMIT: Final = 20
"""Most trust requests re-sent to a node after one of its registrations."""
NEW_NODES_PER_S: Final = 0.2
NEW_NODES_BURST: Final = 20.0
"""New registrations from one IPv4 address or IPv6 /64: names and addresses are finite."""
NEW_NODES_PER_IPV4_24_S: Final = 1.0
NEW_NODES_IPV4_24_BURST: Final = 100.0
NEW_NODES_PER_IPV6_48_S: Final = 0.5
NEW_NODES_IPV6_48_BURST: Final = 50.0
NEW_NODES_PER_IPV6_32_S: Final = 1.0
NEW_NODES_IPV6_32_BURST: Final = 100.0
"""New registrations from the networks around it, each counted too: a /48 holds 65,536
/64s and a /32 65,536 /48s, but gets a few times what one /64 gets, not that many times."""
NEW_NODE_RATES: Final = (
    PrefixRate(4, 32, NEW_NODES_PER_S, NEW_NODES_BURST),
    PrefixRate(4, 24, NEW_NODES_PER_IPV4_24_S, NEW_NODES_IPV4_24_BURST),
    PrefixRate(6, 64, NEW_NODES_PER_S, NEW_NODES_BURST),
    PrefixRate(6, 48, NEW_NODES_PER_IPV6_48_S, NEW_NODES_IPV6_48_BURST),
    PrefixRate(6, 32, NEW_NODES_PER_IPV6_32_S, NEW_NODES_IPV6_32_BURST),
)
JOIN_KEY_USES_PER_S: Final = 1.0
JOIN_KEY_BURST: Final = 100.0
"""New registrations with one join key (a fleet joins in a burst, a leaked key does not
fill the network at once)."""
DEFAULT_EXPIRE_AFTER_S: Final = 30 * 86_400.0
"""A node not seen for this long loses its name and address."""
SEEN_WRITE_S: Final = 300.0
"""A heartbeat is written to the database when the node's endpoints or session changed,
else at most this often (and for every node at a clean stop): at 100,000 nodes a write
per heartbeat would be 5,000 rows a second."""


def keep_counter_floor(store: Store, record: NodeRecord, counter: int) -> None:
    """Keep the node's stored floor above `counter`: it is written COUNTER_LEASE ahead,
    so once every COUNTER_LEASE / 2 messages rather than for each."""
    if counter > record.highest_counter - COUNTER_LEASE // 2:
        store.record_counter(record.public_key, counter + COUNTER_LEASE)


def _identity_fields(
    message: dict[str, Any], previous: NodeRecord | None
) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """A registration's hostname, tags and LAN endpoints, checked and normalized; a
    heartbeat that repeats what its node's record holds (already normalized) is taken
    as it is, without the checks (a tenth of a heartbeat's cost in the core)."""
    hostname, tags, lan = message.get("hostname"), message.get("tags", []), message.get("lan", [])
    if (
        previous is not None
        and hostname == previous.hostname
        and tags == list(previous.tags)
        and lan == list(previous.lan_endpoints)
    ):
        return previous.hostname, previous.tags, previous.lan_endpoints
    return hostname_field(hostname), tags_field(tags), lan_field(lan)


class Registration:
    """The `register` op; see the module docstring."""

    def __init__(
        self,
        directory: Directory,
        sessions: Mapping[bytes, int],
        *,
        relays: tuple[RelayInfo, ...],
        require_join_key: bool,
        expire_after_s: float,
    ) -> None:
        self._directory = directory
        self._store = directory.store
        self._network_text = str(self._store.network)
        self._sessions = sessions
        self._relays = relays
        self._require_join_key = require_join_key
        self._expire_after_s = expire_after_s
        self._new_node_limit = PrefixLimit(NEW_NODE_RATES)
        self._join_key_limit = TokenBuckets(JOIN_KEY_USES_PER_S, JOIN_KEY_BURST)

    def handlers(self) -> dict[str, Handler]:
        """The ops this class answers besides `register` (which comes before a record)."""
        return {"family_endpoint": self.family_endpoint}

    def family_endpoint(self, request: Request, node: NodeRecord) -> dict[str, Any]:
        """Keep where this came from as the node's public endpoint of its family, if the
        node registers over the other one; the reply says what we saw, and whether we
        keep it (a node that registers over this family already has its endpoint)."""
        kept = self._directory.presence.note_other_family(node.public_key, request.source)
        return {"public_endpoint": format_endpoint(request.source), "kept": kept}

    def register(self, request: Request, counter: int) -> dict[str, Any]:
        """Register the sender (or take its heartbeat); the reply. `counter` is the
        message's, kept as the node's floor."""
        message, key, now = request.message, request.sender, request.now
        replicas = self._directory.replicas
        replicas.arrived(key)
        previous = request.record
        hostname, tags, lan = _identity_fields(message, previous)
        join_key = join_key_field(message.get("join_key"))
        if previous is None:
            self._limit_new_node(request.source, join_key, now)
        record, new = self._stored(request, hostname, tags, join_key, counter)
        keep_counter_floor(self._store, record, counter)
        endpoint = format_endpoint(request.source)
        self._mark_seen(request, previous, endpoint, lan)
        replicas.registered(key)
        presence = self._directory.presence
        was_online = presence.online(key, now) and presence.endpoint(key) == request.source
        presence.note_seen(key, request.source, now)
        self._tell_changes(request, previous, record, new, endpoint)
        if not was_online and previous is not None:
            log_event("node_online", hostname=hostname, endpoint=endpoint)
        waiting = self._store.incoming(key, PENDING_PUSH_LIMIT) if request.asked else []
        for requester, text in waiting:
            node = self._directory.describe(requester, now)
            push = {"op": "trust_requested", "node": node, "message": text}
            self._directory.push(key, push, now, request.pushes)
        return self._reply(request, record, endpoint)

    def _stored(
        self,
        request: Request,
        hostname: str,
        tags: tuple[str, ...],
        join_key: tuple[str, str] | None,
        counter: int,
    ) -> tuple[NodeRecord, bool]:
        """The node's record once its name, tags and join key are stored, and whether it
        is new; a heartbeat (nothing changed) writes nothing."""
        previous, now = request.record, request.now
        if (
            previous is not None
            and join_key is None
            and (hostname, tags) == (previous.hostname, previous.tags)
        ):
            return previous, False
        try:
            return self._store.register(
                request.sender,
                hostname,
                tags,
                now,
                join_key=join_key,
                require_join_key=self._require_join_key,
                expired_before=now - self._expire_after_s,
            )
        except StoreError:
            if previous is not None:
                keep_counter_floor(self._store, previous, counter)
            raise

    def _mark_seen(
        self, request: Request, previous: NodeRecord | None, endpoint: str, lan: tuple[str, ...]
    ) -> None:
        """Write where the node is when that changed, or every SEEN_WRITE_S."""
        key, now = request.sender, request.now
        replica = self._directory.replicas.name
        if (
            previous is None
            or request.new_session
            or (previous.endpoint, previous.lan_endpoints) != (endpoint, lan)
            or previous.replica != replica
            or now - (previous.last_seen or 0.0) >= SEEN_WRITE_S
        ):
            self._store.mark_seen(
                key,
                endpoint=endpoint,
                lan_endpoints=lan,
                session=self._sessions.get(key),
                now=now,
                replica=replica,
            )

    def _tell_changes(
        self,
        request: Request,
        previous: NodeRecord | None,
        record: NodeRecord,
        new: bool,
        endpoint: str,
    ) -> None:
        """Log a new node (one line: it is online too); log a renamed (or retagged) one
        and tell its peers."""
        key, now = request.sender, request.now
        if new or previous is None:
            log_event(
                "node_registered",
                hostname=record.hostname,
                ipv4=record.address_texts[0],
                key=encode_key(key),
                network=record.network or "",
                endpoint=endpoint,
            )
        elif (previous.hostname, previous.tags, previous.granted_tags) != (
            record.hostname,
            record.tags,
            record.granted_tags,
        ):
            log_event(
                "node_updated",
                hostname=record.hostname,
                was=previous.hostname,
                tags=",".join(record.tags),
            )
            # Its peers learn the new name (their DNS follows) and tags.
            for peer in self._store.trusted(key, PENDING_PUSH_LIMIT):
                node = self._directory.describe(record, now)
                push = {"op": "trust_changed", "node": node, "trusted": True}
                self._directory.push(peer.public_key, push, now, request.pushes)

    def _reply(self, request: Request, record: NodeRecord, endpoint: str) -> dict[str, Any]:
        replica = self._directory.replicas.name
        ipv4, ipv6 = record.address_texts
        return {
            "op": "reply",
            "ok": True,
            "ipv4": ipv4,
            "ipv6": ipv6,
            "hostname": record.hostname,
            "public_endpoint": endpoint,
            "network": self._network_text,
            "network_name": record.network,
            "granted_tags": list(record.granted_tags),
            "resync": request.new_session,
            **({"replica": replica} if replica is not None else {}),
            **({"relays": [r.to_json() for r in self._relays]} if self._relays else {}),
        }

    def _limit_new_node(
        self, source: Endpoint, join_key: tuple[str, str] | None, now: float
    ) -> None:
        if not self._new_node_limit.allow(source, now):
            raise Refused(
                "rate_limited",
                "too many new nodes from this address or its network",
                "try again in a minute",
            )
        if join_key is not None and not self._join_key_limit.allow(join_key[0], now):
            raise Refused(
                "rate_limited", "too many new nodes with this join key", "try again in a minute"
            )
