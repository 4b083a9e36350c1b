"""A node whose control datagrams move between UDP and a stream (net/fallback.py) registers
at once from there, and its peers' direct paths stay: its UDP towards them did not move
(a registry restart made nodes fall back and, counted as a move, drop their direct
paths for a relay that was down)."""

import pytest

from pilotif.control.wire import format_endpoint, parse_endpoint
from pilotif.node.events import PathChanged, PublicEndpointChanged
from pilotif.node.registration import REREGISTER_MIN_S
from pilotif.node.registry_link import REGISTER_INTERVAL_S
from pilotif.wg.events import Endpoint
from tests.unit.netsim import Network
from tests.unit.test_node_core import _both_direct, _trusting, net  # noqa: F401


def test_a_change_of_carrier_registers_at_once_and_keeps_direct_paths(net: Network) -> None:  # noqa: F811
    alpha, beta = net.node("alpha"), net.node("beta")
    _trusting(net, alpha, beta)
    net.run_until(lambda: _both_direct(alpha, beta), 10.0)
    net.run(3.0)
    registered = net.registry.requests["register"]
    changes = len([e for e in alpha.events if isinstance(e, PathChanged)])
    alpha.core.carrier_changed(net.now, over_stream=True)
    alpha.flush()
    net.run(0.5)
    assert net.registry.requests["register"] == registered + 1
    assert _both_direct(alpha, beta)
    assert len([e for e in alpha.events if isinstance(e, PathChanged)]) == changes


STREAM_PORT = 443
"""The port the registry sees a node's stream come from (not its UDP mapping's)."""


def test_the_endpoint_a_stream_shows_the_registry_is_no_move_of_the_udp_mapping(
    net: Network,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A registry restart: the node registers over its stream first (the registry sees the
    TCP source), heartbeats there, then registers over UDP again. None of it is a move of
    its NAT mapping: the peers' direct paths stay (they went to the relay twice, and a
    ping in between was lost)."""
    alpha, beta = net.node("alpha"), net.node("beta")
    _trusting(net, alpha, beta)
    net.run_until(lambda: _both_direct(alpha, beta), 10.0)
    net.run(3.0)
    udp_endpoint = alpha.core.registration.public_endpoint
    assert udp_endpoint is not None
    udp_source = parse_endpoint(udp_endpoint)
    stream_source = (udp_source[0], STREAM_PORT)
    over_udp = net.registry.handle_datagram

    def over_the_stream(data: bytes, source: Endpoint, now: float) -> list[tuple[bytes, Endpoint]]:
        if source != udp_source:
            return over_udp(data, source, now)
        answers = over_udp(data, stream_source, now)
        return [(answer, source if to == stream_source else to) for answer, to in answers]

    changes = len([e for e in alpha.events if isinstance(e, PathChanged)])
    monkeypatch.setattr(net.registry, "handle_datagram", over_the_stream)
    alpha.core.carrier_changed(net.now, over_stream=True)
    alpha.flush()
    net.run(0.5)
    assert alpha.core.registration.public_endpoint == format_endpoint(stream_source)
    net.run(REGISTER_INTERVAL_S)  # a heartbeat over the stream, long after the change
    assert alpha.core.registration.public_endpoint == format_endpoint(stream_source)

    monkeypatch.setattr(net.registry, "handle_datagram", over_udp)
    net.run(REREGISTER_MIN_S)
    alpha.core.carrier_changed(net.now, over_stream=False)
    alpha.flush()
    net.run(0.5)
    assert alpha.core.registration.public_endpoint == udp_endpoint
    assert _both_direct(alpha, beta)
    assert len([e for e in alpha.events if isinstance(e, PathChanged)]) == changes
    assert not [e for e in alpha.events if isinstance(e, PublicEndpointChanged)]
