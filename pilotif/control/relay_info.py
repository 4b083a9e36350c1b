"""Which standalone relays exist: `KEY@IP:PORT` as the registry's operator gives them,
and the JSON the registry hands nodes in its registration reply."""

from dataclasses import dataclass
from typing import Any, Final

from pilotif.control.wire import format_endpoint
from pilotif.net.hostport import parse_address_port
from pilotif.wg.events import Endpoint
from pilotif.wg.keys import decode_key, encode_key

MAX_RELAYS: Final = 8
"""Relays one registry lists (each node attaches to all of them)."""


class RelaySpecError(ValueError):
    """A relay given as something else than KEY@IP:PORT."""


@dataclass(frozen=True)
class RelayInfo:
    """A relay: its public key and the UDP address nodes reach it at."""

    key: bytes
    endpoint: Endpoint

    def to_json(self) -> dict[str, str]:
        """How the registry names it to nodes."""
        return {"key": encode_key(self.key), "endpoint": format_endpoint(self.endpoint)}


def parse_relay(text: str) -> RelayInfo:
    """`KEY@IP:PORT` (the relay's public key, base64; an IPv6 address in brackets)."""
    key_text, at, where = text.strip().partition("@")
    if not at:
        raise RelaySpecError(f"{text!r} is not KEY@IP:PORT")
    try:
        return RelayInfo(decode_key(key_text), parse_address_port(where))
    except ValueError as error:
        raise RelaySpecError(f"{text!r}: {error}") from None


def relays_from_json(value: object) -> list[RelayInfo]:
    """The relays a registration reply names (what is not a relay is skipped)."""
    if not isinstance(value, list):
        return []
    relays = []
    for item in value[:MAX_RELAYS]:
        if isinstance(item, dict):
            relay = relay_from_json(item)
            if relay is not None:
                relays.append(relay)
    return relays


def relay_from_json(item: dict[str, Any]) -> RelayInfo | None:
    """One relay as `to_json` gives it (None: it is not one)."""
    key, endpoint = item.get("key"), item.get("endpoint")
    if not isinstance(key, str) or not isinstance(endpoint, str):
        return None
    try:
        return RelayInfo(decode_key(key), parse_address_port(endpoint))
    except ValueError:
        return None
