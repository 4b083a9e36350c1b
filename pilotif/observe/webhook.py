"""`up --webhook URL`: POST every event as JSON to a URL, off the data path.

The webhook is one subscriber of the event bus. A single task takes events in order
and posts each from a worker thread (urllib), so the event loop never waits on the
network; a failed post is retried with exponential backoff a bounded number of times,
then given up and logged. If the URL is slow the bus drops the oldest events and the
webhook posts an `events_dropped` notice in their place.

The daemon runs as root: a redirect is never followed (a 3xx is a failed delivery), and
the URL is logged without its credentials, query or fragment (it may carry a token).
"""

import asyncio
import base64
import contextlib
import http.client
import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable
from email.message import Message
from typing import IO

from pilotif.observe.events import Event, EventBus, Subscription
from pilotif.util.logs import log_event

WEBHOOK_QUEUE_EVENTS = 256
WEBHOOK_ATTEMPTS = 5
WEBHOOK_FIRST_BACKOFF_S = 0.5
WEBHOOK_TIMEOUT_S = 5.0
_HTTP_OK_FIRST, _HTTP_OK_LAST = 200, 299
_HTTP_TOO_MANY_REQUESTS = 429
_HTTP_SERVER_ERROR_FIRST = 500

Post = Callable[[str, bytes, float], int]
"""Blocking POST of a JSON body: (url, body, timeout_s) -> HTTP status; raises OSError or
http.client.HTTPException when there is no answer."""
Sleep = Callable[[float], Awaitable[None]]


class WebhookError(ValueError):
    """The webhook URL is not usable."""


def check_webhook_url(url: str) -> str:
    """The URL if it is http(s)://HOST[...]; WebhookError otherwise."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookError(f"webhook URL {url!r} must be http://HOST/... or https://HOST/...")
    return url


def _host_port(parts: urllib.parse.SplitResult) -> str:
    """The URL's host[:port] without user and password."""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{host}:{port}" if port is not None else host


def loggable_url(url: str) -> str:
    """The URL as it may be logged: scheme://host[:port]/path, no user, password, query
    or fragment (a webhook's secret usually sits in one of them)."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, _host_port(parts), parts.path, "", ""))


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """A 3xx answer is the webhook's answer, not a place to go: following it would make
    the daemon (root) request whatever URL the server names."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: Message,
        newurl: str,
    ) -> None:
        return None


_OPENER = urllib.request.build_opener(_RefuseRedirects)


def _urllib_post(url: str, body: bytes, timeout_s: float) -> int:
    headers = {"Content-Type": "application/json"}
    parts = urllib.parse.urlsplit(url)
    if parts.username is not None:
        # urllib takes user:password@ for part of the host name: send it as Basic auth.
        user = urllib.parse.unquote(parts.username)
        password = urllib.parse.unquote(parts.password or "")
        headers["Authorization"] = (
            "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        )
        url = urllib.parse.urlunsplit(parts._replace(netloc=_host_port(parts)))
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with _OPENER.open(request, timeout=timeout_s) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def _retryable(status: int) -> bool:
    return status == _HTTP_TOO_MANY_REQUESTS or status >= _HTTP_SERVER_ERROR_FIRST


class Webhook:
    """Posts the events of `bus` to `url` until closed; counts what it delivered."""

    def __init__(
        self,
        url: str,
        bus: EventBus,
        *,
        attempts: int = WEBHOOK_ATTEMPTS,
        first_backoff_s: float = WEBHOOK_FIRST_BACKOFF_S,
        timeout_s: float = WEBHOOK_TIMEOUT_S,
        queue_events: int = WEBHOOK_QUEUE_EVENTS,
        post: Post = _urllib_post,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.url = check_webhook_url(url)
        self.delivered = 0
        self.failed = 0
        self._bus = bus
        self._attempts = attempts
        self._first_backoff_s = first_backoff_s
        self._timeout_s = timeout_s
        self._queue_events = queue_events
        self._post = post
        self._sleep = sleep
        self._subscription: Subscription | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Subscribe to the bus and start posting (needs a running event loop)."""
        self._subscription = self._bus.subscribe(self._queue_events)
        self._task = asyncio.get_running_loop().create_task(self._run(self._subscription))

    async def close(self) -> None:
        """Stop posting; an event being posted is abandoned."""
        if self._subscription is not None:
            self._subscription.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self, subscription: Subscription) -> None:
        while True:
            event = await subscription.get()
            if await self.deliver(event):
                self.delivered += 1
            else:
                self.failed += 1

    async def deliver(self, event: Event) -> bool:
        """POST one event, retrying with backoff; whether the URL accepted it."""
        loop = asyncio.get_running_loop()
        body = json.dumps(event).encode()
        backoff_s = self._first_backoff_s
        problem = ""
        for attempt in range(1, self._attempts + 1):
            try:
                status = await loop.run_in_executor(
                    None, self._post, self.url, body, self._timeout_s
                )
            except (OSError, http.client.HTTPException) as error:
                problem = str(error) or type(error).__name__
            else:
                if _HTTP_OK_FIRST <= status <= _HTTP_OK_LAST:
                    return True
                problem = f"HTTP {status}"
                if not _retryable(status):
                    break
            if attempt < self._attempts:
                await self._sleep(backoff_s)
                backoff_s *= 2
        log_event(
            "webhook_failed",
            level=logging.WARNING,
            url=loggable_url(self.url),
            kind=event.get("event"),
            error=problem,
        )
        return False
