"""The agent services' sans-IO parts: the line framing, the inbox on disk, what the
messages service answers (sizes, garbage, limits), and received files (names that are
never paths, nothing kept unless whole). The listeners run in the lab tests."""

import asyncio
import hashlib
import json
from pathlib import Path

import pytest

from pilotif.services.broker import Broker, TopicError, check_topic, matches
from pilotif.services.files import (
    MAX_FILE_BYTES,
    PARTIAL_DIR,
    RECEIVED_DIR,
    FileRefused,
    ReceivedFiles,
    safe_name,
)
from pilotif.services.inbox import Inbox, Message
from pilotif.services.server import MAX_TEXT_BYTES, MESSAGE_BURST, AgentServices
from pilotif.services.store import ServiceStore
from pilotif.services.task_service import TaskService
from pilotif.services.tasks import TASK_TTL_S, Task, TaskError, TaskStore
from pilotif.services.wire import WireError, decode, encode

NOW = 1_800_000_000.0


def test_a_message_is_one_line_of_json_and_reads_back() -> None:
    line = encode({"op": "message", "text": "héllo\nworld"})
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode(line) == {"op": "message", "text": "héllo\nworld"}


@pytest.mark.parametrize("line", [b"garbage\n", b"[1, 2]\n", b"\xff\xfe\n", b"\n", b'"text"\n'])
def test_a_line_that_is_not_a_json_object_is_a_bad_request(line: bytes) -> None:
    with pytest.raises(WireError) as error:
        decode(line)
    assert error.value.code == "bad_request"


def _services(tmp_path: Path) -> tuple[AgentServices, list[Message]]:
    received: list[Message] = []
    peers = {"100.64.0.1": "alpha"}
    store = ServiceStore(tmp_path)
    tasks = TaskService(TaskStore(store), lambda hostname: None)
    services = AgentServices(
        Inbox(store), ReceivedFiles(tmp_path), tasks, peers.get, received.append, print
    )
    return services, received


def test_a_message_goes_to_the_inbox_with_its_sender(tmp_path: Path) -> None:
    services, received = _services(tmp_path)
    answer = services._message("alpha", {"op": "message", "text": "hi"})
    assert answer == {"ok": True, "id": 1}
    assert [(m.sender, m.text) for m in received] == [("alpha", "hi")]
    assert [m.text for m in services.inbox.messages()] == ["hi"]


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        ({"op": "message"}, "bad_request"),
        ({"op": "other", "text": "x"}, "bad_request"),
        ({"op": "message", "text": 5}, "bad_request"),
        ({"op": "message", "text": "x" * (MAX_TEXT_BYTES + 1)}, "too_large"),
    ],
)
def test_bad_requests_are_refused_counted_and_keep_nothing(
    tmp_path: Path, request_: dict[str, object], code: str
) -> None:
    services, received = _services(tmp_path)
    answer = services._message("alpha", request_)
    assert (answer["ok"], answer["code"]) == (False, code)
    assert services.counters[code] == 1
    assert received == [] and services.inbox.messages() == []


def test_a_peer_sending_too_fast_is_refused_past_its_burst(tmp_path: Path) -> None:
    services, _ = _services(tmp_path)
    answers = [
        services._message("alpha", {"op": "message", "text": str(n)})
        for n in range(int(MESSAGE_BURST) + 5)
    ]
    refused = [a for a in answers if not a["ok"]]
    assert len(refused) >= 4 and {a["code"] for a in refused} == {"rate_limited"}
    assert len(services.inbox.messages()) <= MESSAGE_BURST + 1
    assert services.inbox.messages()[0].sender == "alpha"


