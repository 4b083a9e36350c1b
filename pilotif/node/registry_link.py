"""The node's link to the registry: sealed requests with retries, replies matched by id,
pushes handed to a callback, and the registry key learned once and pinned.

It shares the node's single UDP socket: the daemon hands it every datagram of type
0x50/0x52 from the registry's address and gives it a function to send with.
"""

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

from pilotif.overlay.events import Endpoint
from pilotif.registry.wire import (
    CONTROL_TYPE,
    KEY_REQUEST,
    KEY_REQUEST_TYPE,
    ControlChannel,
    WireError,
    next_counter,
    unpack_key_reply,
)

REQUEST_ATTEMPTS = 5
REQUEST_RETRY_S = 1.0

Push = dict[str, Any]


class RegistryError(Exception):
    """The registry refused a request; `code` and `hint` come from its reply."""

    def __init__(self, code: str, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.hint = hint


class RegistryUnreachable(RegistryError):
    """No reply from the registry after every retry."""


class RegistryKeyMismatch(RegistryError):
    """The registry answered with a key other than the one pinned."""


class RegistryLink:
    """Requests to and pushes from one registry, over a send function of the daemon's."""

    def __init__(
        self,
        private_key: bytes,
        registry_endpoint: Endpoint,
        registry_key: bytes | None,
        send: Callable[[bytes, Endpoint], bool],
        on_push: Callable[[Push], None],
    ) -> None:
        self._private_key = private_key
        self.endpoint = registry_endpoint
        self.registry_key = registry_key
        self._send = send
        self._on_push = on_push
        self._channel = (
            ControlChannel(private_key, registry_key, local_is_registry=False)
            if registry_key
            else None
        )
        self._ids = itertools.count(1)
        self._counter = 0
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._key_waiters: list[asyncio.Future[bytes]] = []
        self.last_reply_s: float | None = None
        self.dropped = 0

    # -- inbound -------------------------------------------------------------------

    def handle_datagram(self, data: bytes, now: float) -> None:
        """A datagram of type 0x50 or 0x52 from the registry's address."""
        if data[0] == KEY_REQUEST_TYPE:
            self._handle_key_reply(data)
            return
        if self._channel is None or data[0] != CONTROL_TYPE:
            self.dropped += 1
            return
        try:
            message = self._channel.open(data)
        except WireError:
            self.dropped += 1
            return
        self.last_reply_s = now
        if message.get("op") == "reply":
            future = self._waiting.pop(message.get("id", -1), None)
            if future is not None and not future.done():
                future.set_result(message)
            return
        self._on_push(message)

    def _handle_key_reply(self, data: bytes) -> None:
        try:
            key = unpack_key_reply(data)
        except WireError:
            self.dropped += 1
            return
        for future in self._key_waiters:
            if not future.done():
                future.set_result(key)
        self._key_waiters.clear()

    # -- outbound ------------------------------------------------------------------

    def use_key(self, key: bytes) -> None:
        """Seal for, and accept only, the registry with this key from now on."""
        self.registry_key = key
        self._channel = ControlChannel(self._private_key, key, local_is_registry=False)

    async def fetch_key(self) -> bytes:
        """Ask the registry for its key (first contact, or to explain a silence)."""
        loop = asyncio.get_running_loop()
        for _ in range(REQUEST_ATTEMPTS):
            future: asyncio.Future[bytes] = loop.create_future()
            self._key_waiters.append(future)
            self._send(KEY_REQUEST, self.endpoint)
            try:
                key = await asyncio.wait_for(future, REQUEST_RETRY_S)
            except TimeoutError:
                continue
            return key
        raise RegistryUnreachable(
            "unreachable",
            f"no answer from the registry at {self.endpoint[0]}:{self.endpoint[1]}",
            "check the address and that UDP to it is allowed",
        )

    def notify(self, op: str, **fields: Any) -> None:
        """Send a message that expects no reply."""
        self._seal_and_send({"op": op, **fields})

    async def call(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send a request, retrying, and return the registry's reply."""
        if self._channel is None:
            raise RuntimeError("RegistryLink.call before the registry key is known")
        request_id = next(self._ids)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._waiting[request_id] = future
        try:
            for _ in range(REQUEST_ATTEMPTS):
                self._seal_and_send({"op": op, "id": request_id, **fields})
                try:
                    reply = await asyncio.wait_for(asyncio.shield(future), REQUEST_RETRY_S)
                except TimeoutError:
                    continue
                if not reply.get("ok"):
                    raise RegistryError(
                        str(reply.get("code", "error")),
                        str(reply.get("error", "the registry refused the request")),
                        str(reply.get("hint", "")),
                    )
                return reply
        finally:
            self._waiting.pop(request_id, None)
            if not future.done():
                future.cancel()
        raise RegistryUnreachable(
            "unreachable",
            f"no answer from the registry at {self.endpoint[0]}:{self.endpoint[1]}",
            "the registry may be down; pilotif keeps trying in the background",
        )

    def _seal_and_send(self, payload: dict[str, Any]) -> None:
        assert self._channel is not None
        self._counter = next_counter(self._counter)
        self._send(self._channel.seal(payload, self._counter), self.endpoint)
