"""The registry's and each relay's answer to a netcheck probe: the sender's public
endpoint and the size that arrived, never more bytes than the probe, garbage dropped
and counted, answers to one address limited as every unproven answer is."""

import os
from collections.abc import Callable, Iterator
from ipaddress import IPv4Network
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pilotif.control.gate import UNPROVEN_BURST
from pilotif.control.probe_answer import (
    ANSWER_SIZE,
    MIN_PROBE_SIZE,
    PROBE_ID_BYTES,
    PROBE_TYPE,
    ProbeAnswer,
    pack_probe,
    parse_answer,
)
from pilotif.control.wire import WireError
from pilotif.registry.core import RegistryCore
from pilotif.registry.store import Store
from pilotif.relay.core import RelayCore
from pilotif.wg.crypto import generate_private_key
from pilotif.wg.events import Endpoint

NOW = 1_700_000_000.0
SOURCE: Endpoint = ("198.18.5.7", 40_123)
PROBE_ID = bytes(range(PROBE_ID_BYTES))

Answerer = Callable[[bytes, Endpoint, float], list[tuple[bytes, Endpoint]]]


@pytest.fixture(params=["registry", "relay"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RegistryCore | RelayCore]:
    """The registry's core, and a standalone relay's."""
    if request.param == "relay":
        yield RelayCore(generate_private_key(), generate_private_key(), first_counter=1)
        return
    store = Store(tmp_path / "registry.db", IPv4Network("100.64.0.0/10"))
    yield RegistryCore(generate_private_key(), store, first_counter=1)
    store.close()


@pytest.mark.parametrize("size", [MIN_PROBE_SIZE, 200, 1472, 9000])
def test_a_probe_is_answered_with_the_public_endpoint_and_the_size_that_arrived(
    server: RegistryCore | RelayCore, size: int
) -> None:
    [(answer, to)] = server.handle_datagram(pack_probe(PROBE_ID, size), SOURCE, NOW)
    assert to == SOURCE
    assert len(answer) == ANSWER_SIZE <= size
    assert parse_answer(answer) == ProbeAnswer(PROBE_ID, size, SOURCE)


def test_an_ipv6_source_reads_back(server: RegistryCore | RelayCore) -> None:
    source = ("2001:db8::7", 5)
    [(answer, _)] = server.handle_datagram(pack_probe(PROBE_ID), source, NOW)
    assert parse_answer(answer).seen_from == source


_PROBE_LIKE = st.one_of(
    st.binary(max_size=2000).map(lambda tail: bytes((PROBE_TYPE,)) + tail),
    st.integers(0, 2000).map(lambda padding: pack_probe(PROBE_ID)[:16] + bytes(padding)),
)
"""Anything of the probe type, and well-formed probes of every size (a short one too)."""


@given(_PROBE_LIKE)
def test_no_answer_is_ever_larger_than_what_asked_for_it(data: bytes) -> None:
    relay = RelayCore(generate_private_key(), generate_private_key(), first_counter=1)
    for answer, _ in relay.handle_datagram(data, SOURCE, NOW):
        assert len(answer) <= len(data)


@pytest.mark.parametrize(
    "garbage",
    [
        bytes((PROBE_TYPE,)),
        pack_probe(PROBE_ID)[:-1],
        pack_probe(PROBE_ID)[:-1] + b"\x01",
        bytes((PROBE_TYPE, 1, 0, 0)) + pack_probe(PROBE_ID)[4:],
        bytes((PROBE_TYPE,)) + os.urandom(100),
    ],
    ids=["type only", "truncated", "padding not zero", "reserved not zero", "random"],
)
def test_garbage_of_the_probe_type_is_dropped_and_counted(
    server: RegistryCore | RelayCore, garbage: bytes
) -> None:
    assert server.handle_datagram(garbage, SOURCE, NOW) == []
    assert server.counters["malformed"] == 1


def test_answers_to_one_address_stop_at_the_unproven_budget(
    server: RegistryCore | RelayCore,
) -> None:
    answered = [
        server.handle_datagram(pack_probe(PROBE_ID), (SOURCE[0], port), NOW)
        for port in range(1, 3 * UNPROVEN_BURST)
    ]
    assert sum(1 for answer in answered if answer) == UNPROVEN_BURST
    assert server.counters["rate_limited"] == 2 * UNPROVEN_BURST - 1
    assert server.handle_datagram(pack_probe(PROBE_ID), ("198.18.9.9", 1), NOW) != []


def test_other_datagrams_still_reach_the_core(server: RegistryCore | RelayCore) -> None:
    assert server.handle_datagram(b"\x99junk", SOURCE, NOW) == []
    assert server.counters["unknown_type"] == 1


@pytest.mark.parametrize(
    "data",
    [
        b"",
        pack_probe(PROBE_ID),
        bytes((PROBE_TYPE + 1, 0, 0, 0)) + bytes(ANSWER_SIZE - 4 + 1),
        bytes((PROBE_TYPE + 1, 0, 0, 0)) + bytes(ANSWER_SIZE - 4 - 1),
        bytes((PROBE_TYPE + 1, 1, 0, 0)) + bytes(ANSWER_SIZE - 4),
    ],
    ids=["empty", "a probe", "long", "short", "reserved not zero"],
)
def test_what_is_not_an_answer_is_refused(data: bytes) -> None:
    with pytest.raises(WireError):
        parse_answer(data)


@pytest.mark.parametrize("size", [MIN_PROBE_SIZE - 1, 70_000])
def test_a_probe_of_a_size_out_of_range_is_our_own_mistake(size: int) -> None:
    with pytest.raises(ValueError, match="probe"):
        pack_probe(PROBE_ID, size)
