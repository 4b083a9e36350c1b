"""The port mapping client against fake gateways on loopback: PCP first, NAT-PMP when
the gateway answers PCP with NAT-PMP's "unsupported version", UPnP IGD (SSDP, the
description, SOAP) when neither answers, nothing when nobody answers; the mapping is
deleted at close (lifetime 0), and garbage answers are counted, never raised. The three
are asked at once: a gateway that speaks only UPnP maps in one UPnP exchange, before
PCP's first wait ends; one that grants two keeps the preferred and the other is deleted;
a `map_once` given up (cancelled) leaves no mapping on the gateway."""

import asyncio
import struct
from collections.abc import Callable
from ipaddress import IPv4Address
from typing import cast

import pytest

from pilotif.net.portmap import client as client_module
from pilotif.net.portmap import natpmp, pcp
from pilotif.net.portmap.client import PortMapper, PortMapping

LOOPBACK = IPv4Address("127.0.0.1")
INTERNAL_PORT = 51820
EXTERNAL_PORT = 40000
EXTERNAL = "198.18.0.11"
GRANTED_S = 3600


class FakeGateway(asyncio.DatagramProtocol):
    """Answers NAT-PMP and, if `speaks_pcp`, PCP; `garbage` answers junk instead; a PCP
    answer waits for `pcp_after` (when given) to be set; `silent` answers nothing."""

    def __init__(
        self,
        *,
        speaks_pcp: bool,
        garbage: bool = False,
        pcp_after: asyncio.Event | None = None,
        silent: bool = False,
    ) -> None:
        self.speaks_pcp = speaks_pcp
        self.garbage = garbage
        self.pcp_after = pcp_after
        self.silent = silent
        self.requests: list[bytes] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | bytes, int]) -> None:
        self.requests.append(data)
        assert self.transport is not None
        if self.silent:
            return
        if self.pcp_after is not None and data[0] == pcp.VERSION:
            asyncio.get_running_loop().create_task(self._answer_later(data, addr))
            return
        self.transport.sendto(self._answer(data), addr)

    async def _answer_later(self, data: bytes, addr: tuple[str | bytes, int]) -> None:
        assert self.pcp_after is not None and self.transport is not None
        await self.pcp_after.wait()
        self.transport.sendto(self._answer(data), addr)

    def _answer(self, data: bytes) -> bytes:
        if self.garbage:
            return b"\x02\x81junk"
        if data[0] == pcp.VERSION:
            if not self.speaks_pcp:
                return bytes.fromhex("0080 0001 00000000 00000000")
            lifetime = struct.unpack_from("!I", data, 4)[0]
            nonce, internal = data[24:36], struct.unpack_from("!H", data, 40)[0]
            external = IPv4Address(EXTERNAL).packed
            return (
                struct.pack("!BBBBII12x", 2, 0x81, 0, 0, min(lifetime, GRANTED_S), 1)
                + struct.pack("!12sB3xHH", nonce, 17, internal, EXTERNAL_PORT)
                + bytes(10)
                + b"\xff\xff"
                + external
            )
        if data[1] == natpmp.OP_EXTERNAL_ADDRESS:
            return struct.pack("!BBHI4s", 0, 128, 0, 1, IPv4Address(EXTERNAL).packed)
        internal, _, lifetime = struct.unpack_from("!HHI", data, 4)
        return struct.pack("!BBHIHHI", 0, 129, 0, 1, internal, EXTERNAL_PORT, lifetime)


