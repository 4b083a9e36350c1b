"""The daemon: the I/O shell that joins the TUN, the UDP sockets and the timers to the
sans-IO overlay core, and answers the control socket.

It reads a batch of packets per wake-up, hands each to the core with the current
monotonic time, then flushes what the core produced and re-arms a single timer.
"""

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from typing import Any

from pilotif.config import InterfaceConfig
from pilotif.control import Reply, Request, serve_control
from pilotif.keys import encode_key
from pilotif.logs import log_event
from pilotif.overlay.device import Device
from pilotif.overlay.drops import DropReason
from pilotif.overlay.events import (
    Endpoint,
    EndpointChanged,
    Event,
    HandshakeCompleted,
    HandshakeGaveUp,
    KeysZeroed,
)
from pilotif.paths import StatePaths
from pilotif.tun import TunDevice, configure_link, delete_link, link_exists
from pilotif.underlay import UdpSockets, resolve_endpoint

DEFAULT_MTU = 1420
READ_BATCH_PACKETS = 128
_TUN_READ_BYTES = 65535


class StartupError(Exception):
    """The daemon could not start; the message says why and what to do."""


def format_endpoint(endpoint: Endpoint | None) -> str | None:
    """`ip:port`, or `[ip6]:port`, as `wg` prints endpoints."""
    if endpoint is None:
        return None
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Daemon:
    """One pilotif interface: TUN + UDP + overlay core + control socket."""

    def __init__(self, config: InterfaceConfig, interface: str, paths: StatePaths) -> None:
        self.config = config
        self.interface = interface
        self.paths = paths
        self.mtu = config.mtu or DEFAULT_MTU
        self.device = Device(
            config.private_key, mtu=self.mtu, wall_offset_s=time.time() - time.monotonic()
        )
        self._tun: TunDevice | None = None
        self._udp: UdpSockets | None = None
        self._stopping: asyncio.Event | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_deadline: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- start and stop ------------------------------------------------------------

    def _open(self) -> None:
        """Open sockets and the TUN and configure the link; all or nothing."""
        now = time.monotonic()
        peers = []
        for peer in self.config.peers:
            endpoint = resolve_endpoint(*peer.endpoint) if peer.endpoint else None
            peers.append((peer, endpoint))
        self._udp = UdpSockets(self.config.listen_port)
        if link_exists(self.interface):
            delete_link(self.interface)
            log_event("stale_interface_removed", interface=self.interface)
        try:
            self._tun = TunDevice.open(self.interface)
            routes = [network for peer in self.config.peers for network in peer.allowed_ips]
            configure_link(self.interface, self.config.addresses, self.mtu, routes)
        except Exception:
            self._close()
            raise
        for peer, endpoint in peers:
            self.device.add_peer(
                peer.public_key,
                allowed_ips=peer.allowed_ips,
                endpoint=endpoint,
                preshared_key=peer.preshared_key,
                persistent_keepalive_s=peer.persistent_keepalive_s,
                now=now,
            )

    def _close(self) -> None:
        if self._tun is not None:
            self._tun.close()
            self._tun = None
            with contextlib.suppress(Exception):
                delete_link(self.interface)
        if self._udp is not None:
            self._udp.close()
            self._udp = None

    def run(self, ready_fd: int | None = None) -> None:
        """Run until SIGTERM, SIGINT or a `down` request; report readiness on `ready_fd`.

        The link is set up and torn down outside the event loop: pyroute2's
        synchronous API runs an event loop of its own.
        """
        try:
            self._open()
        except Exception as error:
            message = str(error) or type(error).__name__
            raise StartupError(message) from error
        try:
            asyncio.run(self._serve(ready_fd))
        finally:
            self._close()
            log_event("interface_down", interface=self.interface)

    async def _serve(self, ready_fd: int | None) -> None:
        assert self._tun is not None and self._udp is not None
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stopping = asyncio.Event()
        server = await serve_control(self.paths.control_socket, self._handle_request)
        self.paths.pid_file.write_text(f"{os.getpid()}\n")
        try:
            loop.add_reader(self._tun.fileno(), self._on_tun_readable)
            for sock in self._udp.sockets():
                loop.add_reader(sock.fileno(), self._on_udp_readable, sock)
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, self._stopping.set)
            log_event(
                "interface_up",
                interface=self.interface,
                public_key=encode_key(self.device.public_key),
                listen_port=self._udp.port,
                addresses=",".join(str(a) for a in self.config.addresses),
                mtu=self.mtu,
                peers=len(self.config.peers),
            )
            self._flush(time.monotonic())
            if ready_fd is not None:
                os.write(ready_fd, b"ready\n")
                os.close(ready_fd)
            await self._stopping.wait()
        finally:
            server.close()
            if self._timer is not None:
                self._timer.cancel()
            for fd in [self._tun.fileno()] + [s.fileno() for s in self._udp.sockets()]:
                loop.remove_reader(fd)
            with contextlib.suppress(FileNotFoundError):
                self.paths.control_socket.unlink()
            with contextlib.suppress(FileNotFoundError):
                self.paths.pid_file.unlink()

    # -- data path -----------------------------------------------------------------

    def _on_tun_readable(self) -> None:
        assert self._tun is not None
        fd = self._tun.fileno()
        device = self.device
        now = time.monotonic()
        for _ in range(READ_BATCH_PACKETS):
            try:
                packet = os.read(fd, _TUN_READ_BYTES)
            except (BlockingIOError, InterruptedError):
                break
            device.send_packet(packet, now)
        self._flush(now)

    def _on_udp_readable(self, sock: socket.socket) -> None:
        device = self.device
        receive = UdpSockets.receive
        now = time.monotonic()
        for _ in range(READ_BATCH_PACKETS):
            received = receive(sock)
            if received is None:
                break
            device.receive_datagram(received[0], received[1], now)
        self._flush(now)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_deadline = None
        now = time.monotonic()
        self.device.handle_timers(now)
        self._flush(now)

    def _flush(self, now: float) -> None:
        """Send and write what the core produced, log its events, re-arm the timer."""
        device = self.device
        assert self._tun is not None and self._udp is not None
        if device.outgoing:
            send = self._udp.send
            failed = 0
            for datagram, endpoint in device.outgoing:
                if not send(datagram, endpoint):
                    failed += 1
            device.outgoing.clear()
            if failed:
                device.drops[DropReason.SEND_FAILED] += failed
        if device.to_tun:
            fd = self._tun.fileno()
            for packet in device.to_tun:
                with contextlib.suppress(BlockingIOError):
                    os.write(fd, packet)
            device.to_tun.clear()
        if device.events:
            for event in device.events:
                _log_overlay_event(event)
            device.events.clear()
        self._rearm_timer()

    def _rearm_timer(self) -> None:
        deadline = self.device.next_timer()
        if deadline == self._timer_deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_deadline = deadline
        if deadline is not None and self._loop is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    # -- control -------------------------------------------------------------------

    async def _handle_request(self, request: Request) -> Reply:
        command = request.get("command")
        if command == "status":
            return {"ok": True, "status": self.status()}
        if command == "down":
            assert self._stopping is not None
            self._stopping.set()
            return {"ok": True}
        return {"ok": False, "error": f"unknown control command {command!r}"}

    def status(self) -> dict[str, Any]:
        """What `pilotif status` shows."""
        now = time.monotonic()
        wall_offset = time.time() - now
        peers = []
        for peer in self.device.peers():
            latest = peer.last_handshake_s
            peers.append(
                {
                    "public_key": encode_key(peer.public_key),
                    "endpoint": format_endpoint(peer.endpoint),
                    "allowed_ips": [str(n) for n in peer.allowed_ips],
                    "latest_handshake": None if latest is None else latest + wall_offset,
                    "rx_bytes": peer.rx_bytes,
                    "tx_bytes": peer.tx_bytes,
                    "persistent_keepalive": peer.persistent_keepalive_s,
                    "preshared_key": any(peer.preshared_key),
                }
            )
        return {
            "interface": self.interface,
            "public_key": encode_key(self.device.public_key),
            "listen_port": self._udp.port if self._udp else None,
            "addresses": [str(a) for a in self.config.addresses],
            "mtu": self.mtu,
            "pid": os.getpid(),
            "peers": peers,
            "drops": {str(reason): count for reason, count in self.device.drops.items()},
        }


def _log_overlay_event(event: Event) -> None:
    if isinstance(event, HandshakeCompleted):
        log_event(
            "handshake_completed", peer=encode_key(event.public_key), initiator=event.initiator
        )
    elif isinstance(event, EndpointChanged):
        log_event(
            "endpoint_changed",
            peer=encode_key(event.public_key),
            endpoint=format_endpoint(event.endpoint),
        )
    elif isinstance(event, HandshakeGaveUp):
        log_event("handshake_gave_up", level=logging.WARNING, peer=encode_key(event.public_key))
    elif isinstance(event, KeysZeroed):
        log_event("keys_zeroed", peer=encode_key(event.public_key))
