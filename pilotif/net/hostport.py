"""HOST:PORT, parsed in one place: an IPv4 address, an IPv6 address in brackets, or a host
name, then a port in range. Config files, CLI options and control messages all use it."""

import ipaddress
import re
from typing import Final

MAX_PORT: Final = 65535
_MAX_HOSTNAME_LENGTH: Final = 253
_HOST_LABEL: Final = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)", re.ASCII)
_PORT_DIGITS: Final = re.compile(r"[0-9]+", re.ASCII)
FORM: Final = "write HOST:PORT, like 198.18.0.2:51820, [fd00::1]:51820 or host.example:51820"


class HostPortError(ValueError):
    """Text that is not HOST:PORT; the message says what is wrong and how to write it."""


def parse_host_port(text: str, *, lowest_port: int = 1) -> tuple[str, int]:
    """(host, port) of HOST:PORT; the host is a normalized address literal or a name.

    `lowest_port` 0 also allows port 0 (any port, for a socket to listen on).
    """
    if text.startswith("["):
        host, close, port_text = text[1:].partition("]:")
        if not close:
            raise HostPortError(f"{text!r} is not HOST:PORT; {FORM}")
        try:
            host = str(ipaddress.IPv6Address(host))
        except ValueError:
            raise HostPortError(f"{text!r}: {host!r} is not an IPv6 address") from None
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon or not host:
            raise HostPortError(f"{text!r} is not HOST:PORT; {FORM}")
        if ":" in host:
            raise HostPortError(f"{text!r}: put an IPv6 address in brackets, [{host}]")
        host = _ipv4_or_name(text, host)
    if not _PORT_DIGITS.fullmatch(port_text):
        raise HostPortError(f"{text!r}: the port must be a number, got {port_text!r}")
    # Compare lengths first: int() refuses strings of thousands of digits.
    port = int(port_text) if len(port_text) <= len(str(MAX_PORT)) else MAX_PORT + 1
    if not lowest_port <= port <= MAX_PORT:
        raise HostPortError(f"{text!r}: port {port_text} is out of range {lowest_port}..{MAX_PORT}")
    return host, port


def parse_address_port(text: str) -> tuple[str, int]:
    """(address, port) of `ip:port` or `[ip6]:port` with an address literal, no name."""
    host, port = parse_host_port(text)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise HostPortError(f"{text!r}: {host!r} is not an IP address") from None
    return host, port


def _ipv4_or_name(text: str, host: str) -> str:
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        pass
    labels = host.removesuffix(".").split(".")
    if (
        len(host) > _MAX_HOSTNAME_LENGTH
        or not all(_HOST_LABEL.fullmatch(label) for label in labels)
        or labels[-1].isdigit()
    ):
        raise HostPortError(f"{text!r}: {host!r} is neither an IPv4 address nor a host name")
    return host


def format_endpoint(endpoint: tuple[str, int]) -> str:
    """`ip:port`, or `[ip6]:port`: how endpoints travel in control messages and logs."""
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
