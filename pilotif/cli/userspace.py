"""`up --userspace` and its options: a node with no root and no TUN, its SOCKS5 server
and HTTP proxy, --forward, --expose and --expose-udp; and the one line `up` says when it
cannot open a TUN (no root, no /dev/net/tun).

pilotif.userspace (the node and its network stack) is imported only by a `up --userspace`:
every other `pilotif` command defines `up` too, and would load it for nothing."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

import click

from pilotif.cli.common import CliError, host_port_option, secret_option

if TYPE_CHECKING:
    from pilotif.userspace.expose import Expose
    from pilotif.userspace.forward import Forward
    from pilotif.userspace.node import UserspaceOptions

SOCKS5_DEFAULT_TEXT: Final = "127.0.0.1:1080"
"""--socks5's default as `--help` shows it: pilotif.userspace.node's DEFAULT_SOCKS5 (a
unit test holds them equal), written out so that `--help` need not import the node."""
PROXY_CREDENTIALS_ENV: Final = "PILOTIF_PROXY_CREDENTIALS"
TUN_DEVICE: Final = Path("/dev/net/tun")
OFF: Final = "off"
_MAX_PORT: Final = 65535
F = TypeVar("F", bound=Callable[..., Any])


def userspace_options(function: F) -> F:
    """The options of `up` for a userspace node."""
    options = [
        click.option(
            "--userspace",
            is_flag=True,
            help="No root, no TUN: a network stack in the process; programs reach peers"
            " through --socks5, --http-proxy or --forward.",
        ),
        click.option(
            "--socks5",
            default=SOCKS5_DEFAULT_TEXT,
            show_default=True,
            help="Userspace: the SOCKS5 server's HOST:PORT (`off`: none).",
        ),
        click.option("--http-proxy", help="Userspace: an HTTP proxy at HOST:PORT."),
        click.option(
            "--forward",
            multiple=True,
            help="Userspace: LOCAL_PORT:PEER:PORT, a port on 127.0.0.1 that leads to PEER's"
            " PORT (repeatable).",
        ),
        click.option(
            "--expose",
            multiple=True,
            help="Userspace: PORT[=LOCAL_PORT], this node's overlay PORT leads to"
            " 127.0.0.1:LOCAL_PORT (repeatable; the port policy applies).",
        ),
        click.option(
            "--expose-udp",
            multiple=True,
            help="Userspace: PORT[=LOCAL_PORT], this node's overlay UDP PORT leads to"
            " 127.0.0.1:LOCAL_PORT, answers back (repeatable; the port policy applies).",
        ),
        click.option(
            "--proxy-credentials",
            envvar=PROXY_CREDENTIALS_ENV,
            callback=secret_option,
            help="Userspace: USER:PASSWORD the proxies require (SOCKS5 login, HTTP Basic),"
            f" or file:PATH; env {PROXY_CREDENTIALS_ENV}.",
        ),
        click.option(
            "--allow-remote-proxy",
            is_flag=True,
            help="Userspace: let the proxies listen beyond loopback (needs"
            " --proxy-credentials: whoever reaches them speaks as this node).",
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def require_tun() -> None:
    """One line naming --userspace when this process cannot open a TUN."""
    if os.geteuid() != 0:
        raise CliError(
            "pilotif up needs root for its TUN device; without root run"
            " `pilotif up --userspace` (SOCKS5, HTTP proxy, --forward, --expose)",
            "needs_root",
        )
    if not TUN_DEVICE.exists():
        raise CliError(
            f"pilotif up needs {TUN_DEVICE} (absent here); run `pilotif up --userspace`"
            " (SOCKS5, HTTP proxy, --forward, --expose)",
            "no_tun",
        )


def userspace_from(
    socks5: str,
    http_proxy: str | None,
    forward: tuple[str, ...],
    expose: tuple[str, ...],
    proxy_credentials: str | None,
    allow_remote_proxy: bool,
    expose_udp: tuple[str, ...] = (),
) -> UserspaceOptions:
    """The options given, checked (a non-loopback proxy needs the flag and credentials)."""
    from pilotif.userspace.node import UserspaceOptions, is_loopback

    socks = None if socks5 == OFF else host_port_option("--socks5", socks5)
    http = None if http_proxy is None else host_port_option("--http-proxy", http_proxy)
    credentials = None
    if proxy_credentials is not None:
        user, colon, password = proxy_credentials.partition(":")
        if not colon or not user or not password:
            raise CliError("--proxy-credentials takes USER:PASSWORD", "bad_input")
        credentials = (user, password)
    for option, endpoint in (("--socks5", socks), ("--http-proxy", http)):
        if endpoint is None or is_loopback(endpoint[0]):
            continue
        if not allow_remote_proxy or credentials is None:
            raise CliError(
                f"{option} {endpoint[0]} is not loopback: anyone who reaches it speaks to the"
                " overlay as this node; add --allow-remote-proxy and --proxy-credentials"
                " USER:PASSWORD, or listen on 127.0.0.1",
                "bad_input",
            )
    return UserspaceOptions(
        socks5=socks,
        http_proxy=http,
        forwards=tuple(_forward(text) for text in forward),
        exposes=tuple(_expose("--expose", text) for text in expose),
        udp_exposes=tuple(_expose("--expose-udp", text) for text in expose_udp),
        credentials=credentials,
        allow_remote=allow_remote_proxy,
    )


def _port(option: str, text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= _MAX_PORT:
        raise CliError(f"{option}: {text!r} is not a port (1-65535)", "bad_input")
    return int(text)


def _forward(text: str) -> Forward:
    from pilotif.userspace.forward import Forward

    local, _, rest = text.partition(":")
    peer, _, port = rest.rpartition(":")
    if not peer:
        raise CliError(f"--forward {text!r}: use LOCAL_PORT:PEER:PORT", "bad_input")
    return Forward(_port("--forward", local), peer, _port("--forward", port))


def _expose(option: str, text: str) -> Expose:
    from pilotif.userspace.expose import Expose

    port, equals, local = text.partition("=")
    exposed = _port(option, port)
    return Expose(exposed, _port(option, local) if equals else exposed)
