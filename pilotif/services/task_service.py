"""Tasks between agents, both ends (pilotif.services.tasks has the states and the file).

On TASKS_PORT (1003) a node answers its peers:

- `{"op": "submit", "description": TEXT}` -> `{"ok": true, "id": ID}`: a new incoming task;
- `{"op": "update", "id": ID, "state": S, "result"?, "reason"?}`: the executor of one of
  our outgoing tasks tells us where it stands (accepted, declined, done);
- `{"op": "get", "id": ID}` -> `{"ok": true, "task": {...}}`: the submitter of one of our
  incoming tasks asks.

A peer only ever sees and changes the tasks it is the other side of, and submits at most
SUBMITS_PER_S (burst SUBMIT_BURST); pilotif.services.tasks has the quotas. The commands
(`pilotif task ...`) submit, accept, decline and answer; a change the submitter could not
be told of is sent again every NOTIFY_RETRY_S.
"""

import asyncio
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, Final

from pilotif.services import client
from pilotif.services.client import ServiceError
from pilotif.services.limits import TokenBuckets
from pilotif.services.overlay_net import KERNEL, OverlayNet
from pilotif.services.tasks import Task, TaskError, TaskStore, new_task_id
from pilotif.services.wire import error_answer

TASKS_PORT: Final = 1003
NOTIFY_RETRY_S: Final = 10.0
SUBMITS_PER_S: Final = 1.0
SUBMIT_BURST: Final = 20.0
AddressOf = Callable[[str], str | None]
"""The virtual IPv4 of a trusted peer by hostname, or None."""


class TaskService:
    """See the module docstring."""

    def __init__(self, store: TaskStore, address_of: AddressOf, net: OverlayNet = KERNEL) -> None:
        self.store = store
        self._net = net
        self._address_of = address_of
        self._retry: asyncio.Task[None] | None = None
        self._submit_limit = TokenBuckets(SUBMITS_PER_S, SUBMIT_BURST)

    # -- what peers ask ------------------------------------------------------------------

    def answer(self, peer: str, request: dict[str, Any], now: float) -> dict[str, Any]:
        try:
            op = request.get("op")
            if op == "submit":
                description = request.get("description")
                if not isinstance(description, str) or not description:
                    raise TaskError("bad_request", 'a submit carries a "description"')
                if not self._submit_limit.allow(peer, now):
                    raise TaskError("rate_limited", f"at most {SUBMITS_PER_S:g} tasks a second")
                task = Task(new_task_id(), "incoming", peer, description, "new", now, now)
                return {"ok": True, "id": self.store.add(task).id}
            task_id = str(request.get("id", ""))
            if op == "get":
                task = self.store.get(task_id, "incoming")
                if task.peer != peer:
                    raise TaskError("unknown_task", f"no task {task_id!r} of yours here")
                return {"ok": True, "task": asdict(task)}
            if op == "update":
                task = self.store.get(task_id, "outgoing")
                if task.peer != peer:
                    raise TaskError("unknown_task", f"no task {task_id!r} of yours here")
                if task.state != request.get("state"):
                    self.store.move(
                        task,
                        str(request.get("state")),
                        now,
                        result=optional_text(request.get("result")),
                        reason=optional_text(request.get("reason")),
                        notified=True,
                    )
                return {"ok": True}
            raise TaskError("bad_request", 'the ops here are "submit", "update" and "get"')
        except TaskError as error:
            return error_answer(error.code, str(error))

    # -- what this node's user does ------------------------------------------------------

    async def submit(self, peer: str, address: str, description: str) -> Task:
        answer = await client.request(
            address, TASKS_PORT, {"op": "submit", "description": description}, self._net
        )
        now = time.time()
        task = Task(str(answer.get("id")), "outgoing", peer, description, "new", now, now)
        return self.store.add(task)

    async def decide(
        self, task_id: str, state: str, *, result: str | None = None, reason: str | None = None
    ) -> Task:
        """Accept, decline or answer an incoming task, and tell its submitter."""
        task = self.store.get(task_id, "incoming")
        moved = self.store.move(
            task, state, time.time(), result=result, reason=reason, notified=False
        )
        return await self._notify(moved)

    async def _notify(self, task: Task) -> Task:
        address = self._address_of(task.peer)
        if address is None:
            return task
        update = {"op": "update", "id": task.id, "state": task.state}
        update |= {k: v for k, v in (("result", task.result), ("reason", task.reason)) if v}
        try:
            await client.request(address, TASKS_PORT, update, self._net)
        except ServiceError:
            self._retry_later()
            return task
        self.store.mark_notified(task)
        return self.store.get(task.id, "incoming")

    def _retry_later(self) -> None:
        if self._retry is None or self._retry.done():
            self._retry = asyncio.ensure_future(self._retry_unnotified())

    async def _retry_unnotified(self) -> None:
        while self.store.unnotified():
            await asyncio.sleep(NOTIFY_RETRY_S)
            for task in self.store.unnotified():
                await self._notify(task)

    def start(self) -> None:
        """Send again what could not be sent before this daemon stopped."""
        if self.store.unnotified():
            self._retry_later()

    def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()


def optional_text(value: object) -> str | None:
    """A text field of a request, or None when it holds no text."""
    return value if isinstance(value, str) else None
