"""The HTTP proxy a node's streams go through (sans-IO): where it is and its credentials,
from `--proxy URL` or the environment's HTTPS_PROXY / https_proxy (as curl reads them),
and the CONNECT request that opens a tunnel through it (Basic auth when the URL has
user:password). The answer is read by net/upgrade.py's `ClientOpening`: 2xx opens the
tunnel, 407 says the credentials are missing or wrong, anything else refuses.
"""

import base64
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote, urlsplit

from pilotif.net.hostport import format_endpoint
from pilotif.net.stream import StreamError
from pilotif.net.upgrade import ClientOpening
from pilotif.wg.events import Endpoint

PROXY_ENVIRONMENT: Final = ("HTTPS_PROXY", "https_proxy")
"""The variables a proxy is taken from when no --proxy is given, in this order."""
DEFAULT_PROXY_PORT: Final = 3128
PROXY_AUTH_REQUIRED: Final = 407
_OK_LOW: Final = 200
_OK_HIGH: Final = 299


class ProxyError(StreamError):
    """The proxy refused the tunnel, or its URL is unusable; `reason` names why (for
    counters), the message says what to do."""

    def __str__(self) -> str:
        return self.detail


@dataclass(frozen=True)
class Proxy:
    """An HTTP proxy: where it is, and the Basic credentials to give it (None: none)."""

    host: str
    port: int
    credentials: tuple[str, str] | None = None

    def __str__(self) -> str:
        """`http://HOST:PORT` (the password never shows)."""
        user = f"{self.credentials[0]}@" if self.credentials else ""
        return f"http://{user}{format_endpoint((self.host, self.port))}"


def parse_proxy(url: str) -> Proxy:
    """The proxy of `http://[user:password@]host[:port]` (a bare `host:port` too);
    ProxyError if it is not one."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme != "http":
        raise ProxyError("bad_proxy_url", f"{url}: only http:// proxies are supported")
    try:
        port = parts.port or DEFAULT_PROXY_PORT
    except ValueError:
        raise ProxyError("bad_proxy_url", f"{url}: the port is not a number") from None
    if not parts.hostname:
        raise ProxyError("bad_proxy_url", f"{url}: no host")
    credentials = None
    if parts.username is not None:
        credentials = (unquote(parts.username), unquote(parts.password or ""))
    return Proxy(parts.hostname, port, credentials)


def proxy_from_environment(environment: Mapping[str, str] | None = None) -> Proxy | None:
    """The proxy HTTPS_PROXY (or https_proxy) names; None when neither is set."""
    environment = os.environ if environment is None else environment
    for name in PROXY_ENVIRONMENT:
        value = environment.get(name, "").strip()
        if value:
            return parse_proxy(value)
    return None


def connect_opening(proxy: Proxy, target: Endpoint) -> ClientOpening:
    """The CONNECT request for a tunnel to `target` through `proxy`, and its answer's reader."""
    authority = format_endpoint(target).encode()
    headers = [(b"Host", authority)]
    if proxy.credentials is not None:
        token = base64.b64encode(":".join(proxy.credentials).encode())
        headers.append((b"Proxy-Authorization", b"Basic " + token))
    return ClientOpening(b"CONNECT", authority, headers)


def tunnel_status(status: int, proxy: Proxy) -> None:
    """Nothing when `status` opened the tunnel; else ProxyError that says what to do."""
    if _OK_LOW <= status <= _OK_HIGH:
        return
    if status == PROXY_AUTH_REQUIRED:
        hint = "wrong user or password" if proxy.credentials else "give user:password in the URL"
        raise ProxyError("proxy_auth_required", f"the proxy {proxy} asks for credentials: {hint}")
    raise ProxyError("proxy_refused", f"the proxy {proxy} answered CONNECT with {status}")
