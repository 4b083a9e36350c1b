"""The stream transport's parts without sockets: the framing, the HTTP/1.1 Upgrade that
opens a stream (both sides), and the HTTP proxy's CONNECT (URL, credentials, answers).
Peer input that is garbage, truncated or oversized is a StreamError, never another
exception."""

import base64
import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pilotif.net.proxy import (
    Proxy,
    ProxyError,
    connect_opening,
    parse_proxy,
    proxy_from_environment,
    tunnel_status,
)
from pilotif.net.stream import MAX_FRAME_BYTES, FrameReader, StreamError, frame
from pilotif.net.upgrade import (
    MAX_REQUEST_BYTES,
    RequestRefused,
    UpgradeServer,
    upgrade_opening,
)

REGISTRY = "198.18.0.1:7946"


# The framing.


def test_frames_come_out_whole_however_the_bytes_are_cut() -> None:
    datagrams = [b"\x50" + bytes(range(200)), b"\x04" * 1500, b"\x51x"]
    wire = b"".join(frame(d) for d in datagrams)
    for cut in (1, 2, 3, 7, 1000, len(wire)):
        reader = FrameReader()
        out: list[bytes] = []
        for start in range(0, len(wire), cut):
            out += reader.feed(wire[start : start + cut])
        assert out == datagrams
        assert reader.pending == 0


def test_a_truncated_frame_waits_for_the_rest() -> None:
    reader = FrameReader()
    assert reader.feed(frame(b"hello")[:-1]) == []
    assert reader.pending == 6
    assert reader.feed(b"o") == [b"hello"]


def test_a_frame_over_the_limit_is_refused_before_its_bytes_arrive() -> None:
    reader = FrameReader()
    with pytest.raises(StreamError) as refused:
        reader.feed((MAX_FRAME_BYTES + 1).to_bytes(2, "big"))
    assert refused.value.reason == "frame_too_large"


def test_an_empty_frame_is_refused() -> None:
    with pytest.raises(StreamError) as refused:
        FrameReader().feed(b"\x00\x00")
    assert refused.value.reason == "empty_frame"


def test_we_never_write_a_frame_we_would_refuse() -> None:
    with pytest.raises(ValueError):
        frame(bytes(MAX_FRAME_BYTES + 1))
    with pytest.raises(ValueError):
        frame(b"")
    assert len(frame(bytes(MAX_FRAME_BYTES))) == MAX_FRAME_BYTES + 2


@given(st.binary(max_size=3000))
def test_garbage_gives_datagrams_or_a_stream_error(data: bytes) -> None:
    reader = FrameReader()
    try:
        out = reader.feed(data)
    except StreamError:
        return
    assert all(0 < len(d) <= MAX_FRAME_BYTES for d in out)
    assert reader.pending <= MAX_FRAME_BYTES + 2


# The Upgrade.


def test_the_upgrade_opens_and_the_first_frames_may_follow_at_once() -> None:
    client = upgrade_opening(REGISTRY)
    assert client.request.startswith(b"GET /pilotif HTTP/1.1\r\n")
    server = UpgradeServer()
    opened = server.feed(client.request + frame(b"\x50first"))
    assert opened is not None
    assert opened.answer.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert FrameReader().feed(opened.rest) == [b"\x50first"]
    assert client.feed(opened.answer + frame(b"\x50reply")) == (101, frame(b"\x50reply"))


def test_an_upgrade_request_that_trickles_in_opens_when_whole() -> None:
    request = upgrade_opening(REGISTRY).request
    server = UpgradeServer()
    for byte in request[:-1]:
        assert server.feed(bytes((byte,))) is None
    assert server.feed(request[-1:]) is not None


def test_a_web_request_that_is_not_ours_gets_a_404() -> None:
    for request in (
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /pilotif HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /pilotif HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        b"POST /pilotif HTTP/1.1\r\nHost: a\r\nUpgrade: pilotif\r\nConnection: Upgrade\r\n\r\n",
    ):
        with pytest.raises(RequestRefused) as refused:
            UpgradeServer().feed(request)
        assert refused.value.answer.startswith(b"HTTP/1.1 404 ")


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",  # a TLS ClientHello
        b"\x00\x10" + bytes(16) + b"\r\n\r\n",
        b"GET /pilotif HTTP/9\r\n\r\n",
        b"GET /pilotif HTTP/1.1\r\nno colon here\r\n\r\n",
        b"GET /pilotif HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    ],
)
def test_garbage_is_refused(garbage: bytes) -> None:
    with pytest.raises(StreamError):
        UpgradeServer().feed(garbage)


def test_a_request_with_a_body_is_refused() -> None:
    request = (
        b"GET /pilotif HTTP/1.1\r\nHost: a\r\nUpgrade: pilotif\r\nConnection: Upgrade\r\n"
        b"Content-Length: 4\r\n\r\nbody"
    )
    with pytest.raises(StreamError) as refused:
        UpgradeServer().feed(request)
    assert refused.value.reason == "bad_request"