# -- files ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        ("report.pdf", "report.pdf"),
        ("../../etc/passwd", "passwd"),
        ("/root/.ssh/authorized_keys", "authorized_keys"),
        ("..\\\\windows\\\\evil.exe", "evil.exe"),
        (".hidden", "hidden"),
        ("spaces and ünïcode.txt", "spaces_and_n_code.txt"),
        ("", "file"),
        ("..", "file"),
    ],
)
def test_a_senders_file_name_is_never_a_path_here(name: str, safe: str) -> None:
    assert safe_name(name) == safe


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_whole_file_is_kept_and_listed_across_restarts(tmp_path: Path) -> None:
    files = ReceivedFiles(tmp_path)
    data = b"x" * 1000
    incoming = files.begin("alpha", "../notes.txt", len(data), _sha(data))
    incoming.write(data[:600])
    incoming.write(data[600:])
    kept = incoming.finish(NOW)
    assert (kept.name, kept.sender, kept.size) == ("1-notes.txt", "alpha", 1000)
    assert (tmp_path / RECEIVED_DIR / "1-notes.txt").read_bytes() == data
    assert ReceivedFiles(tmp_path).files() == [kept]
    assert list((tmp_path / RECEIVED_DIR / PARTIAL_DIR).iterdir()) == []


@pytest.mark.parametrize("fault", ["truncated", "bad_hash"])
def test_a_file_that_is_not_whole_leaves_nothing(tmp_path: Path, fault: str) -> None:
    files = ReceivedFiles(tmp_path)
    data = b"y" * 100
    incoming = files.begin("alpha", "f", len(data), _sha(data))
    incoming.write(data[:50] if fault == "truncated" else b"z" * 100)
    with pytest.raises(FileRefused) as refused:
        incoming.finish(NOW)
    assert refused.value.code == fault
    assert files.files() == []
    assert sorted(p.name for p in (tmp_path / RECEIVED_DIR).rglob("*") if p.is_file()) == []


def test_a_partial_file_left_by_a_stopped_daemon_is_removed(tmp_path: Path) -> None:
    files = ReceivedFiles(tmp_path)
    files.begin("alpha", "f", 10, _sha(b"0123456789")).write(b"01234")
    ReceivedFiles(tmp_path)
    assert list((tmp_path / RECEIVED_DIR / PARTIAL_DIR).iterdir()) == []


@pytest.mark.parametrize(
    ("name", "size", "sha256", "code"),
    [
        (None, 10, "0" * 64, "bad_request"),
        ("f", "10", "0" * 64, "bad_request"),
        ("f", -1, "0" * 64, "bad_request"),
        ("f", 10, "not hex", "bad_request"),
        ("f", MAX_FILE_BYTES + 1, "0" * 64, "too_large"),
    ],
)
def test_a_file_is_refused_before_its_bytes(
    tmp_path: Path, name: object, size: object, sha256: object, code: str
) -> None:
    with pytest.raises(FileRefused) as refused:
        ReceivedFiles(tmp_path).begin("alpha", name, size, sha256)
    assert refused.value.code == code


# -- publish/subscribe ---------------------------------------------------------------------


@pytest.mark.parametrize("topic", ["jobs", "jobs/build-7", "a.b_c/D-9", "x" * 128])
def test_topics_of_letters_digits_and_dot_slash_dash_are_good(topic: str) -> None:
    assert check_topic(topic) == topic


@pytest.mark.parametrize("topic", ["", "x" * 129, "jobs/*", "white space", "jobs;rm", "ünï", 5])
def test_other_topics_are_refused(topic: object) -> None:
    with pytest.raises(TopicError):
        check_topic(topic)


@pytest.mark.parametrize(
    ("pattern", "topic", "hit"),
    [
        ("jobs/*", "jobs/7", True),
        ("jobs/*", "jobs/7/log", True),
        ("jobs/*", "job/7", False),
        ("*", "anything", True),
        ("jobs", "jobs", True),
        ("jobs", "jobs/1", False),
    ],
)
def test_a_star_matches_any_run_of_characters(pattern: str, topic: str, hit: bool) -> None:
    assert matches(check_topic(pattern, pattern=True), topic) is hit


def test_a_subscriber_gets_the_events_published_after_it_subscribed_only() -> None:
    async def scenario() -> list[dict[str, object]]:
        broker = Broker()
        assert broker.publish("jobs/0", "before", "alpha") == 0
        subscription = broker.subscribe("jobs/*", "beta")
        assert broker.publish("jobs/1", {"n": 1}, "alpha") == 1
        assert broker.publish("other", "x", "alpha") == 0
        assert broker.publish("jobs/2", "two", "alpha") == 1
        events = [json.loads(await subscription.get()) for _ in range(2)]
        broker.unsubscribe(subscription)
        assert broker.publish("jobs/3", "after", "alpha") == 0
        assert subscription.queued_bytes == 0
        return events

    first, second = asyncio.run(scenario())
    assert (first["topic"], first["data"], first["sender"]) == ("jobs/1", {"n": 1}, "alpha")
    assert second["topic"] == "jobs/2"  # the broker queues matching events only


