"""How a standalone relay learns whose tickets it accepts: the registry's key, asked for
on first start and pinned in its state dir. A second key answered from the registry's
address (an off-path spoofer racing it) and a key other than the pinned one are refused
with one line that says what to do. A fake registry on loopback answers."""

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pilotif.control.wire import KEY_REQUEST, pack_key_reply
from pilotif.relay.server import (
    REGISTRY_KEY_PIN_FILE,
    RelayOptions,
    RelayStartError,
    registry_key_for,
)
from pilotif.wg.crypto import generate_private_key, public_key
from pilotif.wg.events import Endpoint
from pilotif.wg.keys import decode_key, encode_key
from tests.unit.udp_responder import udp_responder


@contextmanager
def fake_registry(*keys: bytes) -> Iterator[Endpoint]:
    """A UDP socket on loopback that answers every key request with each of `keys`
    (more than one: what a spoofer racing the registry looks like from the relay)."""

    def answer(data: bytes, source: Endpoint) -> list[bytes]:
        return [pack_key_reply(key) for key in keys] if data == KEY_REQUEST else []

    with udp_responder(answer) as endpoint:
        yield endpoint


def _key() -> bytes:
    return public_key(generate_private_key())


def test_the_first_start_pins_the_registry_key_and_the_next_starts_keep_it(
    tmp_path: Path,
) -> None:
    key = _key()
    with fake_registry(key) as registry:
        assert registry_key_for(tmp_path, RelayOptions(registry=registry)) == key
        assert decode_key((tmp_path / REGISTRY_KEY_PIN_FILE).read_text()) == key
        assert registry_key_for(tmp_path, RelayOptions(registry=registry)) == key


def test_a_second_key_from_the_registry_address_is_refused_and_nothing_is_pinned(
    tmp_path: Path,
) -> None:
    """An off-path attacker who answers first from the registry's address would have
    made the relay accept its tickets for good."""
    with (
        fake_registry(_key(), _key()) as registry,
        pytest.raises(RelayStartError, match=r"2 different keys.*--registry-key"),
    ):
        registry_key_for(tmp_path, RelayOptions(registry=registry))
    assert not (tmp_path / REGISTRY_KEY_PIN_FILE).exists()


def test_a_registry_with_another_key_than_the_pinned_one_is_refused(tmp_path: Path) -> None:
    pinned = _key()
    with fake_registry(pinned) as registry:
        registry_key_for(tmp_path, RelayOptions(registry=registry))
    other = _key()
    refusal = rf"{re.escape(encode_key(other))}.*not the pinned.*delete"
    with fake_registry(other) as registry, pytest.raises(RelayStartError, match=refusal):
        registry_key_for(tmp_path, RelayOptions(registry=registry))
    assert decode_key((tmp_path / REGISTRY_KEY_PIN_FILE).read_text()) == pinned
