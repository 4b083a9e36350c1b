"""The CLI's (and the MCP server's) commands for the agent services, answered by the
daemon: `send` a message to a peer, read or clear the `inbox`, list the files `received`."""

import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, Final

from pilotif.services import client
from pilotif.services.client import ServiceError
from pilotif.services.server import MESSAGES_PORT, AgentServices
from pilotif.services.task_service import optional_text
from pilotif.services.tasks import TaskError

SERVICE_COMMANDS: Final = frozenset(
    {"send", "inbox", "received", "task_submit", "task_list", "task_decide"}
)
TrustedAddress = Callable[[str], tuple[str, str] | None]
"""(hostname, overlay IPv4) of the trusted peer named by a hostname, address or key."""


class ServiceCommands:
    """Answers SERVICE_COMMANDS; see the module docstring."""

    def __init__(self, services: AgentServices, trusted: TrustedAddress) -> None:
        self._services = services
        self._trusted = trusted

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        command = request.get("command")
        try:
            if command == "send":
                return await self._send(str(request.get("peer", "")), request.get("text"))
            if command == "task_submit":
                return await self._task_submit(
                    str(request.get("peer", "")), request.get("description")
                )
            if command == "task_list":
                tasks = [asdict(t) for t in self._services.tasks.store.tasks(time.time())]
                return {"ok": True, "tasks": tasks}
            if command == "task_decide":
                task = await self._services.tasks.decide(
                    str(request.get("id", "")),
                    str(request.get("state", "")),
                    result=optional_text(request.get("result")),
                    reason=optional_text(request.get("reason")),
                )
                return {"ok": True, "task": asdict(task)}
            if command == "received":
                files = [asdict(f) for f in self._services.files.files()]
                return {"ok": True, "directory": str(self._services.files.root), "files": files}
            if request.get("clear"):
                return {"ok": True, "cleared": self._services.inbox.clear()}
            messages = [asdict(m) for m in self._services.inbox.messages()]
            return {"ok": True, "messages": messages}
        except ServiceError as error:
            return error.reply()
        except TaskError as error:
            return {"ok": False, "error": str(error), "code": error.code, "hint": _TASK_HINT}

    async def _task_submit(self, peer: str, description: object) -> dict[str, Any]:
        if not isinstance(description, str) or not description:
            raise ServiceError("bad_input", "a task needs a description")
        hostname, address = self._trusted_or_refused(peer)
        task = await self._services.tasks.submit(hostname, address, description)
        return {"ok": True, "task": asdict(task)}

    def _trusted_or_refused(self, peer: str) -> tuple[str, str]:
        found = self._trusted(peer)
        if found is None:
            raise ServiceError(
                "not_trusted",
                f"{peer!r} is not a trusted peer",
                "`pilotif peers` lists them; `pilotif handshake PEER` asks for trust",
            )
        return found

    async def _send(self, peer: str, text: object) -> dict[str, Any]:
        if not isinstance(text, str) or not text:
            raise ServiceError("bad_input", "a message needs some text")
        hostname, address = self._trusted_or_refused(peer)
        answer = await client.request(
            address, MESSAGES_PORT, {"op": "message", "text": text}, self._services.net
        )
        return {"ok": True, "peer": hostname, "id": answer.get("id")}


_TASK_HINT = "`pilotif task list` shows the tasks and their states"
