"""What one trusted peer may hold of the services: a subscriber's queue bounded by bytes
(encoded lines, not parsed events), subscriptions and publishes per peer, and received
files reserved by their announced size while in flight (per file, per peer, in all);
a transfer that stalls is answered `timeout`, not `disk_full`."""

import asyncio
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, NamedTuple, cast

import pytest

from pilotif.services import files as files_module
from pilotif.services import server as server_module
from pilotif.services.broker import (
    EVENTS_DROPPED,
    MAX_SUBSCRIPTIONS_PER_PEER,
    SUBSCRIBER_QUEUE_BYTES,
    Broker,
    TooManySubscriptions,
)
from pilotif.services.files import (
    MAX_FILE_BYTES,
    MAX_IN_FLIGHT_PER_PEER,
    MAX_PEER_BYTES,
    MAX_TOTAL_BYTES,
    PARTIAL_DIR,
    FileRefused,
    Incoming,
    ReceivedFiles,
)
from pilotif.services.inbox import Inbox
from pilotif.services.server import (
    ECHO_PORT,
    EVENTS_PORT,
    MESSAGES_PORT,
    PUBLISH_BURST,
    PUBLISH_BURST_BYTES,
    AgentServices,
)
from pilotif.services.task_service import TASKS_PORT, TaskService

NOW = 1_800_000_000.0
EVENT_DATA_BYTES = 64 * 1024 - 200
"""About the biggest event a line carries."""
PUBLISHES = 1000


# -- publish/subscribe ---------------------------------------------------------------------


def test_an_idle_subscriber_holds_at_most_its_queue_bytes_and_hears_what_it_lost() -> None:
    async def scenario() -> tuple[int, list[bytes]]:
        broker = Broker()
        idle = broker.subscribe("*", "alpha")
        for number in range(PUBLISHES):
            broker.publish(f"t/{number}", "x" * EVENT_DATA_BYTES, "beta")
        held = idle.queued_bytes
        return held, [await idle.get(), await idle.get()]

    held, (notice, oldest_kept) = asyncio.run(scenario())
    assert SUBSCRIBER_QUEUE_BYTES - 2 * 64 * 1024 < held <= SUBSCRIBER_QUEUE_BYTES
    kept = held // (EVENT_DATA_BYTES + 1)
    dropped = json.loads(notice)
    assert (dropped["event"], dropped["count"]) == (EVENTS_DROPPED, PUBLISHES - kept)
    assert json.loads(oldest_kept)["topic"] == f"t/{PUBLISHES - kept}"


def test_subscribers_get_only_matching_events_as_lines() -> None:
    async def scenario() -> list[bytes]:
        broker = Broker()
        jobs = broker.subscribe("jobs/*", "alpha")
        assert broker.publish("other", 1, "beta") == 0
        assert broker.publish("jobs/1", {"n": 1}, "beta") == 1
        return [await jobs.get()]

    [line] = asyncio.run(scenario())
    assert line.endswith(b"\n")
    event = json.loads(line)
    assert (event["topic"], event["data"], event["sender"]) == ("jobs/1", {"n": 1}, "beta")


def test_a_peer_holds_at_most_its_subscriptions_and_gets_them_back() -> None:
    broker = Broker()
    held = [broker.subscribe("*", "alpha") for _ in range(MAX_SUBSCRIPTIONS_PER_PEER)]
    with pytest.raises(TooManySubscriptions):
        broker.subscribe("*", "alpha")
    other = broker.subscribe("*", "beta")
    broker.unsubscribe(held[0])
    broker.unsubscribe(held[0])  # twice is harmless
    again = broker.subscribe("*", "alpha")
    assert broker.publish("t", 1, "gamma") == MAX_SUBSCRIPTIONS_PER_PEER + 1
    del other, again


def _services(tmp_path: Path) -> AgentServices:
    return AgentServices(
        cast(Inbox, None),
        ReceivedFiles(tmp_path),
        cast(TaskService, None),
        {"127.0.0.2": "alpha"}.get,
        lambda message: None,
        lambda file: None,
    )


