"""The services' storage: messages and tasks in STATE_DIR/services.db, written by a thread
of the store's own (never on the event loop), kept across restarts, read once from the
files of an older pilotif, and bounded per peer so one peer cannot push the others out."""

import asyncio
import json
import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from pilotif.daemon.overlay_servers import OverlayServers
from pilotif.node.core import NodeCore
from pilotif.observe import EventBus
from pilotif.services.inbox import LEGACY_INBOX_FILE, Inbox, InboxLimits
from pilotif.services.store import STORE_FILE, ServiceStore, Statement
from pilotif.services.task_service import SUBMIT_BURST, TaskService
from pilotif.services.tasks import (
    LEGACY_TASKS_FILE,
    MAX_OUTGOING_TASKS,
    MAX_TASKS_PER_PEER,
    Task,
    TaskError,
    TaskStore,
)
from pilotif.util.files import StateFileError
from pilotif.util.paths import StatePaths

NOW = 1_800_000_000.0


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[list[ServiceStore]]:
    """Stores a test opens, closed after it."""
    opened: list[ServiceStore] = []
    yield opened
    for store in opened:
        store.close()


def _open(stores: list[ServiceStore], root: Path) -> ServiceStore:
    store = ServiceStore(root)
    stores.append(store)
    return store


def _reopen(stores: list[ServiceStore], root: Path) -> ServiceStore:
    """What a restarted daemon finds: the old store closed, a new one opened."""
    for store in stores:
        store.close()
    return _open(stores, root)


# -- the inbox -----------------------------------------------------------------------------


def test_the_inbox_keeps_messages_across_restarts_and_only_the_newest(
    tmp_path: Path, stores: list[ServiceStore]
) -> None:
    limits = InboxLimits(max_messages=3)
    inbox = Inbox(_open(stores, tmp_path), limits)
    for number in range(5):
        inbox.add("alpha", f"m{number}", NOW + number)
    again = Inbox(_reopen(stores, tmp_path), limits)
    assert [(m.id, m.text) for m in again.messages()] == [(3, "m2"), (4, "m3"), (5, "m4")]
    assert (tmp_path / STORE_FILE).stat().st_mode & 0o777 == 0o600
    assert again.add("beta", "next", NOW + 9).id == 6
    assert [m.text for m in again.messages()] == ["m3", "m4", "next"]
    assert again.clear() == 3
    assert Inbox(_reopen(stores, tmp_path)).messages() == []
    assert Inbox(_reopen(stores, tmp_path)).add("gamma", "after", NOW).id == 7


def test_a_peer_at_its_quota_pushes_out_only_its_own_messages(
    tmp_path: Path, stores: list[ServiceStore]
) -> None:
    inbox = Inbox(_open(stores, tmp_path), InboxLimits(max_messages=6, max_messages_per_peer=3))
    inbox.add("alpha", "from alpha", NOW)
    inbox.add("beta", "from beta", NOW)
    for number in range(50):
        inbox.add("mallory", f"flood {number}", NOW + number)
    kept = [(m.sender, m.text) for m in inbox.messages()]
    assert kept[:2] == [("alpha", "from alpha"), ("beta", "from beta")]
    assert [text for sender, text in kept if sender == "mallory"] == [
        "flood 47",
        "flood 48",
        "flood 49",
    ]
    reloaded = Inbox(_reopen(stores, tmp_path), InboxLimits(max_messages=6))
    assert [(m.sender, m.text) for m in reloaded.messages()] == kept


def test_a_peer_over_its_bytes_pushes_out_only_its_own_messages(
    tmp_path: Path, stores: list[ServiceStore]
) -> None:
    limits = InboxLimits(max_bytes=3000, max_bytes_per_peer=2000)
    inbox = Inbox(_open(stores, tmp_path), limits)
    inbox.add("alpha", "a" * 900, NOW)
    for _ in range(10):
        inbox.add("mallory", "m" * 900, NOW)
    assert [m.sender for m in inbox.messages()] == ["alpha", "mallory", "mallory"]


def test_past_the_total_the_heaviest_peer_gives_way(
    tmp_path: Path, stores: list[ServiceStore]
) -> None:
    inbox = Inbox(_open(stores, tmp_path), InboxLimits(max_messages=4, max_messages_per_peer=3))
    inbox.add("alpha", "a0", NOW)
    for number in range(3):
        inbox.add("mallory", f"m{number}", NOW)
    inbox.add("alpha", "a1", NOW)  # five in all: mallory holds the most
    assert [m.text for m in inbox.messages()] == ["a0", "m1", "m2", "a1"]


