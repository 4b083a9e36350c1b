"""A Bind with no sockets, for unit tests of what drives one (the data path, the daemon's
control API): it keeps what was sent, by transport, and sorts arrivals as the real one."""

import socket
from collections.abc import Sequence
from typing import Any

from pilotif.net.relay_frame import RelayFraming
from pilotif.net.transport import TransportKind, transport_of
from pilotif.packet.ip import BytesLike
from pilotif.wg.events import Endpoint, PeerEndpoint
from pilotif.wg.messages import split_coalesced

FAKE_PORT = 51820


class FakeBind(RelayFraming):
    """Implements net.bind.Bind; `sent` holds each datagram with its endpoint and the
    transport that would carry it, `control` the control datagrams."""

    def __init__(self, registries: tuple[Endpoint, ...] = (), port: int = FAKE_PORT) -> None:
        super().__init__(registries)
        self.port = port
        self.sent: list[tuple[bytes, PeerEndpoint, TransportKind]] = []
        self.control: list[tuple[bytes, Endpoint]] = []
        self.closed = False

    def sockets(self) -> list[socket.socket]:
        return []

    def receive(self, sock: socket.socket) -> tuple[memoryview, int, Endpoint] | None:
        return None

    def send(self, datagrams: Sequence[tuple[BytesLike, PeerEndpoint]]) -> int:
        self.sent += [(bytes(data), to, transport_of(to)) for data, to in datagrams]
        return 0

    def send_train(self, train: memoryview, size: int, endpoint: PeerEndpoint) -> int:
        return self.send([(datagram, endpoint) for datagram in split_coalesced(train, size)])

    def send_control(self, datagrams: Sequence[tuple[bytes, Endpoint]]) -> int:
        self.control += datagrams
        return 0

    def transport(self) -> dict[str, Any]:
        return {"mode": "udp", "carrier": "udp", "proxy": None, "streams": {}}

    def relay_text(self) -> str:
        return "relay"

    def status(self) -> dict[str, Any]:
        return {"fake": True}

    def close(self) -> None:
        self.closed = True
