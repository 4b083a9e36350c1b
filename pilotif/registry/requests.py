"""One authenticated control request at the registry, as its handlers see it: the
`Request`, the `Refused` error that answers ok=false, the checks of the fields nodes
send (hostname, tags, LAN endpoints, join key, offset) and `fit`, which pages a list
into one reply. docs/CONTROL_PROTOCOL.md is the contract with the node."""

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from pilotif.control.identity import HostnameError, normalize_hostname
from pilotif.control.wire import MAX_PAYLOAD_BYTES, MAX_REQUEST_ID, format_endpoint, parse_endpoint
from pilotif.registry.joinkey import parse_join_key
from pilotif.registry.store import NameTaken, NetworkFull, NodeRecord, NoRequest, UnknownNode
from pilotif.util.errors import CodedError
from pilotif.wg.events import Endpoint

MAX_TAGS: Final = 8
MAX_TAG_CHARS: Final = 32
MAX_LAN_ENDPOINTS: Final = 6
"""A node's own addresses the registry keeps and hands on: both families (the node reports
the first of each first), with room beside the public endpoints in MAX_PEER_CANDIDATES."""
STORE_ERROR_HINTS: Final = {
    NameTaken.code: "choose another --hostname; a name belongs to the first key that takes it",
    NetworkFull.code: "the registry's network has no free address; ask its operator",
    UnknownNode.code: "pilotif find NAME shows the nodes the registry knows",
    NoRequest.code: "pilotif pending lists the requests you can answer",
    "join_key_required": "ask the registry's operator for a join key and pass --join-key",
    "join_key_unknown": "check the key, or ask the registry's operator for a new one",
    "join_key_expired": "ask the registry's operator for a new join key",
    "join_key_revoked": "ask the registry's operator for a new join key",
    "join_key_used": "a one-off key admits one node: ask for another, or a --reusable one",
}
"""What to do about each refusal the store (or a join key) gives."""

Push = tuple[bytes, dict[str, Any], Endpoint]
"""A message to seal for a node's key and send to its endpoint."""


class Refused(CodedError):
    """A request we answer with ok=false."""


@dataclass
class Request:
    """One authenticated control message being handled."""

    sender: bytes
    record: NodeRecord | None
    message: dict[str, Any]
    source: Endpoint
    now: float
    pushes: list[Push]
    """Messages to send after the reply, sealed in order so that counters rise."""
    new_session: bool
    """The first message of this node's session that we see (a new `up`, or our restart:
    pushes meant for it meanwhile were not sent)."""
    asked: bool = False
    """Whether trust requests to it wait (read with its record, in one query)."""


Handler = Callable[[Request, NodeRecord], dict[str, Any]]
"""An op of a registered node: the fields its ok=true reply adds (Refused: ok=false)."""


def hostname_field(value: object) -> str:
    """A hostname as nodes send it, normalized."""
    if not isinstance(value, str):
        raise Refused("bad_request", "hostname must be a string")
    try:
        return normalize_hostname(value)
    except HostnameError as error:
        raise Refused("invalid_hostname", str(error), "pick a DNS label, e.g. my-agent") from None


def tags_field(value: object) -> tuple[str, ...]:
    """A node's own tags: at most MAX_TAGS DNS labels of MAX_TAG_CHARS, each once."""
    if not isinstance(value, list) or not all(isinstance(tag, str) for tag in value):
        raise Refused("bad_request", "tags must be a list of strings")
    tags: list[str] = []
    for tag in value:
        try:
            name = normalize_hostname(tag)
        except HostnameError:
            name = ""
        if not name or len(name) > MAX_TAG_CHARS:
            raise Refused(
                "invalid_tag",
                f"invalid tag {tag!r}",
                f"tags are 1-{MAX_TAG_CHARS} letters, digits and '-'",
            )
        if name not in tags:
            tags.append(name)
    if len(tags) > MAX_TAGS:
        raise Refused("invalid_tag", f"too many tags ({len(tags)})", f"use at most {MAX_TAGS}")
    return tuple(tags)


def join_key_field(value: object) -> tuple[str, str] | None:
    """A join key's id and secret (None: none given)."""
    if value is None:
        return None
    parsed = parse_join_key(value) if isinstance(value, str) else None
    if parsed is None:
        raise Refused(
            "join_key_unknown",
            "that is not a join key (they read pjk_...)",
            STORE_ERROR_HINTS["join_key_unknown"],
        )
    return parsed


def lan_field(value: object) -> tuple[str, ...]:
    """A node's LAN endpoints: the first MAX_LAN_ENDPOINTS valid ones, each once."""
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise Refused("bad_request", "lan must be a list of 'ip:port' strings")
    endpoints: list[str] = []
    for text in value:
        with contextlib.suppress(ValueError):
            endpoint = format_endpoint(parse_endpoint(text))
            if endpoint not in endpoints:
                endpoints.append(endpoint)
    return tuple(endpoints[:MAX_LAN_ENDPOINTS])


def offset_field(message: dict[str, Any]) -> int:
    """Where a page starts."""
    offset = message.get("offset", 0)
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise Refused("bad_request", "offset must be a non-negative integer")
    return offset


def fit(
    lists: dict[str, list[Any]],
    entries: list[tuple[str, Any]],
    offset: int,
    limit: int | None = None,
) -> dict[str, Any]:
    """`lists` with as many (list name, entry) appended as fit one reply (and `limit`);
    `next_offset` says where the next page starts when some are left."""
    envelope = {
        "op": "reply",
        "ok": True,
        "id": MAX_REQUEST_ID,
        "session": MAX_REQUEST_ID,
        "next_offset": MAX_REQUEST_ID,
    }
    budget = MAX_PAYLOAD_BYTES - json_size({**envelope, **lists})
    page = {name: list(items) for name, items in lists.items()}
    for index, (name, entry) in enumerate(entries):
        # An entry costs its JSON and at most one separating comma.
        budget -= json_size(entry) + 1
        if budget < 0 or index == limit:
            return {**page, "next_offset": offset + index}
        page[name].append(entry)
    return page


def json_size(value: object) -> int:
    """The bytes of `value` as JSON in a sealed message."""
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())