@pytest.fixture(autouse=True)
def quick_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Waits short enough for a unit test (the retries are still all made)."""
    monkeypatch.setattr(client_module, "ANSWER_WAIT_S", 0.05)
    monkeypatch.setattr(client_module, "SSDP_WAIT_S", 0.3)


async def _gateway(protocol: asyncio.DatagramProtocol) -> tuple[asyncio.DatagramTransport, int]:
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: protocol, local_addr=(str(LOOPBACK), 0)
    )
    return transport, transport.get_extra_info("sockname")[1]


def _mapper(port: int, changes: list[PortMapping | None], **kwargs: object) -> PortMapper:
    return PortMapper(
        INTERNAL_PORT,
        changes.append,
        gateway=LOOPBACK,
        gateway_port=port,
        **kwargs,  # type: ignore[arg-type]
    )


def _run(test: Callable[[], object]) -> None:
    asyncio.run(test())  # type: ignore[arg-type]


def test_a_pcp_gateway_maps_the_port_and_close_deletes_it() -> None:
    async def scenario() -> None:
        gateway = FakeGateway(speaks_pcp=True)
        transport, port = await _gateway(gateway)
        changes: list[PortMapping | None] = []
        mapper = _mapper(port, changes)
        mapper.start()
        for _ in range(100):
            if changes:
                break
            await asyncio.sleep(0.01)
        assert changes == [PortMapping("pcp", (EXTERNAL, EXTERNAL_PORT), GRANTED_S, INTERNAL_PORT)]
        assert mapper.status() == {
            "protocol": "pcp",
            "external": f"{EXTERNAL}:{EXTERNAL_PORT}",
            "lifetime_s": GRANTED_S,
        }
        await mapper.close()
        assert changes[-1] is None and mapper.status() is None
        deletion = gateway.requests[-1]
        assert deletion[0] == pcp.VERSION and struct.unpack_from("!I", deletion, 4)[0] == 0
        transport.close()

    _run(scenario)


def test_a_natpmp_gateway_is_used_when_it_answers_pcp_with_its_version() -> None:
    async def scenario() -> None:
        gateway = FakeGateway(speaks_pcp=False)
        transport, port = await _gateway(gateway)
        changes: list[PortMapping | None] = []
        mapper = _mapper(port, changes)
        mapping = await mapper.map_once()
        assert mapping == PortMapping(
            "nat-pmp", (EXTERNAL, EXTERNAL_PORT), client_module.LIFETIME_S, INTERNAL_PORT
        )
        assert mapper.counters["unsupported_version"] == 1
        transport.close()

    _run(scenario)


def test_garbage_and_silence_are_counted_and_give_no_mapping() -> None:
    async def scenario() -> None:
        gateway = FakeGateway(speaks_pcp=True, garbage=True)
        transport, port = await _gateway(gateway)
        silent, silent_port = await _gateway(asyncio.DatagramProtocol())
        changes: list[PortMapping | None] = []
        mapper = _mapper(port, changes, ssdp_target=(str(LOOPBACK), silent_port))
        assert await mapper.map_once() is None
        assert mapper.counters["truncated"] == 1  # the PCP answer of junk
        assert mapper.counters["unexpected"] == 1  # the same junk as NAT-PMP: version 2
        assert mapper.counters["no_answer"] == 1  # nobody answered the SSDP search
        assert mapper.counters["none"] == 1
        transport.close()
        silent.close()

    _run(scenario)


DESCRIPTION = (
    b'<?xml version="1.0"?><root xmlns="urn:schemas-upnp-org:device-1-0"><device>'
    b"<serviceList><service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:1"
    b"</serviceType><controlURL>/ctl/IPConn</controlURL></service></serviceList>"
    b"</device></root>"
)


def _soap_answer(action: str, inner: str) -> bytes:
    return (
        '<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/">'
        f'<s:Body><u:{action}Response xmlns:u="urn:schemas-upnp-org:service:WANIPConnection:1">'
        f"{inner}</u:{action}Response></s:Body></s:Envelope>"
    ).encode()


class FakeIgd:
    """A UPnP IGD gateway: answers SSDP searches with the description's location, and
    SOAP calls; `mapped` holds the external ports it forwards, `actions` the calls in
    order. With `hold_adds`, an AddPortMapping is carried out but never answered (a
    gateway slow to answer); `added` is set at each one."""

    def __init__(self, *, hold_adds: bool = False) -> None:
        self.hold_adds = hold_adds
        self.actions: list[str] = []
        self.mapped: set[int] = set()
        self.added = asyncio.Event()
        self.ssdp_port = 0
        self._closing: list[Callable[[], object]] = []

    async def start(self) -> None:
        server = await asyncio.start_server(self._http, str(LOOPBACK), 0)
        http_port = server.sockets[0].getsockname()[1]
        location = f"http://127.0.0.1:{http_port}/rootDesc.xml"

        class Ssdp(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = cast(asyncio.DatagramTransport, transport)

            def datagram_received(self, data: bytes, addr: tuple[str | bytes, int]) -> None:
                assert data.startswith(b"M-SEARCH")
                self.transport.sendto(
                    f"HTTP/1.1 200 OK\r\nLOCATION: {location}\r\n\r\n".encode(), addr
                )

        ssdp, self.ssdp_port = await _gateway(Ssdp())
        self._closing += [server.close, ssdp.close]

    def close(self) -> None:
        for close in self._closing:
            close()

    async def _http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        body = await reader.readexactly(length)
        if head.startswith(b"GET"):
            answer = DESCRIPTION
        elif b"GetExternalIPAddress" in body:
            self.actions.append("GetExternalIPAddress")
            answer = _soap_answer(
                "GetExternalIPAddress", f"<NewExternalIPAddress>{EXTERNAL}</NewExternalIPAddress>"
            )
        else:
            port = int(body.split(b"<NewExternalPort>")[1].split(b"<")[0])
            action = "AddPortMapping" if b"AddPortMapping" in body else "DeletePortMapping"
            self.actions.append(action)
            if action == "AddPortMapping":
                self.mapped.add(port)
                self.added.set()
                if self.hold_adds:
                    await reader.read()  # until the client gives up and closes
                    writer.close()
                    return
            else:
                self.mapped.discard(port)
            answer = _soap_answer(action, "")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\n\r\n" + answer)
        await writer.drain()
        writer.close()


def _map_requests(gateway: FakeGateway, version: int) -> list[bytes]:
    """The mapping requests (not deletions: lifetime 0) of `version` the gateway got."""
    if version == pcp.VERSION:
        lifetime_at, op = 4, pcp.OP_MAP
    else:
        lifetime_at, op = 8, natpmp.OP_MAP_UDP
    return [
        r
        for r in gateway.requests
        if r[0] == version and r[1] == op and struct.unpack_from("!I", r, lifetime_at)[0] > 0
    ]


def _runs(task: "asyncio.Task[object]", qualname: str) -> bool:
    return getattr(task.get_coro(), "__qualname__", "") == qualname


def test_an_igd_gateway_is_found_by_ssdp_and_maps_by_soap() -> None:
    async def scenario() -> None:
        igd = FakeIgd()
        await igd.start()
        silent, silent_port = await _gateway(asyncio.DatagramProtocol())
        changes: list[PortMapping | None] = []
        mapper = _mapper(silent_port, changes, ssdp_target=(str(LOOPBACK), igd.ssdp_port))
        mapping = await mapper.map_once()
        assert mapping == PortMapping(
            "upnp", (EXTERNAL, INTERNAL_PORT), client_module.LIFETIME_S, INTERNAL_PORT
        )
        mapper.mapping = mapping
        await mapper.close()
        assert igd.actions == ["GetExternalIPAddress", "AddPortMapping", "DeletePortMapping"]
        assert igd.mapped == set()
        igd.close()
        silent.close()

    _run(scenario)


def test_a_gateway_that_speaks_only_upnp_maps_before_pcp_is_asked_again() -> None:
    """PCP's first wait is long here: the UPnP mapping comes within it, so PCP is asked
    once (then told to delete, unanswered) and NAT-PMP, which waits for PCP's first
    wait, never."""

    async def scenario() -> None:
        igd = FakeIgd()
        await igd.start()
        port_5351 = FakeGateway(speaks_pcp=False, silent=True)
        silent, silent_port = await _gateway(port_5351)
        mapper = _mapper(silent_port, [], ssdp_target=(str(LOOPBACK), igd.ssdp_port))
        mapping = await mapper.map_once()
        assert mapping is not None and mapping.protocol == "upnp"
        assert len(_map_requests(port_5351, pcp.VERSION)) == 1
        assert _map_requests(port_5351, natpmp.VERSION) == []
        assert igd.mapped == {INTERNAL_PORT}
        silent.close()
        igd.close()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(client_module, "ANSWER_WAIT_S", 1.0)
        _run(scenario)


def test_a_gateway_that_grants_two_protocols_keeps_only_the_preferred_mapping() -> None:
    """The gateway grants UPnP first, then PCP (held until the UPnP mapping is made):
    the PCP mapping is kept, the UPnP one deleted."""

    async def scenario() -> None:
        igd = FakeIgd()
        await igd.start()
        gateway = FakeGateway(speaks_pcp=True, pcp_after=igd.added)
        transport, port = await _gateway(gateway)
        mapper = _mapper(port, [], ssdp_target=(str(LOOPBACK), igd.ssdp_port))
        mapping = await mapper.map_once()
        assert mapping == PortMapping("pcp", (EXTERNAL, EXTERNAL_PORT), GRANTED_S, INTERNAL_PORT)
        assert "AddPortMapping" in igd.actions and igd.mapped == set()
        assert mapper.counters["deleted_extra"] == 1
        transport.close()
        igd.close()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(client_module, "PREFERRED_WAIT_S", 30.0)
        _run(scenario)


@pytest.mark.parametrize("hold_adds", [True, False], ids=["mid_add", "after_grant"])
def test_a_cancelled_map_once_leaves_no_mapping_on_the_gateway(hold_adds: bool) -> None:
    """Cancelled while AddPortMapping is in flight (the gateway made the mapping but has
    not answered), or after UPnP granted it while PCP may still answer: deleted."""

    async def scenario() -> None:
        igd = FakeIgd(hold_adds=hold_adds)
        await igd.start()
        port_5351 = FakeGateway(speaks_pcp=False, silent=True)
        silent, silent_port = await _gateway(port_5351)
        mapper = _mapper(silent_port, [], ssdp_target=(str(LOOPBACK), igd.ssdp_port))
        asking = asyncio.get_running_loop().create_task(mapper.map_once())
        await asyncio.wait_for(igd.added.wait(), 10)
        if not hold_adds:
            for _ in range(1000):  # until the client has the UPnP answer
                if not any(_runs(task, "PortMapper._igd") for task in asyncio.all_tasks()):
                    break
                await asyncio.sleep(0.01)
        asking.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asking
        assert igd.actions[-1] == "DeletePortMapping" and igd.mapped == set()
        assert mapper.counters["deleted_abandoned"] >= 1
        pcp_deletions = [r for r in port_5351.requests if r[0] == pcp.VERSION]
        assert len(pcp_deletions) == 2  # the request and its deletion
        silent.close()
        igd.close()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(client_module, "PREFERRED_WAIT_S", 30.0)
        patch.setattr(client_module, "ANSWER_WAIT_S", 30.0)
        _run(scenario)
