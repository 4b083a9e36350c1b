"""Tasks: one agent asks another to do something and gets the result back.

The submitter's node sends `submit` to the executor's TASKS_PORT; both keep the task in
the services' store (pilotif.services.store: written off the event loop), so each side
has its history across restarts, the submitter as `outgoing`, the executor as `incoming`.
The executor accepts, declines (with a reason) or answers with a result; each change is
sent back to the submitter (`update`), and kept to be sent again while the submitter
cannot be reached. States:

    new -> accepted -> done
    new -> declined
    new, accepted -> expired   (TASK_TTL_S after submission without an end)

Quotas keep one peer from pushing the others out: a peer has at most MAX_TASKS_PER_PEER
incoming tasks here, and all peers MAX_INCOMING_TASKS; past either, a submit makes room
by forgetting an ended task (its submitter's own oldest, or else the oldest of the peer
that has the most), or is refused (`too_many_tasks`) when there is none to forget. This
node's own outgoing tasks are counted apart (MAX_OUTGOING_TASKS): no peer pushes them out.

`TaskStore` is the state, kept in memory and in the store; the daemon's service and
commands drive it. A `tasks.json` of an older pilotif is read once into the store at
start, then removed.
"""

import json
import re
import secrets
from collections import Counter
from dataclasses import astuple, dataclass, fields, replace
from typing import Any, Final, Literal

from pilotif.services.store import ServiceStore, storable
from pilotif.util.errors import CodedError
from pilotif.util.files import StateFileError, read_state_file

