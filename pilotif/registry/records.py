"""The registry's records and refusals as its store hands them out: nodes, networks,
join keys and trust outcomes; the `nodes` table's columns and how a row becomes a
`NodeRecord`."""

import json
from dataclasses import dataclass
from functools import cached_property
from ipaddress import IPv4Address, IPv6Address
from typing import Any, Final, Literal

from pilotif.util.errors import CodedError

TrustState = Literal["none", "pending", "trusted"]

_NO_LIMIT: Final = 2**62
"""LIMIT for "every row" (SQLite's -1 is not SQL that PostgreSQL takes)."""
_NODE_FIELDS: Final = (
    "public_key",
    "hostname",
    "ipv4",
    "ipv6",
    "tags",
    "highest_counter",
    "endpoint",
    "lan_endpoints",
    "last_seen",
    "created",
    "network",
    "granted_tags",
    "join_key",
    "replica",
)
NODE_COLUMNS: Final = ", ".join(_NODE_FIELDS)
"""The columns of `nodes`, in the order `node_from_row` reads them."""
N_NODE_COLUMNS: Final = ", ".join(f"n.{field}" for field in _NODE_FIELDS)
"""The node columns of `nodes n` in a join."""


class StoreError(Exception):
    """A request the registry refuses; `code` is what the reply carries."""

    code = "error"


class NameTaken(StoreError):
    """The hostname belongs to another key."""

    code = "name_taken"


class NetworkFull(StoreError):
    """No address of the network is free."""

    code = "network_full"


class UnknownNode(StoreError):
    """No node has this key."""

    code = "unknown_peer"


class NoRequest(StoreError):
    """There is no trust request to answer."""

    code = "no_request"


class NetworkExists(StoreError):
    """A network of that name exists."""

    code = "network_exists"


class UnknownNetwork(StoreError):
    """No network has that name."""

    code = "unknown_network"


class JoinRefused(StoreError, CodedError):
    """A node that may not join: no key where one is required, or a key that is not
    (or no longer) good; `code` says which."""


@dataclass(frozen=True)
class NodeRecord:
    """One registered node as stored."""

    public_key: bytes
    hostname: str
    ipv4: IPv4Address
    ipv6: IPv6Address
    """Derived from the key (`ipv6_for_key`), stored to look nodes up by it."""
    tags: tuple[str, ...]
    highest_counter: int
    """A floor at or above every control counter accepted from it: after a restart,
    counters up to it (replays) are refused."""
    endpoint: str | None
    """Its public endpoint, `ip:port` as the registry saw it, once it registered."""
    lan_endpoints: tuple[str, ...]
    last_seen: float | None
    """Wall-clock seconds of its last registration (heartbeat) as written: the registry
    writes it when the node's endpoints change, else every few minutes."""
    created: float
    network: str | None
    """The network it joined with a join key (None: none)."""
    granted_tags: tuple[str, ...]
    """Tags a join key or the operator granted (`tags` are its own labels)."""
    join_key: str | None
    """The id of the join key that admitted it last."""
    replica: str | None = None
    """The registry replica it talks to while it is online (None: offline, or a
    registry without replicas)."""

    @cached_property
    def address_texts(self) -> tuple[str, str]:
        """Its IPv4 and IPv6 addresses as text (in the answer to every heartbeat)."""
        return str(self.ipv4), str(self.ipv6)


@dataclass(frozen=True)
class NetworkRecord:
    """A network: a group of nodes that join it with its keys."""

    name: str
    closed: bool
    """A closed network's members are found only by other members."""
    created: float
    members: int


@dataclass(frozen=True)
class JoinKeyRecord:
    """A join key as stored (its secret only as a digest)."""

    id: str
    network: str | None
    tags: tuple[str, ...]
    reusable: bool
    expires: float | None
    uses: int
    revoked: bool
    created: float


@dataclass(frozen=True)
class TrustOutcome:
    """The trust between two nodes after a request, an answer or an untrust."""

    state: TrustState
    changed: bool
    """Whether the trust itself was just established or revoked."""


def row_limit(limit: int) -> int:
    """A LIMIT value: `limit`, or every row for a negative one."""
    return limit if limit >= 0 else _NO_LIMIT


def node_from_row(row: tuple[Any, ...]) -> NodeRecord:
    """The node a row of NODE_COLUMNS holds."""
    key, hostname, ipv4, ipv6, tags, counter, endpoint, lan, last_seen, created = row[:10]
    network, granted, join_key, replica = row[10:]
    return NodeRecord(
        public_key=bytes(key),
        hostname=hostname,
        ipv4=IPv4Address(ipv4),
        ipv6=IPv6Address(ipv6),
        tags=tuple(json.loads(tags)),
        highest_counter=counter,
        endpoint=endpoint,
        lan_endpoints=tuple(json.loads(lan)),
        last_seen=last_seen,
        created=created,
        network=network,
        granted_tags=tuple(json.loads(granted)),
        join_key=join_key,
        replica=replica,
    )
