"""The agent services against hostile peers and local users, over real loopback sockets
(the services listen on 127.0.0.1; a trusted peer connects from 127.0.0.2, a stranger
from 127.0.0.3, and a program of this host from 127.0.0.1 itself): garbage gets
`bad_request` and the next line works, nothing raises a traceback, a stranger and a local
user other than the daemon's own get nothing, per-peer caps hold."""

import asyncio
import contextlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest

from pilotif.services.broker import MAX_SUBSCRIPTIONS_PER_PEER
from pilotif.services.files import ReceivedFiles
from pilotif.services.inbox import Inbox, Message
from pilotif.services.limits import LOG_BURST_LINES
from pilotif.services.local_owner import tcp_owner_uid
from pilotif.services.server import (
    ECHO_PORT,
    EVENTS_PORT,
    MAX_CONNECTIONS_PER_PEER,
    MAX_ECHO_CONNECTIONS_PER_PEER,
    MESSAGES_PORT,
    AgentServices,
)
from pilotif.services.task_service import TASKS_PORT, TaskService
from pilotif.services.wire import MAX_NESTING, WireError, decode

HOST = "127.0.0.1"
PEER = "127.0.0.2"
STRANGER = "127.0.0.3"
NODE = "self-node"
ANSWER_TIMEOUT_S = 5.0


class _Inbox:
    """An inbox in memory (the store is pilotif.services.inbox's business)."""

    def __init__(self) -> None:
        self.kept: list[Message] = []

    def add(self, sender: str, text: str, now: float) -> Message:
        message = Message(len(self.kept) + 1, sender, now, text)
        self.kept.append(message)
        return message


class _Tasks:
    """Tasks whose every answer fails: what an unexpected bug looks like."""

    def answer(self, peer: str, request: dict[str, Any], now: float) -> dict[str, Any]:
        raise RuntimeError("a bug")


@contextlib.asynccontextmanager
async def _running(
    tmp_path: Path, owner_uid: int | None = None
) -> AsyncIterator[tuple[AgentServices, _Inbox]]:
    inbox = _Inbox()
    services = AgentServices(
        cast(Inbox, inbox),
        ReceivedFiles(tmp_path),
        cast(TaskService, _Tasks()),
        {PEER: "alpha"}.get,
        lambda message: None,
        lambda file: None,
        own_name=NODE,
        owner_uid=lambda client, listener: owner_uid,
    )
    ports = {port: 0 for port in (MESSAGES_PORT, EVENTS_PORT, TASKS_PORT, ECHO_PORT)}
    await services.start(HOST, ports)
    try:
        yield services, inbox
    finally:
        services.close()