def _publishes_until_refused(services: AgentServices, data: object, limit: int) -> list[Any]:
    request = {"op": "publish", "topic": "t", "data": data}
    return [services._publish("alpha", request) for _ in range(limit)]


def test_a_peer_publishing_too_many_events_is_refused_past_its_burst(tmp_path: Path) -> None:
    services = _services(tmp_path)
    answers = _publishes_until_refused(services, 1, int(PUBLISH_BURST) + 10)
    refused = [a for a in answers if not a["ok"]]
    assert 1 <= len(refused) <= 10 and {a["code"] for a in refused} == {"rate_limited"}
    assert services._publish("beta", {"op": "publish", "topic": "t", "data": 1})["ok"]


def test_a_peer_publishing_too_many_bytes_is_refused_past_its_burst(tmp_path: Path) -> None:
    services = _services(tmp_path)
    within = int(PUBLISH_BURST_BYTES // (EVENT_DATA_BYTES + 100))
    answers = _publishes_until_refused(services, "x" * EVENT_DATA_BYTES, within + 5)
    assert all(a["ok"] for a in answers[:within])
    assert {a.get("code") for a in answers[within + 2 :]} == {"rate_limited"}


# -- files ---------------------------------------------------------------------------------


class _Disk(NamedTuple):
    total: int
    used: int
    free: int


@pytest.fixture
def roomy_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """A disk with room for anything: the caps here are the node's, not the disk's."""
    monkeypatch.setattr(shutil, "disk_usage", lambda path: _Disk(1 << 50, 0, 1 << 50))


def _announce(files: ReceivedFiles, peer: str, size: int) -> Incoming | str:
    try:
        return files.begin(peer, "f", size, "0" * 64)
    except FileRefused as refused:
        return refused.code


@pytest.mark.usefixtures("roomy_disk")
def test_files_in_flight_count_against_the_cap_by_their_announced_size(tmp_path: Path) -> None:
    files = ReceivedFiles(tmp_path)
    peers = [f"peer{n}" for n in range(16)]
    results = [_announce(files, peer, MAX_FILE_BYTES) for peer in peers]
    accepted = [r for r in results if isinstance(r, Incoming)]
    assert len(accepted) == MAX_TOTAL_BYTES // MAX_FILE_BYTES
    assert {r for r in results if isinstance(r, str)} == {"no_space"}
    assert files.reserved_bytes() == MAX_TOTAL_BYTES
    accepted[0].abort()
    assert isinstance(_announce(files, "late", MAX_FILE_BYTES), Incoming)


@pytest.mark.usefixtures("roomy_disk")
def test_one_peer_holds_at_most_its_bytes_and_its_transfers(tmp_path: Path) -> None:
    files = ReceivedFiles(tmp_path)
    big = [
        _announce(files, "alpha", MAX_FILE_BYTES)
        for _ in range(MAX_PEER_BYTES // MAX_FILE_BYTES + 1)
    ]
    assert big[-1] == "over_quota" and all(isinstance(r, Incoming) for r in big[:-1])
    assert isinstance(_announce(files, "beta", MAX_FILE_BYTES), Incoming)
    small = [_announce(files, "gamma", 1) for _ in range(MAX_IN_FLIGHT_PER_PEER + 1)]
    assert small[-1] == "too_many_transfers"


@pytest.mark.usefixtures("roomy_disk")
def test_files_kept_count_against_their_senders_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files_module, "MAX_PEER_BYTES", 150)
    files = ReceivedFiles(tmp_path)
    data = b"k" * 100
    incoming = files.begin("alpha", "kept", len(data), hashlib.sha256(data).hexdigest())
    incoming.write(data)
    incoming.finish(NOW)
    assert files.reserved_bytes() == 0
    assert _announce(files, "alpha", 100) == "over_quota"
    assert isinstance(_announce(files, "beta", 100), Incoming)


@pytest.mark.usefixtures("roomy_disk")
def test_one_peer_keeps_at_most_its_share_of_the_files_however_small(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files_module, "MAX_FILES_PER_PEER", 3)
    monkeypatch.setattr(files_module, "MAX_FILES", 6)
    files = ReceivedFiles(tmp_path)
    empty = hashlib.sha256(b"").hexdigest()

    def send_empty(peer: str) -> str:
        try:
            files.begin(peer, "empty", 0, empty).finish(NOW)
        except FileRefused as refused:
            return refused.code
        return "kept"

    assert [send_empty("alpha") for _ in range(4)] == ["kept", "kept", "kept", "over_quota"]
    assert [send_empty("beta") for _ in range(3)] == ["kept", "kept", "kept"]


def test_a_stalled_transfer_is_answered_timeout_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server_module, "IDLE_TIMEOUT_S", 0.3)
    services = _services(tmp_path)

    async def scenario() -> list[dict[str, Any]]:
        await services.start(
            "127.0.0.1", dict.fromkeys((MESSAGES_PORT, EVENTS_PORT, TASKS_PORT, ECHO_PORT), 0)
        )
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", services.ports[MESSAGES_PORT], local_addr=("127.0.0.2", 0)
            )
            data = b"0123456789"
            header = {
                "op": "file",
                "name": "f",
                "size": 10,
                "sha256": hashlib.sha256(data).hexdigest(),
            }
            writer.write(json.dumps(header).encode() + b"\n" + data[:5])
            answers = [json.loads(await asyncio.wait_for(reader.readline(), 5)) for _ in range(2)]
            writer.close()
            return answers
        finally:
            services.close()

    ready, stalled = asyncio.run(scenario())
    assert ready["ready"] is True
    assert (stalled["ok"], stalled["code"]) == (False, "timeout")
    assert services.files.reserved_bytes() == 0 and services.files.files() == []
    assert list((services.files.root / PARTIAL_DIR).iterdir()) == []


