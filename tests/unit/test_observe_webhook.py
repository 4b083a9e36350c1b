"""The webhook's delivery policy, with a scripted transport and a recorded clock:
retries on server errors with doubling backoff, bounded attempts, no retry on a 4xx.
(A real HTTP server on loopback is in tests/integration/test_observability.py.)"""

import asyncio
import json

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
