"""`--metrics HOST:PORT`: Prometheus metrics of a node or of the registry.

Nothing is counted here: the collectors read the live counters the daemon and the
registry keep anyway (a sample callback, called at scrape time on the event loop), so
the data path does no extra work. `start_metrics_server` answers `GET /metrics` from an
asyncio server on the same loop, so a scrape never races the code it reads from.
"""

import asyncio
import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

PATHS = ("direct", "relay", "none")
"""Every value of the `path` label, each always present."""
METRICS_PATH = "/metrics"
_REQUEST_TIMEOUT_S = 5.0
_MAX_HEADER_LINES = 100


@dataclass(frozen=True)
class PeerSample:
    """One peer's traffic at scrape time."""

    name: str
    """Its hostname where known, else its public key (base64)."""
    path: str
    """One of PATHS."""
    rx_bytes: int
    tx_bytes: int


@dataclass(frozen=True)
class NodeSample:
    """What a node's metrics show, read from the daemon at scrape time."""

    peers: list[PeerSample]
    handshakes: int
    """Handshakes completed since start (each rekey counts)."""
    drops: Mapping[str, int]
    """Dropped input by reason (every DropReason)."""
    relay_rx_bytes: int = 0
    """Bytes of WireGuard datagrams received through the registry's relay."""
    relay_tx_bytes: int = 0
    registry_online: bool | None = None
    """None in static mode."""


@dataclass(frozen=True)
class RegistrySample:
    """What the registry's metrics show, read from its core at scrape time."""

    nodes_online: int
    requests: Mapping[str, int]
    """Authenticated control requests by op."""
    rejects: Mapping[str, int]
    """Refused requests by error code."""
    relayed_packets: int
    relayed_bytes: int
    dropped: Mapping[str, int] = field(default_factory=dict)
    """Datagrams dropped before a request by reason (rate_limited, malformed, ...)."""


class NodeCollector(Collector):
    """The metrics of one node (static or registry mode)."""

    def __init__(self, sample: Callable[[], NodeSample]) -> None:
        self._sample = sample

    def collect(self) -> Iterator[Metric]:
        sample = self._sample()
        peers = GaugeMetricFamily("pilotif_peers", "Peers by path", labels=["path"])
        for path in PATHS:
            peers.add_metric([path], sum(1 for p in sample.peers if p.path == path))
        yield peers
        rx = CounterMetricFamily(
            "pilotif_rx_bytes", "Bytes received from each peer", labels=["peer"]
        )
        tx = CounterMetricFamily("pilotif_tx_bytes", "Bytes sent to each peer", labels=["peer"])
        for peer in sample.peers:
            rx.add_metric([peer.name], peer.rx_bytes)
            tx.add_metric([peer.name], peer.tx_bytes)
        yield rx
        yield tx
        yield CounterMetricFamily(
            "pilotif_handshakes", "Handshakes completed", value=sample.handshakes
        )
        drops = CounterMetricFamily("pilotif_drops", "Dropped input by reason", labels=["reason"])
        for reason, count in sorted(sample.drops.items()):
            drops.add_metric([reason], count)
        yield drops
        yield CounterMetricFamily(
            "pilotif_relay_rx_bytes",
            "Bytes received through the registry's relay",
            value=sample.relay_rx_bytes,
        )
        yield CounterMetricFamily(
            "pilotif_relay_tx_bytes",
            "Bytes sent through the registry's relay",
            value=sample.relay_tx_bytes,
        )
        if sample.registry_online is not None:
            yield GaugeMetricFamily(
                "pilotif_registry_online",
                "1 while the registry answers this node's heartbeat",
                value=int(sample.registry_online),
            )


class RegistryCollector(Collector):
    """The metrics of the registry."""

    def __init__(self, sample: Callable[[], RegistrySample]) -> None:
        self._sample = sample

    def collect(self) -> Iterator[Metric]:
        sample = self._sample()
        yield GaugeMetricFamily(
            "pilotif_registry_nodes_online",
            "Nodes whose heartbeat is recent",
            value=sample.nodes_online,
        )
        for name, text, label, counts in (
            ("requests", "Control requests by op", "op", sample.requests),
            ("rejects", "Refused control requests by code", "code", sample.rejects),
            ("dropped", "Datagrams dropped by reason", "reason", sample.dropped),
        ):
            family = CounterMetricFamily(f"pilotif_registry_{name}", text, labels=[label])
            for key, count in sorted(counts.items()):
                family.add_metric([key], count)
            yield family
        yield CounterMetricFamily(
            "pilotif_registry_relayed_packets",
            "Packets relayed between nodes",
            value=sample.relayed_packets,
        )
        yield CounterMetricFamily(
            "pilotif_registry_relayed_bytes",
            "Bytes relayed between nodes (WireGuard ciphertext)",
            value=sample.relayed_bytes,
        )


def render(collector: Collector) -> bytes:
    """The Prometheus text exposition of one collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry)


async def start_metrics_server(
    host: str, port: int, collector: Collector
) -> asyncio.AbstractServer:
    """Serve `GET /metrics` on host:port; OSError (with the address) if it cannot listen."""

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_REQUEST_TIMEOUT_S):
                method, target = await _read_request(reader)
                if method != "GET":
                    status, body, kind = "405 Method Not Allowed", b"GET only\n", "text/plain"
                elif target.partition("?")[0] != METRICS_PATH:
                    status, body, kind = "404 Not Found", b"see /metrics\n", "text/plain"
                else:
                    status, body, kind = "200 OK", render(collector), CONTENT_TYPE_LATEST
                head = (
                    f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                )
                writer.write(head.encode() + body)
                await writer.drain()
        except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(OSError):
                writer.close()

    try:
        return await asyncio.start_server(on_connection, host, port)
    except OSError as error:
        raise OSError(
            error.errno, f"cannot serve metrics on {host}:{port}: {error.strerror or error}"
        ) from None


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str]:
    """The method and target of an HTTP request; its headers are read and ignored."""
    request_line = (await reader.readline()).decode("latin-1").split()
    if len(request_line) < 2:
        raise ValueError("not an HTTP request")
    for _ in range(_MAX_HEADER_LINES):
        if (await reader.readline()).strip() == b"":
            break
    return request_line[0], request_line[1]
