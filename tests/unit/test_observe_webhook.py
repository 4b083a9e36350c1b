"""The webhook's delivery policy, with a scripted transport and a recorded clock:
retries on server errors with doubling backoff, bounded attempts, no retry on a 4xx;
against real HTTP servers on loopback: a redirect is never followed, and the URL's
secrets never reach the log. (The daemon's webhook is in
tests/integration/test_observability.py.)"""

import asyncio
import base64
import http.server
import json
import logging
import threading
from collections.abc import Iterator

import pytest

from pilotif.observe import EventBus, Webhook, WebhookError

URL = "http://127.0.0.1:9/hook"


class _Script:
    """Answers each POST with the next status (or raises it if it is an exception)."""

    def __init__(self, *answers: int | OSError) -> None:
        self.answers = list(answers)
        self.bodies: list[dict[str, object]] = []

    def __call__(self, url: str, body: bytes, timeout_s: float) -> int:
        assert url == URL
        self.bodies.append(json.loads(body))
        answer = self.answers.pop(0)
        if isinstance(answer, OSError):
            raise answer
        return answer


def _deliver(script: _Script, attempts: int = 5) -> tuple[bool, list[float]]:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    async def scenario() -> bool:
        hook = Webhook(URL, EventBus(), attempts=attempts, post=script, sleep=sleep)
        return await hook.deliver({"time": 1.0, "event": "peer_up", "peer": "beta"})

    return asyncio.run(scenario()), waits


def test_server_errors_are_retried_with_doubling_backoff_until_accepted() -> None:
    script = _Script(500, ConnectionRefusedError(), 503, 200)
    delivered, waits = _deliver(script)
    assert delivered
    assert waits == [0.5, 1.0, 2.0]
    assert all(body == {"time": 1.0, "event": "peer_up", "peer": "beta"} for body in script.bodies)


def test_gives_up_after_the_last_attempt() -> None:
    script = _Script(*[500] * 5)
    delivered, waits = _deliver(script, attempts=5)
    assert not delivered
    assert len(script.bodies) == 5
    assert waits == [0.5, 1.0, 2.0, 4.0]


def test_a_client_error_is_not_retried() -> None:
    script = _Script(404)
    delivered, waits = _deliver(script)
    assert not delivered
    assert waits == []


def test_events_from_the_bus_are_posted_in_order() -> None:
    script = _Script(200, 200, 200)

    async def scenario() -> Webhook:
        bus = EventBus()
        hook = Webhook(URL, bus, post=script)
        hook.start()
        for kind in ("trust_requested", "trust_approved", "peer_up"):
            bus.publish(kind, peer="beta")
        for _ in range(100):
            if hook.delivered == 3:
                break
            await asyncio.sleep(0.01)
        await hook.close()
        return hook

    hook = asyncio.run(scenario())
    assert hook.delivered == 3
    assert [b["event"] for b in script.bodies] == ["trust_requested", "trust_approved", "peer_up"]


@pytest.mark.parametrize("url", ["ftp://host/x", "not a url", "http:///path"])
def test_only_http_urls_are_accepted(url: str) -> None:
    with pytest.raises(WebhookError):
        Webhook(url, EventBus())


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Records each request's method and path; answers with the server's `answer`."""

    def _answer(self) -> None:
        server: _Server = self.server  # type: ignore[assignment]
        server.requests.append((self.command, self.path))
        server.authorizations.append(self.headers.get("Authorization"))
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        status, location = server.answer
        self.send_response(status)
        if location:
            self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    def __init__(self, answer: tuple[int, str]) -> None:
        super().__init__(("127.0.0.1", 0), _Recorder)
        self.answer = answer
        self.requests: list[tuple[str, str]] = []
        self.authorizations: list[str | None] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def servers() -> Iterator[tuple[_Server, _Server]]:
    """A webhook that answers 302 to a second server (which would answer 200)."""
    target = _Server((200, ""))
    hook = _Server((302, f"{target.url}/internal/admin?delete=1"))
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in (hook, target)]
    for thread in threads:
        thread.start()
    yield hook, target
    for server in (hook, target):
        server.shutdown()
        server.server_close()


def test_a_redirect_is_not_followed(servers: tuple[_Server, _Server]) -> None:
    """Issue 22: the webhook (root) followed a 302 and sent a GET wherever it pointed."""
    hook_server, target = servers

    async def scenario() -> bool:
        hook = Webhook(f"{hook_server.url}/hook", EventBus(), attempts=1)
        return await hook.deliver({"time": 1.0, "event": "peer_up", "peer": "beta"})

    assert not asyncio.run(scenario())
    assert hook_server.requests == [("POST", "/hook")]
    assert target.requests == []


def test_the_log_shows_the_url_without_its_secrets(
    servers: tuple[_Server, _Server], caplog: pytest.LogCaptureFixture
) -> None:
    hook_server, _ = servers
    port = hook_server.server_address[1]
    url = f"http://user:hunter2@127.0.0.1:{port}/hook/s3cr3t-path?token=abc123#frag"

    async def scenario() -> bool:
        hook = Webhook(url, EventBus(), attempts=1)
        return await hook.deliver({"time": 1.0, "event": "peer_up"})

    with caplog.at_level(logging.WARNING, logger="pilotif"):
        assert not asyncio.run(scenario())
    logged = [getattr(record, "fields", {}) for record in caplog.records]
    assert {"url": f"http://127.0.0.1:{port}/hook/s3cr3t-path"}.items() <= logged[-1].items()
    text = caplog.text + json.dumps(logged)
    for secret in ("hunter2", "user", "abc123", "token", "frag"):
        assert secret not in text


def test_credentials_in_the_url_are_sent_as_basic_auth(servers: tuple[_Server, _Server]) -> None:
    """urllib took `user:password@` for part of the host name (no post ever left)."""
    _, target = servers
    url = target.url.replace("http://", "http://hook%40ops:p%3Ass@") + "/hook"

    async def scenario() -> bool:
        return await Webhook(url, EventBus(), attempts=1).deliver({"time": 1.0, "event": "x"})

    assert asyncio.run(scenario())
    assert target.requests == [("POST", "/hook")]
    assert target.authorizations == ["Basic " + base64.b64encode(b"hook@ops:p:ss").decode()]
