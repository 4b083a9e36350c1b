"""The listeners of the agent services, on the node's own overlay address, for trusted
peers only (the tunnel carries nothing else to that address; a connection from an address
that is no trusted peer is closed at once).

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

Limits per peer: MAX_CONNECTIONS_PER_PEER open connections, MESSAGES_PER_S (burst
MESSAGE_BURST) messages, MAX_TEXT_BYTES a text. A peer that sends garbage gets one error
answer and a closed connection, counted in `counters` by reason; never a crash.
"""

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any, Final

from pilotif.registry.ratelimit import TokenBuckets
from pilotif.services.broker import PUBLISHED, Broker, TopicError, check_topic, matches
from pilotif.services.files import FileRefused, ReceivedFile, ReceivedFiles
from pilotif.services.inbox import Inbox, Message
from pilotif.services.task_service import TASKS_PORT, TaskService
from pilotif.services.wire import MAX_LINE_BYTES, WireError, encode, error_answer, read_message

ECHO_PORT: Final = 7
MESSAGES_PORT: Final = 1001
EVENTS_PORT: Final = 1002
PUBLISH_PER_S: Final = 50.0
PUBLISH_BURST: Final = 200.0
MAX_CONNECTIONS_PER_PEER: Final = 16
MESSAGES_PER_S: Final = 10.0
MESSAGE_BURST: Final = 50.0
MAX_TEXT_BYTES: Final = 16 * 1024
IDLE_TIMEOUT_S: Final = 60.0
ECHO_CHUNK_BYTES: Final = 64 * 1024
FILE_CHUNK_BYTES: Final = 256 * 1024
_CLOSING_CODES: Final = frozenset({"bad_request", "truncated", "bad_hash", "disk_full"})
"""Answers after which the connection's stream cannot be trusted to be at a line."""

PeerOf = Callable[[str], str | None]
"""The hostname of the trusted peer that owns an overlay address, or None."""
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
    ) -> None:
        self.inbox = inbox
        self.files = files
        self.tasks = tasks
        self._on_file = on_file
        self._peer_of = peer_of
        self._on_message = on_message
        self.counters: Counter[str] = Counter()
        """Refused connections and requests, by reason."""
        self._connections: Counter[str] = Counter()
        self._message_limit = TokenBuckets(MESSAGES_PER_S, MESSAGE_BURST)
        self._publish_limit = TokenBuckets(PUBLISH_PER_S, PUBLISH_BURST)
        self.broker = Broker()
        self._servers: list[asyncio.Server] = []

    async def start(self, address: str) -> None:
        """Listen on the services' ports of `address` (the node's overlay IPv4)."""
        handlers: dict[int, Handler] = {
            MESSAGES_PORT: self._line_service(self._data_request),
            EVENTS_PORT: self._line_service(self._events_request),
            TASKS_PORT: self._line_service(self._task_request),
            ECHO_PORT: self._echo,
        }
        for port, handler in handlers.items():
            server = await asyncio.start_server(
                self._admit(handler), address, port, limit=MAX_LINE_BYTES
            )
            self._servers.append(server)

    def close(self) -> None:
        for server in self._servers:
            server.close()
        self._servers = []

    def _admit(
        self, handler: Handler
    ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            peer = self._peer_of(str(writer.get_extra_info("peername")[0]))
            if peer is None:
                self.counters["not_a_peer"] += 1
            elif self._connections[peer] >= MAX_CONNECTIONS_PER_PEER:
                self.counters["too_many_connections"] += 1
            else:
                self._connections[peer] += 1
                try:
                    await handler(peer, reader, writer)
                except (ConnectionError, TimeoutError):
                    self.counters["connection_lost"] += 1
                finally:
                    self._connections[peer] -= 1
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

        return connected

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
                    writer.write(encode(self._refused(error.code, str(error))))
                    await writer.drain()
                    return
                if request is None:
                    return
                answer = await respond(peer, request, reader, writer)
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

    def _refused(self, code: str, error: str) -> dict[str, Any]:
        """A refusal's answer, counted by its code."""
        self.counters[code] += 1
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
        try:
            incoming = self.files.begin(
                peer, request.get("name"), request.get("size"), request.get("sha256")
            )
        except FileRefused as error:
            return self._refused(error.code, str(error))
        writer.write(encode({"ok": True, "ready": True, "id": incoming.id}))
        await writer.drain()
        try:
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
        except OSError as error:
            incoming.abort()
            self.counters["write_failed"] += 1
            return error_answer("disk_full", f"the file could not be written: {error.strerror}")
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
            await self._subscribe(request.get("topic"), reader, writer)
            return None
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
        if not self._publish_limit.allow(peer, time.time()):
            return self._refused("rate_limited", f"at most {PUBLISH_PER_S:g} events a second")
        return {"ok": True, "delivered": self.broker.publish(topic, request["data"], peer)}

    async def _subscribe(
        self, pattern: object, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Stream the matching events until the subscriber closes its side."""
        try:
            checked = check_topic(pattern, pattern=True)
        except TopicError as error:
            writer.write(encode(self._refused("bad_topic", str(error))))
            await writer.drain()
            return
        subscription = self.broker.subscribe(checked)
        closed = asyncio.ensure_future(reader.read(1))
        try:
            writer.write(encode({"ok": True, "subscribed": checked}))
            await writer.drain()
            while True:
                getter = asyncio.ensure_future(subscription.get())
                done, _ = await asyncio.wait({getter, closed}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    return
                event = getter.result()
                if event["event"] == PUBLISHED and not matches(checked, event["topic"]):
                    continue
                writer.write(encode(event))
                await writer.drain()
        finally:
            closed.cancel()
            self.broker.unsubscribe(subscription)

    async def _echo(
        self, peer: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        del peer
        while data := await asyncio.wait_for(reader.read(ECHO_CHUNK_BYTES), IDLE_TIMEOUT_S):
            writer.write(data)
            await writer.drain()
