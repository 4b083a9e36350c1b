"""The Prometheus collectors: what a scrape of a node and of the registry shows."""

import time
from ipaddress import IPv4Network
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from pilotif.node.registry_link import RegistryLink
from pilotif.observe import (
    NodeCollector,
    NodeSample,
    PeerSample,
    RegistryCollector,
    RegistrySample,
    render,
)
from pilotif.registry.core import RegistryCore
from pilotif.registry.server import metrics_sample
from pilotif.registry.store import Store
from pilotif.wg.crypto import generate_private_key
from pilotif.wg.drops import new_drop_counters


def _samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value, from the text exposition."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text.decode())
        for sample in family.samples
    }


def _node_sample(rx_bytes: int) -> NodeSample:
    drops = {str(reason): 0 for reason in new_drop_counters()}
    drops["replay"] = 4
    return NodeSample(
        peers=[
            PeerSample("beta", "direct", rx_bytes, 2000),
            PeerSample("gamma", "relay", 30, 40),
            PeerSample("DMhP1VzU1L0i7x+4MZ8yAB7VXPXbqk0pMuUa6uckxk4=", "none", 0, 148),
        ],
        handshakes=3,
        drops=drops,
        relay_rx_bytes=30,
        relay_tx_bytes=40,
        registry_online=True,
    )


def test_node_metrics_show_peers_by_path_traffic_handshakes_drops_and_relay() -> None:
    samples = _samples(render(NodeCollector(lambda: _node_sample(1000))))
    assert samples[("pilotif_peers", (("path", "direct"),))] == 1
    assert samples[("pilotif_peers", (("path", "relay"),))] == 1
    assert samples[("pilotif_peers", (("path", "none"),))] == 1
    assert samples[("pilotif_rx_bytes_total", (("peer", "beta"),))] == 1000
    assert samples[("pilotif_tx_bytes_total", (("peer", "beta"),))] == 2000
    key = "DMhP1VzU1L0i7x+4MZ8yAB7VXPXbqk0pMuUa6uckxk4="
    assert samples[("pilotif_tx_bytes_total", (("peer", key),))] == 148
    assert samples[("pilotif_handshakes_total", ())] == 3
    assert samples[("pilotif_drops_total", (("reason", "replay"),))] == 4
    assert samples[("pilotif_drops_total", (("reason", "decrypt_failed"),))] == 0
    assert samples[("pilotif_relay_rx_bytes_total", ())] == 30
    assert samples[("pilotif_relay_tx_bytes_total", ())] == 40
    assert samples[("pilotif_registry_online", ())] == 1


def test_node_metrics_are_read_at_scrape_time() -> None:
    received = [1000]
    collector = NodeCollector(lambda: _node_sample(received[0]))
    first = _samples(render(collector))
    received[0] = 5000
    second = _samples(render(collector))
    name = ("pilotif_rx_bytes_total", (("peer", "beta"),))
    assert (first[name], second[name]) == (1000, 5000)


def test_static_node_has_no_registry_gauge_and_counts_every_path() -> None:
    sample = NodeSample(peers=[], handshakes=0, drops={})
    samples = _samples(render(NodeCollector(lambda: sample)))
    assert not any(name == "pilotif_registry_online" for name, _ in samples)
    assert {labels for name, labels in samples if name == "pilotif_peers"} == {
        (("path", "direct"),),
        (("path", "relay"),),
        (("path", "none"),),
    }


def test_registry_metrics_show_nodes_requests_rejects_drops_and_relay() -> None:
    sample = RegistrySample(
        nodes_online=2,
        requests={"register": 7, "connect": 2},
        rejects={"not_registered": 1},
        relayed_packets=11,
        relayed_bytes=4400,
        dropped={"rate_limited": 5},
    )
    samples = _samples(render(RegistryCollector(lambda: sample)))
    assert samples[("pilotif_registry_nodes_online", ())] == 2
    assert samples[("pilotif_registry_requests_total", (("op", "register"),))] == 7
    assert samples[("pilotif_registry_requests_total", (("op", "connect"),))] == 2
    assert samples[("pilotif_registry_rejects_total", (("code", "not_registered"),))] == 1
    assert samples[("pilotif_registry_dropped_total", (("reason", "rate_limited"),))] == 5
    assert samples[("pilotif_registry_relayed_packets_total", ())] == 11
    assert samples[("pilotif_registry_relayed_bytes_total", ())] == 4400


def test_registry_sample_counts_requests_by_op_and_rejects_by_code(tmp_path: Path) -> None:
    store = Store(tmp_path / "registry.db", IPv4Network("100.64.0.0/10"))
    core = RegistryCore(generate_private_key(), store, first_counter=1)
    now = time.time()

    def node(number: int, *messages: dict[str, object]) -> None:
        link = RegistryLink(
            generate_private_key(), ("198.18.0.254", 9000), core.public_key, first_counter=1
        )
        for message in messages:
            link.request(str(message["op"]), {k: v for k, v in message.items() if k != "op"}, now)
            while link.outgoing:
                sent, link.outgoing = link.outgoing, []
                for datagram, _ in sent:
                    for answer, _ in core.handle_datagram(datagram, ("198.18.0.1", number), now):
                        link.receive(answer, now)

    node(1, {"op": "lookup", "hostname": "agent2"})
    node(2, {"op": "register", "hostname": "agent2"})
    node(3, {"op": "register", "hostname": "agent3"}, {"op": "frobnicate"})
    sample = metrics_sample(core)
    store.close()
    assert sample.requests == {"lookup": 1, "register": 2, "other": 1}
    assert sample.rejects == {"not_registered": 1, "unknown_op": 1}
    assert sample.nodes_online == 2
    assert sample.relayed_packets == 0
    assert "control_messages" not in sample.dropped