def test_an_endless_request_is_cut_at_the_limit() -> None:
    server = UpgradeServer()
    assert server.feed(b"GET /pilotif HTTP/1.1\r\n") is None
    with pytest.raises(StreamError) as refused:
        for _ in range(MAX_REQUEST_BYTES):
            server.feed(b"X-Filler: " + b"a" * 50 + b"\r\n")
    assert refused.value.reason in ("request_too_large", "bad_request")


@given(st.binary(max_size=MAX_REQUEST_BYTES + 100))
def test_any_bytes_open_or_wait_or_are_refused(data: bytes) -> None:
    with contextlib.suppress(StreamError):
        UpgradeServer().feed(data)


def test_a_client_sees_what_the_server_answered() -> None:
    assert upgrade_opening(REGISTRY).feed(b"HTTP/1.1 404 Not Found\r\n\r\n") == (404, b"")
    assert upgrade_opening(REGISTRY).feed(b"HTTP/1.1 101 Switching") is None
    with pytest.raises(StreamError):
        upgrade_opening(REGISTRY).feed(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
    with pytest.raises(StreamError):
        upgrade_opening(REGISTRY).feed(b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 1000)


# The proxy.


def test_a_proxy_url_with_credentials() -> None:
    proxy = parse_proxy("http://agent%40corp:s3cr%3At@10.0.0.8:8080")
    assert proxy == Proxy("10.0.0.8", 8080, ("agent@corp", "s3cr:t"))
    assert "s3cr" not in str(proxy)
    assert parse_proxy("proxy.corp:3128") == Proxy("proxy.corp", 3128)
    assert parse_proxy("http://[fd00::8]").port == 3128


@pytest.mark.parametrize("url", ["https://p:443", "socks5://p:1080", "http://:80", "http://p:x"])
def test_a_proxy_url_we_cannot_use_says_so(url: str) -> None:
    with pytest.raises(ProxyError) as refused:
        parse_proxy(url)
    assert refused.value.reason == "bad_proxy_url"


def test_the_proxy_comes_from_https_proxy() -> None:
    assert proxy_from_environment({}) is None
    assert proxy_from_environment({"https_proxy": "http://p:1"}) == Proxy("p", 1)
    both = {"HTTPS_PROXY": "http://a:1", "https_proxy": "http://b:2"}
    assert proxy_from_environment(both) == Proxy("a", 1)


def test_connect_carries_basic_credentials_and_opens_on_200() -> None:
    proxy = Proxy("10.0.0.8", 3128, ("user", "pa:ss"))
    opening = connect_opening(proxy, ("198.18.0.1", 7946))
    assert opening.request.startswith(b"CONNECT 198.18.0.1:7946 HTTP/1.1\r\n")
    token = base64.b64encode(b"user:pa:ss")
    assert b"Proxy-Authorization: Basic " + token + b"\r\n" in opening.request
    answer = opening.feed(b"HTTP/1.1 200 Connection established\r\n\r\n" + frame(b"x"))
    assert answer == (200, frame(b"x"))
    tunnel_status(200, proxy)


def test_connect_to_an_ipv6_target() -> None:
    opening = connect_opening(Proxy("p", 1), ("2001:db8::1", 443))
    assert opening.request.startswith(b"CONNECT [2001:db8::1]:443 HTTP/1.1\r\n")


def test_a_proxy_that_asks_for_credentials_says_what_to_do() -> None:
    opening = connect_opening(Proxy("p", 1), ("198.18.0.1", 7946))
    answer = opening.feed(
        b"HTTP/1.1 407 Proxy Authentication Required\r\n"
        b'Proxy-Authenticate: Basic realm="corp"\r\nContent-Length: 0\r\n\r\n'
    )
    assert answer is not None and answer[0] == 407
    with pytest.raises(ProxyError, match="give user:password") as refused:
        tunnel_status(answer[0], Proxy("p", 1))
    assert refused.value.reason == "proxy_auth_required"
    with pytest.raises(ProxyError, match="wrong user or password"):
        tunnel_status(407, Proxy("p", 1, ("u", "bad")))


@pytest.mark.parametrize("status", [403, 502, 503])
def test_a_proxy_that_refuses_the_tunnel(status: int) -> None:
    opening = connect_opening(Proxy("p", 1), ("198.18.0.1", 7946))
    answer = opening.feed(f"HTTP/1.1 {status} No\r\nContent-Length: 0\r\n\r\n".encode())
    assert answer == (status, b"")
    with pytest.raises(ProxyError) as refused:
        tunnel_status(status, Proxy("p", 1))
    assert refused.value.reason == "proxy_refused"


@pytest.mark.parametrize(
    "garbage", [b"\x00\x00\x00\r\n\r\n", b"HTTP/1.1 abc OK\r\n\r\n", b"220 smtp ready\r\n\r\n"]
)
def test_a_proxy_that_answers_garbage(garbage: bytes) -> None:
    with pytest.raises(StreamError):
        connect_opening(Proxy("p", 1), ("198.18.0.1", 7946)).feed(garbage)