LEGACY_TASKS_FILE: Final = "tasks.json"
TASK_TTL_S: Final = 24 * 3600.0
MAX_INCOMING_TASKS: Final = 1000
MAX_TASKS_PER_PEER: Final = 100
MAX_OUTGOING_TASKS: Final = 1000
MAX_DESCRIPTION_BYTES: Final = 16 * 1024
MAX_RESULT_BYTES: Final = 48 * 1024
MAX_REASON_BYTES: Final = 4 * 1024
Role = Literal["incoming", "outgoing"]
ROLES: Final = frozenset({"incoming", "outgoing"})
FINAL_STATES: Final = frozenset({"declined", "done", "expired"})
NEXT_STATES: Final = {
    "accepted": frozenset({"new"}),
    "declined": frozenset({"new"}),
    "done": frozenset({"new", "accepted"}),
}
"""A state -> the states it may follow (an executor may answer without accepting first)."""
STATES: Final = frozenset({"new", *NEXT_STATES, *FINAL_STATES})
TASK_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""What a task id looks like (ours are 12 hex digits; an executor's must fit this)."""


class TaskError(CodedError):
    """A task operation that cannot be done; `code` goes to the CLI."""


@dataclass(frozen=True)
class Task:
    """One task as one side keeps it."""

    id: str
    role: Role
    peer: str
    """The other side's hostname: the executor of an outgoing task, the submitter of an
    incoming one."""
    description: str
    state: str
    created: float
    updated: float
    result: str | None = None
    reason: str | None = None
    notified: bool = True
    """Whether the submitter has this state (an incoming task's change not sent yet)."""


def new_task_id() -> str:
    return secrets.token_hex(6)


class TaskStore:
    """Tasks of one node; see the module docstring."""

    def __init__(self, store: ServiceStore) -> None:
        self._store = store
        self._tasks: dict[str, Task] = {}
        self._migrate_legacy()
        for row in store.rows(f"SELECT {_COLUMNS} FROM tasks ORDER BY created"):
            task = _task(dict(zip(_FIELDS, row, strict=True)))
            if task is None:
                raise StateFileError(store.damaged())
            self._tasks[task.id] = task

    def _migrate_legacy(self) -> None:
        legacy = self._store.root / LEGACY_TASKS_FILE
        text = read_state_file(legacy)
        if text is None:
            return
        problem = (
            f"{legacy} is not a pilotif tasks file; move it away and run `pilotif up` "
            "again (the tasks it held are then forgotten)"
        )
        try:
            items = json.loads(text)
        except ValueError:
            raise StateFileError(problem) from None
        if not isinstance(items, list):
            raise StateFileError(problem)
        tasks = [_task(item) if isinstance(item, dict) else None for item in items]
        statements = []
        for task in tasks:
            if task is None:
                raise StateFileError(problem)
            statements.append((f"INSERT OR IGNORE {_INSERT}", astuple(task)))
        self._store.write_now(statements)
        legacy.unlink()

    def tasks(self, now: float) -> list[Task]:
        """Every task, oldest first, with the ones past TASK_TTL_S marked expired."""
        self._expire(now)
        return sorted(self._tasks.values(), key=lambda t: t.created)

    def get(self, task_id: str, role: Role) -> Task:
        task = self._tasks.get(task_id)
        if task is None or task.role != role:
            raise TaskError("unknown_task", f"no {role} task has the id {task_id!r}")
        return task

    def add(self, task: Task) -> Task:
        """Keep a new task, making room under the quotas (TaskError `too_many_tasks` when
        an incoming one finds none)."""
        if len(task.description.encode("utf-8", "surrogatepass")) > MAX_DESCRIPTION_BYTES:
            raise TaskError("too_large", f"a description is at most {MAX_DESCRIPTION_BYTES} bytes")
        if not TASK_ID.fullmatch(task.id):
            raise TaskError("bad_request", "a task id is 1-64 letters, digits, '-' or '_'")
        if task.id in self._tasks:
            raise TaskError("bad_request", "that task id is taken")
        self._expire(task.created)
        if task.role == "incoming":
            self._room_for_incoming(task.peer)
        else:
            self._room_for_outgoing()
        return self._save(replace(task, description=storable(task.description)))

    def move(
        self,
        task: Task,
        state: str,
        now: float,
        *,
        result: str | None = None,
        reason: str | None = None,
        notified: bool,
    ) -> Task:
        """Take a task to `state` if it may go there from where it is."""
        allowed = NEXT_STATES.get(state)
        if allowed is None or task.state not in allowed:
            raise TaskError(
                "bad_state", f"task {task.id} is {task.state}: it cannot become {state}"
            )
        for name, text, limit in (
            ("result", result, MAX_RESULT_BYTES),
            ("reason", reason, MAX_REASON_BYTES),
        ):
            if text is not None and len(text.encode("utf-8", "surrogatepass")) > limit:
                raise TaskError("too_large", f"a {name} is at most {limit} bytes")
        moved = replace(
            task,
            state=state,
            updated=now,
            result=None if result is None else storable(result),
            reason=None if reason is None else storable(reason),
            notified=notified,
        )
        return self._save(moved)

    def mark_notified(self, task: Task) -> None:
        self._save(replace(task, notified=True))

    def unnotified(self) -> list[Task]:
        """Incoming tasks whose last change the submitter does not have yet."""
        return [t for t in self._tasks.values() if t.role == "incoming" and not t.notified]

    def _expire(self, now: float) -> None:
        for task in list(self._tasks.values()):
            if task.state not in FINAL_STATES and now - task.created > TASK_TTL_S:
                self._save(replace(task, state="expired", updated=now))

    def _room_for_incoming(self, peer: str) -> None:
        """Forget an ended incoming task if `peer`, or all peers, are at their quota."""
        incoming = [t for t in self._tasks.values() if t.role == "incoming"]
        if sum(t.peer == peer for t in incoming) >= MAX_TASKS_PER_PEER:
            if not self._forget_oldest_ended([t for t in incoming if t.peer == peer]):
                raise TaskError(
                    "too_many_tasks",
                    f"you have {MAX_TASKS_PER_PEER} open tasks here; wait for some to end",
                )
        elif len(incoming) >= MAX_INCOMING_TASKS:
            held = Counter(t.peer for t in incoming)
            for other, count in held.most_common():
                if count < held[peer]:
                    break  # a peer that holds less is not pushed out
                if self._forget_oldest_ended([t for t in incoming if t.peer == other]):
                    return
            raise TaskError(
                "too_many_tasks", f"this node has {MAX_INCOMING_TASKS} open tasks; try later"
            )

    def _room_for_outgoing(self) -> None:
        """Forget this node's oldest outgoing task (an ended one first) at its quota."""
        outgoing = [t for t in self._tasks.values() if t.role == "outgoing"]
        if len(outgoing) >= MAX_OUTGOING_TASKS and not self._forget_oldest_ended(outgoing):
            self._forget(min(outgoing, key=lambda t: t.created))

    def _forget_oldest_ended(self, tasks: list[Task]) -> bool:
        """Forget the oldest ended task of `tasks`; whether there was one."""
        ended = [t for t in tasks if t.state in FINAL_STATES]
        if not ended:
            return False
        self._forget(min(ended, key=lambda t: t.created))
        return True

    def _forget(self, task: Task) -> None:
        del self._tasks[task.id]
        self._store.write("DELETE FROM tasks WHERE id = ?", (task.id,))

    def _save(self, task: Task) -> Task:
        self._tasks[task.id] = task
        self._store.write(f"INSERT OR REPLACE {_INSERT}", astuple(task))
        return task


_FIELDS: Final = tuple(f.name for f in fields(Task))
_COLUMNS: Final = ", ".join(_FIELDS)
_INSERT: Final = f"INTO tasks ({_COLUMNS}) VALUES ({', '.join('?' for _ in _FIELDS)})"


def _task(item: dict[str, Any]) -> Task | None:
    """The task a row or an old file's object holds, None if it holds none."""
    if set(item) - set(_FIELDS):
        return None
    try:
        task = Task(**item)
    except TypeError:
        return None
    texts = (task.id, task.peer, task.description, task.state)
    good = (
        all(isinstance(text, str) for text in texts)
        and task.role in ROLES
        and task.state in STATES
        and all(isinstance(t, int | float) for t in (task.created, task.updated))
        and all(v is None or isinstance(v, str) for v in (task.result, task.reason))
        and isinstance(task.notified, int)
    )
    if not good:
        return None
    return replace(
        task,
        description=storable(task.description),
        result=None if task.result is None else storable(task.result),
        reason=None if task.reason is None else storable(task.reason),
        notified=bool(task.notified),
        created=float(task.created),
        updated=float(task.updated),
    )