# -- tasks ---------------------------------------------------------------------------------


def test_a_task_goes_from_submitted_to_done_and_each_side_sees_only_its_own(
    tmp_path: Path,
) -> None:
    disk = ServiceStore(tmp_path / "beta")
    executor = TaskService(TaskStore(disk), lambda hostname: None)
    (tmp_path / "beta").mkdir(exist_ok=True)
    submitted = executor.answer("alpha", {"op": "submit", "description": "build it"}, NOW)
    task_id = submitted["id"]
    assert executor.answer("gamma", {"op": "get", "id": task_id}, NOW)["code"] == "unknown_task"
    seen = executor.answer("alpha", {"op": "get", "id": task_id}, NOW)["task"]
    assert (seen["state"], seen["role"], seen["peer"]) == ("new", "incoming", "alpha")
    store = executor.store
    task = store.get(task_id, "incoming")
    done = store.move(task, "done", NOW + 1, result="built", notified=False)
    assert store.unnotified() == [done]
    with pytest.raises(TaskError) as again:
        store.move(done, "accepted", NOW + 2, notified=False)
    assert again.value.code == "bad_state"
    disk.flush()
    reloaded = TaskStore(ServiceStore(tmp_path / "beta"))
    assert reloaded.get(task_id, "incoming").result == "built"


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        ({"op": "submit"}, "bad_request"),
        ({"op": "submit", "description": ""}, "bad_request"),
        ({"op": "update", "id": "nope", "state": "done"}, "unknown_task"),
        ({"op": "dance"}, "bad_request"),
    ],
)
def test_bad_task_requests_are_refused(
    tmp_path: Path, request_: dict[str, object], code: str
) -> None:
    service = TaskService(TaskStore(ServiceStore(tmp_path)), lambda hostname: None)
    assert service.answer("alpha", request_, NOW)["code"] == code


def test_tasks_not_ended_within_their_time_expire(tmp_path: Path) -> None:
    disk = ServiceStore(tmp_path)
    store = TaskStore(disk)
    service = TaskService(store, lambda hostname: None)
    task_id = service.answer("alpha", {"op": "submit", "description": "x"}, NOW)["id"]
    assert [t.state for t in store.tasks(NOW + TASK_TTL_S - 1)] == ["new"]
    assert [t.state for t in store.tasks(NOW + TASK_TTL_S + 1)] == ["expired"]
    disk.flush()
    assert TaskStore(ServiceStore(tmp_path)).get(task_id, "incoming").state == "expired"


def test_only_the_executor_of_an_outgoing_task_may_change_it(tmp_path: Path) -> None:
    store = TaskStore(ServiceStore(tmp_path))
    service = TaskService(store, lambda hostname: None)
    store.add(Task("t1", "outgoing", "beta", "build it", "new", NOW, NOW))
    update = {"op": "update", "id": "t1", "state": "done", "result": "forged"}
    refused = service.answer("gamma", update, NOW + 1)
    assert (refused["ok"], refused["code"]) == (False, "unknown_task")
    assert (store.get("t1", "outgoing").state, store.get("t1", "outgoing").result) == ("new", None)
    assert service.answer("beta", update, NOW + 2) == {"ok": True}
    assert store.get("t1", "outgoing").result == "forged"


def test_only_the_submitter_of_an_incoming_task_may_read_it(tmp_path: Path) -> None:
    service = TaskService(TaskStore(ServiceStore(tmp_path)), lambda hostname: None)
    task_id = service.answer("alpha", {"op": "submit", "description": "secret plan"}, NOW)["id"]
    stranger = service.answer("gamma", {"op": "get", "id": task_id}, NOW)
    assert (stranger["ok"], stranger["code"]) == (False, "unknown_task")
    assert "secret plan" not in json.dumps(stranger)
    assert service.answer("alpha", {"op": "get", "id": task_id}, NOW)["task"]["description"] == (
        "secret plan"
    )