class _GoneWriter:
    """A sender's side that is gone (drain raises) or never drains (drain waits)."""

    def __init__(self, gone: bool) -> None:
        self.gone = gone
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    async def drain(self) -> None:
        if self.gone:
            raise ConnectionResetError("Connection lost")
        await asyncio.get_running_loop().create_future()  # never done


@pytest.mark.usefixtures("roomy_disk")
@pytest.mark.parametrize("gone", [True, False], ids=["reset", "cancelled"])
def test_a_file_announced_and_never_sent_gives_its_reservation_back(
    tmp_path: Path, gone: bool
) -> None:
    services = _services(tmp_path)
    request = {"op": "file", "name": "f", "size": MAX_FILE_BYTES, "sha256": "0" * 64}

    async def scenario() -> None:
        writer = _GoneWriter(gone)
        answer = asyncio.ensure_future(
            services._file(
                "alpha",
                request,
                asyncio.StreamReader(),
                cast(asyncio.StreamWriter, writer),
            )
        )
        await asyncio.sleep(0.05)
        if not gone:
            assert services.files.reserved_bytes() == MAX_FILE_BYTES  # waiting to drain
            answer.cancel()
        with pytest.raises((ConnectionResetError, asyncio.CancelledError)):
            await answer

    asyncio.run(scenario())
    assert services.files.reserved_bytes() == 0
    assert list((services.files.root / PARTIAL_DIR).iterdir()) == []


class _Writer(_GoneWriter):
    async def drain(self) -> None:
        pass


@pytest.mark.usefixtures("roomy_disk")
def test_a_sender_reset_inside_a_file_is_a_lost_connection_not_a_write_failure(
    tmp_path: Path,
) -> None:
    services = _services(tmp_path)
    request = {"op": "file", "name": "f", "size": 10, "sha256": "0" * 64}

    async def scenario() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(b"01234")
        reader.set_exception(ConnectionResetError("Connection reset by peer"))
        writer = cast(asyncio.StreamWriter, _Writer(gone=False))
        with pytest.raises(ConnectionResetError):
            await services._file("alpha", request, reader, writer)

    asyncio.run(scenario())
    assert "write_failed" not in services.counters
    assert services.files.reserved_bytes() == 0