def test_a_lone_surrogate_is_kept_as_a_replacement_character(
    tmp_path: Path, stores: list[ServiceStore]
) -> None:
    inbox = Inbox(_open(stores, tmp_path))
    inbox.add("alpha", json.loads('"bad \\ud800 text"'), NOW)
    inbox.add("alpha", "next", NOW)
    assert [m.text for m in Inbox(_reopen(stores, tmp_path)).messages()] == [
        "bad \ufffd text",
        "next",
    ]


def test_an_old_inbox_file_is_read_once_into_the_store(
    tmp_path: Path, stores: list[ServiceStore]
) -> None:
    lines = [
        json.dumps({"id": 4, "sender": "alpha", "received": NOW, "text": "old"}),
        '{"id": 5, "sender": "alpha", "rec',  # cut short by a crash: the rest is good
    ]
    (tmp_path / LEGACY_INBOX_FILE).write_text("\n".join(lines))
    inbox = Inbox(_open(stores, tmp_path))
    assert [(m.id, m.text) for m in inbox.messages()] == [(4, "old")]
    assert not (tmp_path / LEGACY_INBOX_FILE).exists()
    assert inbox.add("beta", "new", NOW).id == 5
    again = Inbox(_reopen(stores, tmp_path))
    assert [m.text for m in again.messages()] == ["old", "new"]


# -- tasks ---------------------------------------------------------------------------------


def _submit(service: TaskService, peer: str, now: float) -> dict[str, object]:
    return service.answer(peer, {"op": "submit", "description": f"job of {peer}"}, now)


def _end(store: TaskStore, task_id: str, now: float) -> None:
    store.move(store.get(task_id, "incoming"), "declined", now, reason="no", notified=True)


def test_a_peer_at_its_task_quota_forgets_its_own_ended_tasks_then_is_refused(
    tmp_path: Path, stores: list[ServiceStore]
) -> None:
    store = TaskStore(_open(stores, tmp_path))
    service = TaskService(store, lambda hostname: None)
    alpha = str(_submit(service, "alpha", NOW)["id"])
    own = store.add(Task("abc123", "outgoing", "mallory", "ours", "new", NOW, NOW))
    floods = []
    for number in range(MAX_TASKS_PER_PEER + 5):
        now = NOW + number  # past the submit rate's burst
        answer = _submit(service, "mallory", now)
        if answer["ok"]:
            floods.append(str(answer["id"]))
            _end(store, floods[-1], now)
    assert len(floods) == MAX_TASKS_PER_PEER + 5
    still = store.tasks(NOW + 200)
    assert {(t.id, t.peer) for t in still} >= {(alpha, "alpha"), (own.id, "mallory")}
    assert sum(t.peer == "mallory" and t.role == "incoming" for t in still) == MAX_TASKS_PER_PEER
    reopened = TaskStore(_reopen(stores, tmp_path))
    assert reopened.get(alpha, "incoming").peer == "alpha"
    assert reopened.get(own.id, "outgoing").description == "ours"


def test_a_peer_with_only_open_tasks_at_its_quota_is_refused(
    tmp_path: Path, stores: list[ServiceStore]
) -> None:
    store = TaskStore(_open(stores, tmp_path))
    service = TaskService(store, lambda hostname: None)
    answers = [_submit(service, "mallory", NOW + n) for n in range(MAX_TASKS_PER_PEER + 1)]
    assert [a["ok"] for a in answers] == [True] * MAX_TASKS_PER_PEER + [False]
    assert answers[-1]["code"] == "too_many_tasks"
    assert _submit(service, "alpha", NOW + 1000)["ok"]


def test_this_nodes_outgoing_tasks_are_never_pushed_out_by_peers(
    tmp_path: Path, stores: list[ServiceStore]
) -> None:
    store = TaskStore(_open(stores, tmp_path))
    service = TaskService(store, lambda hostname: None)
    ours = store.add(Task("ours1", "outgoing", "beta", "ours", "new", NOW - 5, NOW - 5))
    for peer in range(20):
        for number in range(MAX_TASKS_PER_PEER):
            answer = _submit(service, f"peer{peer}", NOW + number)
            if answer["ok"]:
                _end(store, str(answer["id"]), NOW + number)
    assert store.get(ours.id, "outgoing") == ours
    for number in range(MAX_OUTGOING_TASKS):
        store.add(Task(f"out{number}", "outgoing", "beta", "x", "new", NOW + number, NOW))
    with pytest.raises(TaskError):  # this node's own tasks push it out
        store.get(ours.id, "outgoing")