class _Client:
    """One connection to a service, line by line."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def ask(self, line: bytes) -> dict[str, Any] | None:
        self.writer.write(line)
        await self.writer.drain()
        return await self.answer()

    async def answer(self) -> dict[str, Any] | None:
        """The next answer, None once the service closed (or reset) the connection."""
        try:
            line = await asyncio.wait_for(self.reader.readline(), ANSWER_TIMEOUT_S)
        except ConnectionResetError:
            return None
        return json.loads(line) if line else None

    def close(self) -> None:
        self.writer.close()


async def _connect(services: AgentServices, port: int, source: str = PEER) -> _Client:
    reader, writer = await asyncio.open_connection(
        HOST, services.ports[port], local_addr=(source, 0), limit=1 << 20
    )
    return _Client(reader, writer)


def _message(text: str) -> bytes:
    return json.dumps({"op": "message", "text": text}).encode() + b"\n"


def _no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []


HOSTILE_LINES = [
    pytest.param(b'{"op": "message", "text": "\\ud800"}\n', id="lone-surrogate"),
    pytest.param(b'{"op": "message", "text": ' + b"[" * 30_000 + b"]" * 30_000 + b"}\n", id="deep"),
    pytest.param(b'{"op": "message", "text": "\xff\xfe"}\n', id="invalid-utf8"),
    pytest.param(b'{"op": "message", "text": "x", "n": ' + b"9" * 5000 + b"}\n", id="huge-int"),
    pytest.param(b'{"op": "message", "text": "x", "n": 1e999}\n', id="infinite"),
    pytest.param(b'{"op": "message", "text": "x", "n": NaN}\n', id="nan"),
]


@pytest.mark.parametrize("line", HOSTILE_LINES)
def test_hostile_json_gets_bad_request_and_the_next_message_works(
    tmp_path: Path, line: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> tuple[dict[str, Any] | None, dict[str, Any] | None, list[str]]:
        async with _running(tmp_path) as (services, inbox):
            client = await _connect(services, MESSAGES_PORT)
            refused = await client.ask(line)
            accepted = await client.ask(_message("after"))
            client.close()
            return refused, accepted, [m.text for m in inbox.kept]

    with caplog.at_level(logging.DEBUG):
        refused, accepted, kept = asyncio.run(scenario())
    assert refused is not None and (refused["ok"], refused["code"]) == (False, "bad_request")
    assert accepted == {"ok": True, "id": 1}
    assert kept == ["after"]
    _no_traceback(caplog)


@pytest.mark.parametrize(
    "line",
    [
        b'{"a": ' + b"[" * (MAX_NESTING + 1) + b"]" * (MAX_NESTING + 1) + b"}",
        b'{"a": "\\udfff"}',
        b'{"a": -Infinity}',
        b'{"a": 1' + b"0" * 400 + b"}",
    ],
)
def test_a_line_no_answer_could_carry_is_a_bad_request(line: bytes) -> None:
    with pytest.raises(WireError) as error:
        decode(line)
    assert error.value.code == "bad_request" and error.value.at_line


def test_a_surrogate_pair_and_brackets_in_text_are_fine() -> None:
    text = "[" * (MAX_NESTING + 5)
    assert decode(json.dumps({"a": "\U0001f600", "t": text}).encode()) == {
        "a": "\U0001f600",
        "t": text,
    }


def test_an_unexpected_failure_answers_internal_error_and_logs_a_few_lines(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> list[dict[str, Any] | None]:
        async with _running(tmp_path) as (services, _):
            answers = []
            for _ in range(int(LOG_BURST_LINES) * 3):
                client = await _connect(services, TASKS_PORT)
                answers.append(await client.ask(b'{"op": "get", "id": "x"}\n'))
                assert await client.answer() is None  # closed after it
                client.close()
            return answers

    with caplog.at_level(logging.DEBUG):
        answers = asyncio.run(scenario())
    assert {(a or {}).get("code") for a in answers} == {"internal_error"}
    failures = [r for r in caplog.records if r.getMessage() == "service_failed"]
    assert 1 <= len(failures) <= LOG_BURST_LINES
    _no_traceback(caplog)


def test_a_stranger_is_closed_without_an_answer_and_keeps_nothing(tmp_path: Path) -> None:
    async def scenario() -> tuple[dict[str, Any] | None, int, list[Message]]:
        async with _running(tmp_path) as (services, inbox):
            client = await _connect(services, MESSAGES_PORT, source=STRANGER)
            answer = await client.ask(_message("from a stranger"))
            client.close()
            return answer, services.counters["not_a_peer"], inbox.kept

    assert asyncio.run(scenario()) == (None, 1, [])


@pytest.mark.parametrize(("uid", "sender"), [(65534, None), (None, None), (os.geteuid(), NODE)])
def test_a_program_of_this_host_is_the_node_only_as_the_daemons_own_user(
    tmp_path: Path, uid: int | None, sender: str | None
) -> None:
    async def scenario() -> tuple[dict[str, Any] | None, list[str]]:
        async with _running(tmp_path, owner_uid=uid) as (services, inbox):
            client = await _connect(services, MESSAGES_PORT, source=HOST)
            answer = await client.ask(_message("as the node?"))
            client.close()
            return answer, [m.sender for m in inbox.kept]

    answer, senders = asyncio.run(scenario())
    if sender is None:
        assert answer is not None and (answer["ok"], answer["code"]) == (False, "not_a_peer")
        assert senders == []
    else:
        assert answer == {"ok": True, "id": 1} and senders == [sender]


def _caps_hold(tmp_path: Path, port: int, cap: int) -> tuple[int, int]:
    """How many of cap + 2 connections one peer holds open get served, and how many are
    closed at once."""

    async def scenario() -> tuple[int, int]:
        async with _running(tmp_path) as (services, _):
            clients = [await _connect(services, port) for _ in range(cap + 2)]
            for client in clients:
                client.writer.write(b'{"echo": 1}\n' if port == ECHO_PORT else _message("hi"))
            results = await asyncio.gather(*(c.answer() for c in clients))
            for client in clients:
                client.close()
            served = sum(1 for r in results if r is not None)
            return served, len(results) - served

    return asyncio.run(scenario())


def test_a_peer_holds_at_most_its_connections(tmp_path: Path) -> None:
    assert _caps_hold(tmp_path, MESSAGES_PORT, MAX_CONNECTIONS_PER_PEER) == (
        MAX_CONNECTIONS_PER_PEER,
        2,
    )


def test_a_peer_holds_at_most_its_echo_connections(tmp_path: Path) -> None:
    assert _caps_hold(tmp_path, ECHO_PORT, MAX_ECHO_CONNECTIONS_PER_PEER) == (
        MAX_ECHO_CONNECTIONS_PER_PEER,
        2,
    )


# -- who holds a local connection -----------------------------------------------------------


def _listener() -> socket.socket:
    listener = socket.socket()
    listener.bind((HOST, 0))
    listener.listen()
    return listener


def test_the_owner_of_a_local_connection_is_its_uid_while_it_is_open() -> None:
    with _listener() as listener:
        served = listener.getsockname()
        client = socket.create_connection(served)
        accepted, _ = listener.accept()
        source = client.getsockname()
        assert tcp_owner_uid(source, served) == os.geteuid()
        assert tcp_owner_uid((HOST, 1), served) is None
        client.close()  # orphaned in FIN_WAIT: listed as root's, with no socket behind it
        assert tcp_owner_uid(source, served) is None
        accepted.close()


_NOBODY = 65534
_NOBODY_CLIENT = """
import socket, sys, time
conn = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
print(conn.getsockname()[1], flush=True)
sys.stdin.read()
"""


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="runs a client as nobody"
)
def test_the_owner_of_a_connection_by_another_user_is_that_user() -> None:
    with _listener() as listener:
        served = listener.getsockname()
        command = ["setpriv", f"--reuid={_NOBODY}", f"--regid={_NOBODY}", "--clear-groups"]
        child = subprocess.Popen(
            [*command, sys.executable, "-c", _NOBODY_CLIENT, str(served[1])],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None
            port = int(child.stdout.readline())
            assert tcp_owner_uid((HOST, port), served) == _NOBODY
        finally:
            child.kill()
            child.wait()


# -- publish/subscribe over the wire --------------------------------------------------------


def test_a_surrogate_publish_is_refused_and_subscribers_get_the_next_event(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> tuple[list[dict[str, Any] | None], dict[str, Any] | None]:
        async with _running(tmp_path) as (services, _):
            subscriber = await _connect(services, EVENTS_PORT)
            subscribed = await subscriber.ask(b'{"op": "subscribe", "topic": "jobs/*"}\n')
            assert subscribed == {"ok": True, "subscribed": "jobs/*"}
            publisher = await _connect(services, EVENTS_PORT)
            answers = [
                await publisher.ask(b'{"op": "publish", "topic": "jobs/1", "data": "\\ud800"}\n'),
                await publisher.ask(b'{"op": "publish", "topic": "jobs/2", "data": "fine"}\n'),
            ]
            event = await subscriber.answer()
            for client in (subscriber, publisher):
                client.close()
            return answers, event

    with caplog.at_level(logging.DEBUG):
        (refused, delivered), event = asyncio.run(scenario())
    assert refused is not None and (refused["ok"], refused["code"]) == (False, "bad_request")
    assert delivered == {"ok": True, "delivered": 1}
    assert event is not None and (event["topic"], event["data"]) == ("jobs/2", "fine")
    _no_traceback(caplog)


def test_a_peer_holds_at_most_its_subscriptions(tmp_path: Path) -> None:
    async def scenario() -> list[str | None]:
        async with _running(tmp_path) as (services, _):
            clients = [
                await _connect(services, EVENTS_PORT) for _ in range(MAX_SUBSCRIPTIONS_PER_PEER + 1)
            ]
            answers = [await c.ask(b'{"op": "subscribe", "topic": "*"}\n') for c in clients]
            for client in clients:
                client.close()
            return [(a or {}).get("code") for a in answers]

    codes = asyncio.run(scenario())
    assert codes == [None] * MAX_SUBSCRIPTIONS_PER_PEER + ["too_many_subscriptions"]
