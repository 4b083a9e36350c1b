"""The event bus: order, the bound on a slow subscriber and the notice of what it lost;
the publisher that turns the cores' events into it."""

import asyncio
from typing import get_args

from pilotif.daemon.event_catalogue import ROUTES
from pilotif.daemon.event_publisher import EventPublisher
from pilotif.node.events import NodeEvent
from pilotif.observe import Event, EventBus, Subscription
from pilotif.wg import events as wg_events
from pilotif.wg.events import EndpointChanged, HandshakeCompleted, KeysZeroed, RelayEndpoint


async def _take(subscription: Subscription, count: int) -> list[Event]:
    return [await subscription.get() for _ in range(count)]


def test_subscribers_see_events_in_order_with_time_and_fields() -> None:
    async def scenario() -> list[Event]:
        bus = EventBus()
        subscription = bus.subscribe()
        bus.publish("peer_up", peer="beta")
        bus.publish("path_changed", peer="beta", path="direct", endpoint="198.18.0.2:51820")
        bus.publish("peer_down", peer="beta")
        return await _take(subscription, 3)

    events = asyncio.run(scenario())
    assert [e["event"] for e in events] == ["peer_up", "path_changed", "peer_down"]
    assert events[1]["path"] == "direct"
    assert events[1]["endpoint"] == "198.18.0.2:51820"
    assert all(isinstance(e["time"], float) for e in events)


def test_every_subscriber_gets_every_event_and_a_closed_one_none() -> None:
    async def scenario() -> tuple[list[Event], list[Event], int]:
        bus = EventBus()
        first, second, closed = bus.subscribe(), bus.subscribe(), bus.subscribe()
        closed.close()
        bus.publish("trust_requested", peer="alpha", message="hi")
        return await _take(first, 1), await _take(second, 1), bus.subscribers

    first, second, subscribers = asyncio.run(scenario())
    assert first == second
    assert first[0]["message"] == "hi"
    assert subscribers == 2


def test_slow_subscriber_loses_oldest_and_is_told_how_many() -> None:
    async def scenario() -> list[Event]:
        bus = EventBus()
        subscription = bus.subscribe(limit=3)
        for number in range(10):
            bus.publish("peer_up", number=number)
        return await _take(subscription, 4)

    events = asyncio.run(scenario())
    assert events[0]["event"] == "events_dropped"
    assert events[0]["count"] == 7
    assert [e["number"] for e in events[1:]] == [7, 8, 9]


def test_publishing_without_subscribers_or_a_loop_is_harmless() -> None:
    bus = EventBus()
    bus.publish("registry_lost", error="timeout")
    subscription = bus.subscribe(limit=1)
    bus.publish("registry_lost", error="timeout")
    bus.publish("registry_regained")
    assert bus.subscribers == 1
    subscription.close()
    subscription.close()
    assert bus.subscribers == 0


def test_the_publisher_says_peer_up_and_down_once_each_and_where_static_peers_roam() -> None:
    key = bytes(range(32))

    async def scenario() -> tuple[list[Event], int]:
        bus = EventBus()
        subscription = bus.subscribe()
        publisher = EventPublisher(bus)
        publisher.publish(HandshakeCompleted(key, initiator=True))
        publisher.publish(HandshakeCompleted(key, initiator=False))
        publisher.publish(EndpointChanged(key, ("198.18.0.2", 51820)))
        publisher.publish(EndpointChanged(key, RelayEndpoint(key)))
        publisher.publish(KeysZeroed(key))
        publisher.publish(KeysZeroed(key))
        return await _take(subscription, 4), publisher.handshakes

    events, handshakes = asyncio.run(scenario())
    assert [e["event"] for e in events] == ["peer_up", "path_changed", "path_changed", "peer_down"]
    assert (events[1]["path"], events[1]["endpoint"]) == ("direct", "198.18.0.2:51820")
    assert (events[2]["path"], events[2]["endpoint"]) == ("relay", None)
    assert events[3]["reason"] == "silent"
    assert handshakes == 2


def test_every_event_of_either_core_has_one_route() -> None:
    cores = set(get_args(wg_events.Event)) | set(get_args(NodeEvent))
    assert set(ROUTES) == cores