def test_submits_past_the_burst_are_rate_limited(
    tmp_path: Path, stores: list[ServiceStore]
) -> None:
    service = TaskService(TaskStore(_open(stores, tmp_path)), lambda hostname: None)
    answers = [_submit(service, "mallory", NOW) for _ in range(int(SUBMIT_BURST) + 3)]
    assert {str(a.get("code")) for a in answers[int(SUBMIT_BURST) :]} == {"rate_limited"}
    assert _submit(service, "alpha", NOW)["ok"]


def test_a_lone_surrogate_reason_never_makes_the_tasks_unsavable(
    tmp_path: Path, stores: list[ServiceStore]
) -> None:
    submitter = TaskStore(_open(stores, tmp_path))
    service = TaskService(submitter, lambda hostname: None)
    submitter.add(Task("t1", "outgoing", "beta", "do it", "new", NOW, NOW))
    update = json.loads('{"op": "update", "id": "t1", "state": "declined", "reason": "\\udcff"}')
    assert service.answer("beta", update, NOW + 1) == {"ok": True}
    submitter.add(Task("t2", "outgoing", "beta", "later", "new", NOW + 2, NOW + 2))
    reopened = TaskStore(_reopen(stores, tmp_path))
    declined = reopened.get("t1", "outgoing")
    assert (declined.state, declined.reason) == ("declined", "\ufffd")
    assert reopened.get("t2", "outgoing").description == "later"


def test_an_old_tasks_file_is_read_once_into_the_store(
    tmp_path: Path, stores: list[ServiceStore]
) -> None:
    old: dict[str, object] = {"id": "a1", "role": "incoming", "peer": "alpha"}
    old |= {"description": "old job"}
    old |= {"state": "new", "created": NOW, "updated": NOW, "notified": True}
    (tmp_path / LEGACY_TASKS_FILE).write_text(json.dumps([old]))
    assert TaskStore(_open(stores, tmp_path)).get("a1", "incoming").description == "old job"
    assert not (tmp_path / LEGACY_TASKS_FILE).exists()
    assert TaskStore(_reopen(stores, tmp_path)).get("a1", "incoming").peer == "alpha"


@pytest.mark.parametrize(
    "text", ["{not json", '{"a": 1}', '[{"id": "x"}]', '[{"id": 1, "role": "incoming"}]']
)
def test_a_damaged_old_tasks_file_is_one_clear_error(
    tmp_path: Path, stores: list[ServiceStore], text: str
) -> None:
    (tmp_path / LEGACY_TASKS_FILE).write_text(text)
    with pytest.raises(StateFileError) as error:
        TaskStore(_open(stores, tmp_path))
    assert "tasks.json is not a pilotif tasks file; move it away" in str(error.value)


# -- the store -----------------------------------------------------------------------------


def test_a_damaged_store_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / STORE_FILE).write_bytes(b"this is not SQLite " * 300)
    with pytest.raises(StateFileError) as error:
        ServiceStore(tmp_path)
    assert f"{tmp_path / STORE_FILE} is not a pilotif services store" in str(error.value)


def test_rows_of_the_wrong_kind_are_one_clear_error(
    tmp_path: Path, stores: list[ServiceStore]
) -> None:
    store = _open(stores, tmp_path)
    store.write("INSERT INTO messages VALUES (1, 'alpha', 'yesterday', 'x')")
    store.write("INSERT INTO tasks VALUES ('t', 'sideways', 'a', 'd', 'new', 1, 1, NULL, NULL, 1)")
    with pytest.raises(StateFileError, match="is not a pilotif services store"):
        Inbox(_reopen(stores, tmp_path))
    with pytest.raises(StateFileError, match="is not a pilotif services store"):
        TaskStore(_reopen(stores, tmp_path))


