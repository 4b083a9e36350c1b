"""The asyncio side of a node: runs a `NodeCore` for the daemon.

It feeds the core the time, arms one timer for it, sends its control datagrams, keeps
the trust record and the counter lease on disk when they change, runs the port mapper
(with `port_mapping`: the gateway's mapping of our UDP port is a candidate the core
reports; `close_port_mapping` deletes it at stop), and owns the futures
of whoever waits for the registry (`join` at start, the CLI's commands), resolving them
from the core's events. Every other event goes to the daemon's `on_event`.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

from pilotif.control.counter_lease import CounterLease
from pilotif.net.hostport import format_endpoint
from pilotif.net.portmap.client import PortMapper, PortMapping
from pilotif.node.cache import NodeCache, NodeSnapshot
from pilotif.node.core import NodeCore
from pilotif.node.events import (
    Joined,
    JoinFailed,
    NodeEvent,
    PathChanged,
    PeerAdded,
    PeerRemoved,
    RelaysChanged,
    RelayTicketsTaken,
    RequestDone,
    RequestError,
    RequestFailed,
    StartedWithoutRegistry,
    TrustStateChanged,
    TrustSynced,
)
from pilotif.node.path_manager import Opener
from pilotif.node.peers import find_peer
from pilotif.node.policy import (
    ANY_PEER,
    NETWORK_TARGET,
    TAG_PREFIX,
    PolicyError,
    parse_rule,
)
from pilotif.node.policy_files import PolicyFiles
from pilotif.node.registration import UNREACHABLE
from pilotif.node.registry_link import REQUEST_ATTEMPTS, REQUEST_RETRY_S
from pilotif.node.trust import TrustFiles
from pilotif.util.errors import CodedError
from pilotif.util.logs import log_event
from pilotif.wg.events import Endpoint
from pilotif.wg.keys import InvalidKeyError, decode_key, encode_key

SYNC_TIMEOUT_S: Final = REQUEST_ATTEMPTS * REQUEST_RETRY_S * 2
"""How long `join` waits for the first trust list before it carries on without it."""
_POLICY_COMMANDS: Final = ("policy", "policy_reload", "policy_rule", "policy_default")
NODE_COMMANDS: Final = (
    "peers",
    "find",
    "trust",
    "pending",
    "handshake",
    "approve",
    "reject",
    "untrust",
    *_POLICY_COMMANDS,
)
"""The control requests the node answers (`command`)."""
JOIN_GRACE_S: Final = 1.0
"""How long `up` waits for the registry when it could start from what the node kept."""
_CACHED_CHANGES: Final = (
    Joined,
    PeerAdded,
    PeerRemoved,
    PathChanged,
    StartedWithoutRegistry,
    RelaysChanged,
    RelayTicketsTaken,
)
"""Events after which the node cache is written again (if what it holds changed)."""


class RegistryError(CodedError):
    """The registry refused a request or never answered; `code` and `hint` say more."""


class NodeRunner:
    """A NodeCore on the running event loop; see the module docstring."""

    def __init__(
        self,
        core: NodeCore,
        files: TrustFiles,
        lease: CounterLease,
        cache: NodeCache,
        policy_files: PolicyFiles,
        *,
        listen_port: int,
        send: Callable[[list[tuple[bytes, Endpoint]]], object],
        send_openers: Callable[[list[Opener]], object],
        flush: Callable[[float], None],
        on_event: Callable[[NodeEvent], None],
        port_mapping: bool = False,
    ) -> None:
        self.core = core
        self._files = files
        self._lease = lease
        self._cache = cache
        self._policy_files = policy_files
        self._listen_port = listen_port
        self._send = send
        self._send_openers = send_openers
        self._flush = flush
        self._on_event = on_event
        self.port_mapper = PortMapper(listen_port, self._port_mapped) if port_mapping else None
        self._calls: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._joined: asyncio.Future[None] | None = None
        self._synced: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._commands: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]] = {
            "peers": self._peers,
            "find": self._find,
            "trust": self._trust,
            "pending": self._trust,
            "handshake": self._handshake,
            "approve": self._respond,
            "reject": self._respond,
            "untrust": self._untrust,
        }
        """The commands that ask the registry or the peer list (the policy's are below)."""

    # -- driving the core ------------------------------------------------------------

    def after_input(self, now: float) -> None:
        """After an input to the core: the daemon's flush (which drains the core and
        sends what the core made the device produce), then the core's timer, whose
        deadline an input may move without any output."""
        if not self.core.has_output:
            self._rearm()
        self._flush(now)

    def drain(self) -> None:
        """Send, persist and route what the core produced, and re-arm its timer. The
        daemon's flush calls it whenever `core.has_output`: also after device input,
        since the device's roam filter moves paths."""
        core = self.core
        datagrams = core.datagrams_to_send()
        if datagrams:
            self._lease.cover(core.link.counter)
            self._send(datagrams)
        openers = core.take_openers()
        if openers:
            self._send_openers(openers)
        events, core.events = core.events, []
        persist = False
        if any(isinstance(event, _CACHED_CHANGES) for event in events):
            snapshot = core.snapshot(self._listen_port)
            if snapshot is not None:
                self._cache.save(snapshot)
        for event in events:
            if isinstance(event, TrustStateChanged):
                persist = True
            elif isinstance(event, (RequestDone, RequestFailed)):
                self._resolve_call(event)
            elif isinstance(event, (Joined, JoinFailed)):
                self._resolve_join(event)
                self._on_event(event)
            elif isinstance(event, TrustSynced):
                _settle(self._synced)
            else:
                if isinstance(event, RequestError) and event.op == "trust_list":
                    _settle(self._synced)
                self._on_event(event)
        if persist:
            self._files.save(core.trust)
        self._rearm()

    def receive_control(self, data: bytes, now: float, source: Endpoint | None = None) -> None:
        """A control datagram from a registry address (None: the current one)."""
        self.core.receive_control(data, now, source)

    def _rearm(self) -> None:
        deadline = self.core.get_timer()
        if deadline is None or deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = asyncio.get_running_loop().call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        now = time.monotonic()
        self.core.handle_timer(now)
        self.after_input(now)

    def network_changed(self, lan: list[str], now: float) -> None:
        """This host's addresses or default route changed: `lan` are its LAN endpoints."""
        self.core.network_changed(lan, now)
        self.after_input(now)

    def carrier_changed(self, now: float, *, over_stream: bool) -> None:
        """Control datagrams moved between UDP and a stream: register from there."""
        self.core.carrier_changed(now, over_stream=over_stream)
        self.after_input(now)

    def close(self) -> None:
        """Stop the timer and fail whoever still waits."""
        if self._timer is not None:
            self._timer.cancel()
        for future in self._calls.values():
            if not future.done():
                future.cancel()

    # -- joining ---------------------------------------------------------------------

    async def join(self, snapshot: NodeSnapshot | None = None) -> None:
        """Register (learning the registry's key first if none is pinned), then fetch
        the trust list; RegistryError if the registry refuses or never answers. With a
        `snapshot` of an earlier run, a registry that has not answered within
        JOIN_GRACE_S is not waited for: the node starts from the snapshot and the
        registration goes on in the background."""
        loop = asyncio.get_running_loop()
        self._joined = loop.create_future()
        self._synced = loop.create_future()
        now = time.monotonic()
        self.core.start(now)
        self.after_input(now)
        if self.port_mapper is not None:
            self.port_mapper.start()
        if snapshot is None:
            await self._joined
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._joined), JOIN_GRACE_S)
        except TimeoutError:
            pass
        except RegistryError as error:
            if error.code != UNREACHABLE:
                raise
        else:
            return
        self._joined.cancel()
        _settle(self._synced)
        now = time.monotonic()
        self.core.resume(snapshot, now)
        self.after_input(now)

    async def synced(self) -> None:
        """Wait (a bounded time) for the first trust list after joining."""
        if self._synced is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._synced), SYNC_TIMEOUT_S)
            except TimeoutError:
                return

    def _resolve_join(self, event: Joined | JoinFailed) -> None:
        future = self._joined
        if future is None or future.done():
            return
        if isinstance(event, JoinFailed):
            future.set_exception(RegistryError(event.code, event.error, event.hint))
        else:
            future.set_result(None)

    # -- requests --------------------------------------------------------------------

    async def call(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send a request through the core and wait for the registry's reply."""
        now = time.monotonic()
        request_id = self.core.call(op, fields, now)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._calls[request_id] = future
        self.after_input(now)
        try:
            return await future
        finally:
            self._calls.pop(request_id, None)

    def _resolve_call(self, event: RequestDone | RequestFailed) -> None:
        future = self._calls.get(event.request_id)
        if future is None or future.done():
            return
        if isinstance(event, RequestDone):
            future.set_result(event.reply)
        else:
            future.set_exception(RegistryError(event.code, event.error, event.hint))

    async def command(self, request: dict[str, Any]) -> dict[str, Any]:
        """Answer a CLI command that needs the registry, the peer list or the policy (one
        of NODE_COMMANDS)."""
        command = str(request.get("command"))
        if command in _POLICY_COMMANDS:
            return self._policy_command(command, request)
        handler = self._commands.get(command)
        if handler is None:
            return CodedError("bad_command", f"unknown command {command!r}").reply()
        try:
            return await handler(request)
        except RegistryError as error:
            return error.reply()

    async def _peers(self, request: dict[str, Any]) -> dict[str, Any]:
        core = self.core
        return {"ok": True, "peers": [core.describe_peer(p) for p in core.peers.values()]}

    async def _find(self, request: dict[str, Any]) -> dict[str, Any]:
        reply = await self.call("lookup", query=str(request.get("query", "")))
        return {"ok": True, "nodes": reply.get("nodes", [])}

    async def _trust(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, **(await self.trust_list())}

    async def _handshake(self, request: dict[str, Any]) -> dict[str, Any]:
        peer = encode_key(await self._resolve_key(str(request.get("peer", ""))))
        message = str(request.get("message", ""))
        reply = await self.call("trust_request", peer=peer, message=message)
        return {"ok": True, "state": reply.get("state")}

    async def _respond(self, request: dict[str, Any]) -> dict[str, Any]:
        peer = encode_key(await self._resolve_key(str(request.get("peer", ""))))
        approve = request.get("command") == "approve"
        reply = await self.call("trust_respond", peer=peer, approve=approve)
        return {"ok": True, "state": reply.get("state")}

    async def _untrust(self, request: dict[str, Any]) -> dict[str, Any]:
        peer = encode_key(await self._resolve_key(str(request.get("peer", ""))))
        await self.call("untrust", peer=peer)
        return {"ok": True, "state": "none"}

    # -- what the daemon asks of the node ----------------------------------------------

    def status(self) -> dict[str, Any]:
        """The node's part of `pilotif status` (with the port mapping: its protocol,
        external address and lifetime, or None)."""
        mapper = self.port_mapper
        return {**self.core.status(), "port_mapping": mapper.status() if mapper else None}

    def _port_mapped(self, mapping: PortMapping | None) -> None:
        now = time.monotonic()
        self.core.port_mapped(None if mapping is None else format_endpoint(mapping.external), now)
        self.after_input(now)

    async def close_port_mapping(self) -> None:
        """Delete the gateway's mapping of our port (bounded time), at stop."""
        if self.port_mapper is not None:
            await self.port_mapper.close()

    def path_of(self, key: bytes) -> str:
        """How the peer with `key` is reached (direct, relay, none)."""
        return self.core.paths.path_of(key)

    def registry_online(self) -> bool:
        """Whether the registry answers."""
        return self.core.registry_online

    def registry_endpoint(self) -> Endpoint:
        """The registry replica the node talks to now."""
        return self.core.link.endpoint

    def relay_endpoints(self) -> tuple[Endpoint | None, set[Endpoint]]:
        """The home relay (None: the registry relays) and every relay the node uses."""
        relays = self.core.relays
        return relays.home_endpoint, relays.endpoints()

    # -- the port policy ---------------------------------------------------------------

    def reload_policy(self) -> None:
        """SIGHUP: read the policy files again; a bad one is logged, the policy kept."""
        reply = self._policy_command("policy_reload", {})
        if reply["ok"]:
            log_event("policy_reloaded", rules=len(self.core.policy.rules))
        else:
            log_event("policy_not_reloaded", error=reply["error"])

    def _policy_command(self, command: str, request: dict[str, Any]) -> dict[str, Any]:
        """`pilotif policy ...`, `allow`, `deny`: show, reload or change the policy."""
        files = self._policy_files
        try:
            if command == "policy_reload":
                self.core.set_policy(files.load())
            elif command == "policy_rule":
                rule = parse_rule(
                    str(request.get("action")), str(request.get("target")), str(request.get("spec"))
                )
                self._check_target(rule.target)
                self.core.set_policy(files.add(rule))
            elif command == "policy_default":
                action = request.get("action")
                if action not in ("allow", "deny"):
                    raise PolicyError("the default is `allow` or `deny`")
                self.core.set_policy(files.set_default("allow" if action == "allow" else "deny"))
        except PolicyError as error:
            return {"ok": False, "error": str(error), "code": "bad_policy"}
        except RegistryError as error:
            return error.reply()
        policy = self.core.policy
        denied = {
            peer.hostname: state.policy_denied
            for peer in self.core.peers.values()
            if (state := self.core.device.peer(peer.public_key)) is not None
        }
        return {
            "ok": True,
            "policy": {"default": policy.default, "rules": [r.text() for r in policy.rules]},
            "policy_denied": denied,
        }

    def _check_target(self, target: str) -> None:
        """A rule for a peer by name needs a peer of that name (tags and `*` do not)."""
        if target in (ANY_PEER, NETWORK_TARGET) or target.startswith(TAG_PREFIX):
            return
        if find_peer(self.core.peers.values(), target) is None:
            raise RegistryError(
                "peer_not_found",
                f"no trusted peer is called {target!r}",
                "`pilotif peers` lists them; a rule for tag:NAME, network or * needs none",
            )

    async def trust_list(self) -> dict[str, list[Any]]:
        """Every page of the registry's trust list, joined."""
        joined: dict[str, list[Any]] = {"trusted": [], "incoming": [], "outgoing": []}
        offset: int | None = 0
        while offset is not None:
            reply = await self.call("trust_list", offset=offset)
            for name, items in joined.items():
                items.extend(reply.get(name, []))
            next_offset = reply.get("next_offset")
            offset = next_offset if isinstance(next_offset, int) and next_offset > offset else None
        return joined

    async def _resolve_key(self, text: str) -> bytes:
        """A peer's key from a hostname, virtual IP or key: local peers first, then
        nodes that asked us for trust, then the registry."""
        peer = find_peer(self.core.peers.values(), text)
        if peer is not None:
            return peer.public_key
        asker = self.core.requesters.get(text.strip().lower().removesuffix(".pilot"))
        if asker is not None:
            return asker
        reply = await self.call("lookup", query=text.strip().removesuffix(".pilot"))
        nodes = reply.get("nodes", [])
        keys = {node.get("public_key") for node in nodes if isinstance(node, dict)}
        if len(nodes) != 1 or len(keys) != 1:
            raise RegistryError(
                "peer_not_found" if not nodes else "ambiguous_peer",
                f"no single node matches {text!r} ({len(nodes)} found)",
                "use `pilotif find` to see who is registered",
            )
        try:
            return decode_key(str(keys.pop()))
        except InvalidKeyError:
            raise RegistryError(
                "peer_not_found", f"the registry gave no key for {text!r}"
            ) from None


def _settle(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)
