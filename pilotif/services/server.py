"""The listeners of the agent services, on the node's own overlay address, for trusted
peers only (the tunnel carries nothing else to that address; a connection from an address
that is no trusted peer is closed at once). A connection from this host to its own address
is the node itself only when the daemon's own user (root) made it (pilotif.services.
local_owner); any other local user is refused, as it may not use the control socket either.

- MESSAGES_PORT (1001), data exchange: `{"op": "message", "text": ...}` -> `{"ok": true,
  "id": N}`, the message into the inbox (and a `message_received` event); and
  `{"op": "file", "name", "size", "sha256"}` -> `{"ok": true, "ready": true}` (or a
  refusal, before any byte is sent), then exactly `size` raw bytes -> `{"ok": true, "id",
  "name", "size", "sha256"}` once the file is whole (pilotif.services.files).
- EVENTS_PORT (1002), publish/subscribe on this node's topics (pilotif.services.broker):
  `{"op": "publish", "topic", "data"}` -> `{"ok": true, "delivered": N}`;
  `{"op": "subscribe", "topic": PATTERN}` -> `{"ok": true, "subscribed": PATTERN}`, then
  one line per event published after it, until the subscriber closes.
- TASKS_PORT (1003), tasks (pilotif.services.task_service): `submit`, `update`, `get`.
- ECHO_PORT (7): every byte comes back (RFC 862).

Limits per peer (pilotif.services.limits): MAX_CONNECTIONS_PER_PEER open connections,
MAX_ECHO_CONNECTIONS_PER_PEER of them echoing; MESSAGES_PER_S (burst MESSAGE_BURST)
messages of MAX_TEXT_BYTES; PUBLISH_PER_S events and PUBLISH_BYTES_PER_S bytes published
(bursts PUBLISH_BURST, PUBLISH_BURST_BYTES); FILES_PER_S files (burst FILE_BURST), and the
byte and transfer caps of pilotif.services.files; the subscription caps of
pilotif.services.broker. Garbage (pilotif.services.wire) gets an error answer and the next
line is read as usual; every refusal is counted in `counters` by reason and logged one
line at a time, at most a few a minute per peer (PeerLog). Nothing a peer sends raises
through the loop: an unexpected failure answers `internal_error`, closes that connection
and logs one line.
"""

import asyncio
import contextlib
import errno
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict
from typing import Any, Final

from pilotif.services.broker import Broker, TooManySubscriptions, TopicError, check_topic
from pilotif.services.files import FileRefused, ReceivedFile, ReceivedFiles
from pilotif.services.inbox import Inbox, Message
from pilotif.services.limits import PeerLog, Quota, TokenBuckets
from pilotif.services.local_owner import tcp_owner_uid
from pilotif.services.overlay_net import KERNEL, KernelNet, OverlayNet, OverlayServer
from pilotif.services.task_service import TASKS_PORT, TaskService
from pilotif.services.wire import MAX_LINE_BYTES, WireError, encode, error_answer, read_message

ECHO_PORT: Final = 7
MESSAGES_PORT: Final = 1001
EVENTS_PORT: Final = 1002
PUBLISH_PER_S: Final = 50.0
PUBLISH_BURST: Final = 200.0
PUBLISH_BYTES_PER_S: Final = 256 * 1024.0
PUBLISH_BURST_BYTES: Final = 1024 * 1024.0
FILES_PER_S: Final = 1.0
FILE_BURST: Final = 20.0
MAX_CONNECTIONS_PER_PEER: Final = 16
MAX_ECHO_CONNECTIONS_PER_PEER: Final = 2
MESSAGES_PER_S: Final = 10.0
MESSAGE_BURST: Final = 50.0
MAX_TEXT_BYTES: Final = 16 * 1024
IDLE_TIMEOUT_S: Final = 60.0
ECHO_CHUNK_BYTES: Final = 64 * 1024
FILE_CHUNK_BYTES: Final = 256 * 1024
_CLOSING_CODES: Final = frozenset(
    {"truncated", "bad_hash", "disk_full", "write_failed", "timeout", "internal_error"}
)
"""Answers after which the connection's stream cannot be trusted to be at a line."""
_NO_SPACE_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EDQUOT})
_LOCAL_REFUSAL: Final = "only the daemon's own user (root) may use this node's services as it"