def test_the_store_is_not_opened_through_a_symbolic_link(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").write_text("")
    (tmp_path / STORE_FILE).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(StateFileError, match="symbolic link"):
        ServiceStore(tmp_path)


class _SlowStore(ServiceStore):
    """A store whose writes wait until the test lets them go."""

    def __init__(self, root: Path) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.finished = threading.Event()
        self.writer_threads: set[int] = set()
        super().__init__(root)

    def _apply(self, batch: Sequence[Statement]) -> None:
        self.writer_threads.add(threading.get_ident())
        self.started.set()
        self.release.wait(timeout=SLOW_WRITE_TIMEOUT_S)
        super()._apply(batch)
        self.finished.set()


SLOW_WRITE_TIMEOUT_S = 5.0


def test_writes_run_off_the_event_loop_while_it_keeps_serving(tmp_path: Path) -> None:
    store = _SlowStore(tmp_path)
    inbox = Inbox(store)

    async def scenario() -> list[str]:
        ran: list[str] = []
        inbox.add("alpha", "hello", NOW)
        asyncio.get_running_loop().call_soon(ran.append, "callback")
        assert await asyncio.to_thread(store.started.wait, SLOW_WRITE_TIMEOUT_S)
        await asyncio.sleep(0)
        ran.append("written" if store.finished.is_set() else "write in flight")
        return ran

    try:
        assert asyncio.run(scenario()) == ["callback", "write in flight"]
        assert threading.get_ident() not in store.writer_threads
    finally:
        store.release.set()
        store.close()
    assert [m.text for m in Inbox(ServiceStore(tmp_path)).messages()] == ["hello"]


def test_a_failed_write_is_logged_once_and_the_store_carries_on(
    tmp_path: Path, stores: list[ServiceStore], caplog: pytest.LogCaptureFixture
) -> None:
    store = _open(stores, tmp_path)
    with caplog.at_level(logging.WARNING, logger="pilotif"):
        for _ in range(3):
            store.write("INSERT INTO nowhere VALUES (1)")
            store.flush()
        store.write("INSERT INTO messages VALUES (?, 'alpha', 1.0, 'x')", (2**70,))
        store.write("INSERT INTO messages VALUES (1, 'alpha', 1.0, 'x')")
        flushed = threading.Thread(target=store.flush, daemon=True)
        flushed.start()
        flushed.join(timeout=SLOW_WRITE_TIMEOUT_S)
    assert not flushed.is_alive(), "the writer thread died"
    assert [r.msg for r in caplog.records] == ["services_store_write_failed"]
    assert store.counters["write_failed"] == 4
    assert [m.text for m in Inbox(_reopen(stores, tmp_path)).messages()] == ["x"]


def test_a_damaged_store_stops_the_overlay_servers_before_dns_is_touched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / STORE_FILE).write_bytes(b"this is not SQLite " * 300)
    servers = OverlayServers(StatePaths(tmp_path), "pilot-test", EventBus())
    started: list[str] = []

    async def start_dns(*args: object) -> None:
        started.append("dns")  # would point the host's resolver at a node that stops

    monkeypatch.setattr(servers, "_start_dns", start_dns)
    node = cast(NodeCore, SimpleNamespace(peers_version=0, peers={}))
    with pytest.raises(StateFileError, match="is not a pilotif services store"):
        asyncio.run(servers.start(node, []))
    assert started == []


def test_a_bad_write_loses_only_itself_not_the_writes_queued_with_it(tmp_path: Path) -> None:
    store = _SlowStore(tmp_path)
    try:
        store.write("INSERT INTO messages VALUES (1, 'alpha', 1.0, 'first')")
        assert store.started.wait(SLOW_WRITE_TIMEOUT_S)  # the next two queue up together
        store.write("INSERT INTO messages VALUES (?, 'alpha', 1.0, 'bad')", (2**70,))
        store.write("INSERT INTO messages VALUES (3, 'alpha', 1.0, 'third')")
        store.release.set()
        store.flush()
    finally:
        store.release.set()
        store.close()
    assert [m.text for m in Inbox(ServiceStore(tmp_path)).messages()] == ["first", "third"]
    assert store.counters["write_failed"] == 1


class _CommitFailsOnce:
    """A connection whose first COMMIT fails and leaves its transaction open (after a
    full disk, SQLite may or may not have rolled back)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self.failed = False

    def execute(self, sql: str, parameters: Sequence[object] = ()) -> sqlite3.Cursor:
        if sql == "COMMIT" and not self.failed:
            self.failed = True
            raise sqlite3.OperationalError("database or disk is full")
        return self._db.execute(sql, parameters)

    @property
    def in_transaction(self) -> bool:
        return self._db.in_transaction

    def close(self) -> None:
        self._db.close()


class _FullOnceStore(ServiceStore):
    def _open(self) -> sqlite3.Connection:
        return cast(sqlite3.Connection, _CommitFailsOnce(super()._open()))


def test_a_commit_that_fails_leaves_no_transaction_open_and_later_writes_land(
    tmp_path: Path, stores: list[ServiceStore]
) -> None:
    store = _FullOnceStore(tmp_path)
    stores.append(store)
    store.write("INSERT INTO messages VALUES (1, 'alpha', 1.0, 'lost to the full disk')")
    store.flush()
    store.write("INSERT INTO messages VALUES (2, 'alpha', 1.0, 'after the disk has room')")
    store.flush()
    assert store.counters["write_failed"] == 1
    assert [m.text for m in Inbox(_reopen(stores, tmp_path)).messages()] == [
        "after the disk has room"
    ]
