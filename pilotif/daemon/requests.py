"""The control socket's requests (`pilotif ...` asking the daemon): one handler per
request, in one table. What the node answers (trust, peers, policy) the node runner's own
table holds; the agent services' commands go to the services."""

from collections.abc import AsyncGenerator, Awaitable, Callable

from pilotif.daemon.api import Reply, Request
from pilotif.daemon.node_runner import NODE_COMMANDS
from pilotif.daemon.parts import Parts
from pilotif.daemon.status import interface_status, with_transports, with_wall_clock
from pilotif.observe import EventBus
from pilotif.services.commands import SERVICE_COMMANDS, ServiceCommands
from pilotif.util.errors import CodedError

_Handler = Callable[[Request], Awaitable[Reply]]


class ControlRequests:
    """Answers each request (`handle`) and streams the events (`events`). `stop` ends the
    daemon (`down`), `flush` sends what a node command made the cores produce, `services`
    are the agent services' commands while they run."""

    def __init__(
        self,
        parts: Parts,
        events: EventBus,
        *,
        stop: Callable[[], None],
        flush: Callable[[float], None],
        services: Callable[[], ServiceCommands | None],
        now: Callable[[], float],
    ) -> None:
        self._parts = parts
        self._events = events
        self._stop = stop
        self._flush = flush
        self._services = services
        self._now = now
        self._table: dict[str, _Handler] = {
            "status": self._status,
            "down": self._down,
            **dict.fromkeys(SERVICE_COMMANDS, self._service),
            **dict.fromkeys(NODE_COMMANDS, self._node_command),
        }

    async def handle(self, request: Request) -> Reply:
        """The reply to one request; an unknown command is refused with `bad_command`."""
        command = request.get("command")
        handler = self._table.get(command) if isinstance(command, str) else None
        if handler is None:
            return CodedError("bad_command", f"unknown command {command!r}").reply()
        return await handler(request)

    async def events(self, request: Request) -> AsyncGenerator[Reply, None]:
        """`pilotif events`: every event from now on, until the client hangs up."""
        subscription = self._events.subscribe()
        try:
            while True:
                yield await subscription.get()
        finally:
            subscription.close()

    async def _status(self, request: Request) -> Reply:
        return {"ok": True, "status": interface_status(self._parts)}

    async def _down(self, request: Request) -> Reply:
        self._stop()
        return {"ok": True}

    async def _service(self, request: Request) -> Reply:
        commands = self._services()
        if commands is None:
            return CodedError(
                "no_services",
                "the agent services are not running here",
                "they run on nodes joined to a registry; see the daemon's log",
            ).reply()
        return await commands.handle(request)

    async def _node_command(self, request: Request) -> Reply:
        node = self._parts.node
        if node is None:
            command = request.get("command")
            return CodedError(
                "no_registry", f"`{command}` needs a registry: start with `pilotif up --registry`"
            ).reply()
        reply = with_transports(with_wall_clock(await node.command(request)), self._parts)
        self._flush(self._now())
        return reply