PeerOf = Callable[[str], str | None]
"""The hostname of the trusted peer that owns an overlay address, or None."""
OwnerUid = Callable[[tuple[str, int], tuple[str, int]], int | None]
"""The uid that owns this host's socket connected from a client to a server endpoint."""
Handler = Callable[[str, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
"""A service: the peer's hostname and its connection."""
Responder = Callable[
    [str, dict[str, Any], asyncio.StreamReader, asyncio.StreamWriter],
    Awaitable[dict[str, Any] | None],
]
"""The answer to one request line (None: the responder took the connection over)."""


class AgentServices:
    """The services' listeners; see the module docstring."""

    def __init__(
        self,
        inbox: Inbox,
        files: ReceivedFiles,
        tasks: TaskService,
        peer_of: PeerOf,
        on_message: Callable[[Message], None],
        on_file: Callable[[ReceivedFile], None],
        *,
        own_name: str | None = None,
        owner_uid: OwnerUid = tcp_owner_uid,
        net: OverlayNet | None = None,
    ) -> None:
        """`peer_of` names the trusted peers; `own_name` is this node's hostname, for
        connections from this host that its own user made (`owner_uid` says who); `net`
        is the overlay's TCP (default: the kernel's, on the address `start` is given)."""
        self.net: OverlayNet = KERNEL if net is None else net
        self._own_net = net is None
        self.inbox = inbox
        self.files = files
        self.tasks = tasks
        self._on_file = on_file
        self._peer_of = peer_of
        self._own_name = own_name
        self._owner_uid = owner_uid
        self._on_message = on_message
        self.counters: Counter[str] = Counter()
        """Refused connections and requests, by reason."""
        self._connections = Quota(MAX_CONNECTIONS_PER_PEER)
        self._echoes = Quota(MAX_ECHO_CONNECTIONS_PER_PEER)
        self._message_limit = TokenBuckets(MESSAGES_PER_S, MESSAGE_BURST)
        self._publish_limit = TokenBuckets(PUBLISH_PER_S, PUBLISH_BURST)
        self._publish_bytes = TokenBuckets(PUBLISH_BYTES_PER_S, PUBLISH_BURST_BYTES)
        self._file_limit = TokenBuckets(FILES_PER_S, FILE_BURST)
        self._log = PeerLog()
        self.broker = Broker()
        self._servers: list[OverlayServer] = []
        self.ports: dict[int, int] = {}
        """Each service's well-known port -> the port it listens on."""

    async def start(self, address: str, ports: Mapping[int, int] | None = None) -> None:
        """Listen on the services' ports of `address` (the node's overlay IPv4); `ports`
        moves well-known ports elsewhere (0: any free port; tests)."""
        handlers: dict[int, Handler] = {
            MESSAGES_PORT: self._line_service(self._data_request),
            EVENTS_PORT: self._line_service(self._events_request),
            TASKS_PORT: self._line_service(self._task_request),
            ECHO_PORT: self._echo,
        }
        listening = KernelNet(address) if self._own_net else self.net
        for port, handler in handlers.items():
            listen_port = port if ports is None else ports.get(port, port)
            server = await listening.start_server(
                self._admit(handler), listen_port, limit=MAX_LINE_BYTES
            )
            self._servers.append(server)
            self.ports[port] = server.port

    def close(self) -> None:
        for server in self._servers:
            server.close()
        self._servers = []

    def _admit(
        self, handler: Handler
    ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                peer = self._identify(writer)
                if peer is not None and not self._connections.take(peer):
                    self.counters["too_many_connections"] += 1
                elif peer is not None:
                    try:
                        await handler(peer, reader, writer)
                    except (ConnectionError, TimeoutError):
                        self.counters["connection_lost"] += 1
                    except asyncio.CancelledError:
                        pass  # the services stop: the connection just ends (a handler left
                        # cancelled is reported as an error by asyncio's stream server)
                    except Exception as error:  # hostile input must never raise through
                        self.counters["internal_error"] += 1
                        self._log.warn("service_failed", peer, error=repr(error))
                    finally:
                        self._connections.give_back(peer)
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()

        return connected

    def _identify(self, writer: asyncio.StreamWriter) -> str | None:
        """The hostname a connection speaks for, or None (counted, and a local user told)."""
        source, source_port = writer.get_extra_info("peername")[:2]
        address, port = writer.get_extra_info("sockname")[:2]
        if source != address:
            peer = self._peer_of(str(source))
            if peer is None:
                self.counters["not_a_peer"] += 1
            return peer
        # From this host to its own address: any local user could have made it.
        if (
            self._own_name is not None
            and self._owner_uid((str(source), int(source_port)), (str(address), int(port)))
            == os.geteuid()
        ):
            return self._own_name
        self.counters["local_user"] += 1
        writer.write(encode(error_answer("not_a_peer", _LOCAL_REFUSAL)))
        return None

    def _line_service(self, respond: Responder) -> Handler:
        """A service that reads one request a line and writes one answer a line, until
        the peer closes, sends garbage, or `respond` takes the connection over (None)."""

        async def serve(
            peer: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            while True:
                try:
                    request = await asyncio.wait_for(read_message(reader), IDLE_TIMEOUT_S)
                except WireError as error:
                    writer.write(encode(self._refused(error.code, str(error), peer)))
                    await writer.drain()
                    if error.at_line:
                        continue
                    return
                if request is None:
                    return
                try:
                    answer = await respond(peer, request, reader, writer)
                except (ConnectionError, TimeoutError):
                    raise
                except Exception as error:  # answered, logged, closed
                    self._log.warn("service_failed", peer, error=repr(error))
                    answer = self._refused("internal_error", "this request failed here")
                if answer is None:
                    return
                writer.write(encode(answer))
                await writer.drain()
                if not answer["ok"] and answer["code"] in _CLOSING_CODES:
                    return

        return serve

    async def _data_request(
        self,
        peer: str,
        request: dict[str, Any],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> dict[str, Any] | None:
        if request.get("op") == "file":
            return await self._file(peer, request, reader, writer)
        return self._message(peer, request)

    def _refused(self, code: str, error: str, peer: str | None = None) -> dict[str, Any]:
        """A refusal's answer, counted by its code (and logged, rate-limited, for `peer`:
        garbage is worth a line, an ordinary refusal is not)."""
        self.counters[code] += 1
        if peer is not None:
            self._log.warn("service_refused", peer, code=code, error=error)
        return error_answer(code, error)

    def _message(self, peer: str, request: dict[str, Any]) -> dict[str, Any]:
        text = request.get("text")
        if request.get("op") != "message" or not isinstance(text, str):
            return self._refused("bad_request", 'send {"op": "message", "text": "..."}')
        if len(text.encode()) > MAX_TEXT_BYTES:
            return self._refused("too_large", f"a message is at most {MAX_TEXT_BYTES} bytes")
        now = time.time()
        if not self._message_limit.allow(peer, now):
            return self._refused("rate_limited", f"at most {MESSAGES_PER_S:g} messages a second")
        message = self.inbox.add(peer, text, now)
        self._on_message(message)
        return {"ok": True, "id": message.id}

    async def _file(
        self,
        peer: str,
        request: dict[str, Any],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> dict[str, Any]:
        """Take one file: refuse it before its bytes, or keep it only once whole."""
        if not self._file_limit.allow(peer, time.time()):
            return self._refused("rate_limited", f"at most {FILES_PER_S:g} files a second")
        try:
            incoming = self.files.begin(
                peer, request.get("name"), request.get("size"), request.get("sha256")
            )
        except FileRefused as error:
            return self._refused(error.code, str(error))
        try:  # from here on, every way out gives the reservation back
            writer.write(encode({"ok": True, "ready": True, "id": incoming.id}))
            await writer.drain()
            remaining = incoming.size
            while remaining:
                chunk = await asyncio.wait_for(
                    reader.read(min(FILE_CHUNK_BYTES, remaining)), IDLE_TIMEOUT_S
                )
                if not chunk:
                    break
                incoming.write(chunk)
                remaining -= len(chunk)
            received = incoming.finish(time.time())
        except FileRefused as error:
            return self._refused(error.code, str(error))
        except TimeoutError:  # an OSError too: before the disk's errors
            incoming.abort()
            return self._refused(
                "timeout", f"no byte of the file for {IDLE_TIMEOUT_S:g} s: send it again"
            )
        except ConnectionError:  # an OSError too: the sender went, the disk did not fail
            incoming.abort()
            raise
        except OSError as error:
            incoming.abort()
            code = "disk_full" if error.errno in _NO_SPACE_ERRNOS else "write_failed"
            return self._refused(code, f"the file could not be written: {error.strerror}")
        except BaseException:
            incoming.abort()
            raise
        self._on_file(received)
        return {"ok": True, **asdict(received)}

    async def _events_request(
        self,
        peer: str,
        request: dict[str, Any],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> dict[str, Any] | None:
        op = request.get("op")
        if op == "subscribe":
            return await self._subscribe(peer, request.get("topic"), reader, writer)
        if op == "publish":
            return self._publish(peer, request)
        return self._refused("bad_request", 'the ops here are "publish" and "subscribe"')

    async def _task_request(
        self,
        peer: str,
        request: dict[str, Any],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> dict[str, Any] | None:
        answer = self.tasks.answer(peer, request, time.time())
        if not answer["ok"]:
            self.counters[str(answer["code"])] += 1
        return answer

    def _publish(self, peer: str, request: dict[str, Any]) -> dict[str, Any]:
        try:
            topic = check_topic(request.get("topic"))
        except TopicError as error:
            return self._refused("bad_topic", str(error))
        if "data" not in request:
            return self._refused("bad_request", 'a publish carries "data" (any JSON)')
        now = time.time()
        line = self.broker.line(topic, request["data"], peer)
        if not self._publish_limit.allow(peer, now):
            return self._refused("rate_limited", f"at most {PUBLISH_PER_S:g} events a second")
        if not self._publish_bytes.allow(peer, now, len(line)):
            return self._refused(
                "rate_limited", f"at most {PUBLISH_BYTES_PER_S:g} bytes of events a second"
            )
        return {"ok": True, "delivered": self.broker.deliver(topic, line)}

    async def _subscribe(
        self,
        peer: str,
        pattern: object,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> dict[str, Any] | None:
        """Stream the matching events until the subscriber closes its side (None), or
        refuse the subscription (its answer)."""
        try:
            subscription = self.broker.subscribe(check_topic(pattern, pattern=True), peer)
        except TopicError as error:
            return self._refused("bad_topic", str(error))
        except TooManySubscriptions as error:
            return self._refused("too_many_subscriptions", str(error))
        closed = asyncio.ensure_future(reader.read(1))
        try:
            writer.write(encode({"ok": True, "subscribed": subscription.pattern}))
            await writer.drain()
            while True:
                getter = asyncio.ensure_future(subscription.get())
                done, _ = await asyncio.wait({getter, closed}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    return None
                writer.write(getter.result())
                await writer.drain()
        finally:
            closed.cancel()
            self.broker.unsubscribe(subscription)

    async def _echo(
        self, peer: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if not self._echoes.take(peer):
            self.counters["too_many_echoes"] += 1
            return
        try:
            while data := await asyncio.wait_for(reader.read(ECHO_CHUNK_BYTES), IDLE_TIMEOUT_S):
                writer.write(data)
                await writer.drain()
        finally:
            self._echoes.give_back(peer)
