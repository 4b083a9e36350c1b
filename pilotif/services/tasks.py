"""Tasks: one agent asks another to do something and gets the result back.

The submitter's node sends `submit` to the executor's TASKS_PORT; both keep the task in
`STATE_DIR/tasks.json` (so each side has its history across restarts), the submitter as
`outgoing`, the executor as `incoming`. The executor accepts, declines (with a reason) or
answers with a result; each change is sent back to the submitter (`update`), and kept to
be sent again while the submitter cannot be reached. States:

    new -> accepted -> done
    new -> declined
    new, accepted -> expired   (TASK_TTL_S after submission without an end)

`TaskStore` is the state and its file; the daemon's service and commands drive it.
"""

import json
import secrets
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Final, Literal

from pilotif.identity import read_state_file, write_private_file

TASKS_FILE: Final = "tasks.json"
TASK_TTL_S: Final = 24 * 3600.0
MAX_TASKS: Final = 1000
MAX_DESCRIPTION_BYTES: Final = 16 * 1024
MAX_RESULT_BYTES: Final = 48 * 1024
Role = Literal["incoming", "outgoing"]
FINAL_STATES: Final = frozenset({"declined", "done", "expired"})
NEXT_STATES: Final = {
    "accepted": frozenset({"new"}),
    "declined": frozenset({"new"}),
    "done": frozenset({"new", "accepted"}),
}
"""A state -> the states it may follow (an executor may answer without accepting first)."""


class TaskError(Exception):
    """A task operation that cannot be done; `code` goes to the CLI."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


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

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / TASKS_FILE
        self._tasks: dict[str, Task] = {}
        for item in json.loads(read_state_file(self.path) or "[]"):
            task = Task(**item)
            self._tasks[task.id] = task

    def tasks(self, now: float) -> list[Task]:
        """Every task, oldest first, with the ones past TASK_TTL_S marked expired."""
        expired = [
            t
            for t in self._tasks.values()
            if t.state not in FINAL_STATES and now - t.created > TASK_TTL_S
        ]
        for task in expired:
            self._tasks[task.id] = replace(task, state="expired", updated=now)
        if expired:
            self._save()
        return sorted(self._tasks.values(), key=lambda t: t.created)

    def get(self, task_id: str, role: Role) -> Task:
        task = self._tasks.get(task_id)
        if task is None or task.role != role:
            raise TaskError("unknown_task", f"no {role} task has the id {task_id!r}")
        return task

    def add(self, task: Task) -> Task:
        if len(task.description.encode()) > MAX_DESCRIPTION_BYTES:
            raise TaskError("too_large", f"a description is at most {MAX_DESCRIPTION_BYTES} bytes")
        if task.id in self._tasks:
            raise TaskError("bad_request", "that task id is taken")
        self._tasks[task.id] = task
        if len(self._tasks) > MAX_TASKS:
            oldest = min(self._tasks.values(), key=lambda t: t.created)
            del self._tasks[oldest.id]
        self._save()
        return task

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
        if result is not None and len(result.encode()) > MAX_RESULT_BYTES:
            raise TaskError("too_large", f"a result is at most {MAX_RESULT_BYTES} bytes")
        moved = replace(
            task, state=state, updated=now, result=result, reason=reason, notified=notified
        )
        self._tasks[task.id] = moved
        self._save()
        return moved

    def mark_notified(self, task: Task) -> None:
        self._tasks[task.id] = replace(task, notified=True)
        self._save()

    def unnotified(self) -> list[Task]:
        """Incoming tasks whose last change the submitter does not have yet."""
        return [t for t in self._tasks.values() if t.role == "incoming" and not t.notified]

    def _save(self) -> None:
        document = [asdict(t) for t in self._tasks.values()]
        write_private_file(self.path, json.dumps(document, ensure_ascii=False, indent=1) + "\n")
