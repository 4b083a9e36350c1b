"""Read wg-quick style configuration files ([Interface] and [Peer] sections).

The file format is the one of `wg-quick(8)`, restricted to what pilotif implements:

    [Interface]
    PrivateKey = <base64>
    Address = 100.64.0.1/24, fd7a:115c:a1e0::1/64
    ListenPort = 51820
    MTU = 1420

    [Peer]
    PublicKey = <base64>
    PresharedKey = <base64>
    AllowedIPs = 100.64.0.2/32, fd7a:115c:a1e0::2/128
    Endpoint = 198.18.0.2:51820
    PersistentKeepalive = 25

This is a small line parser rather than `configparser`, because configparser cannot
hold repeated [Peer] sections and cannot say on which line a problem is; every
ConfigError here names the file and the line, and says what to do.
"""

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Interface, IPv4Network, IPv6Interface, IPv6Network
from pathlib import Path
from typing import Final, TypeVar

from pilotif.net.hostport import MAX_PORT, HostPortError, parse_host_port
from pilotif.packet.ip import IPV6_MIN_MTU
from pilotif.wg.crypto import public_key
from pilotif.wg.keys import decode_key

MIN_MTU: Final = 576
MAX_MTU: Final = 65535
# IPv6 refuses links whose MTU is below this (RFC 8200 section 5).
MAX_KEEPALIVE_S: Final = 65535

_DIGITS: Final = re.compile(r"[0-9]+", re.ASCII)
_UNSUPPORTED_KEYS: Final = {
    key.lower(): key
    for key in ("DNS", "Table", "PreUp", "PostUp", "PreDown", "PostDown", "SaveConfig", "FwMark")
}


@dataclass(frozen=True)
class PeerConfig:
    """One [Peer] section."""

    public_key: bytes
    preshared_key: bytes | None
    allowed_ips: tuple[IPv4Network | IPv6Network, ...]
    endpoint: tuple[str, int] | None
    """Host (an IP address without brackets, or a name to resolve) and UDP port."""
    persistent_keepalive_s: int | None


@dataclass(frozen=True)
class InterfaceConfig:
    """The [Interface] section and its peers."""

    private_key: bytes
    addresses: tuple[IPv4Interface | IPv6Interface, ...]
    listen_port: int | None
    """None: let the kernel pick a port."""
    mtu: int | None
    """None: the daemon picks its default."""
    peers: tuple[PeerConfig, ...]


class ConfigError(ValueError):
    """A configuration file that cannot be used: "PATH:LINE: what is wrong and what to do"."""

    def __init__(self, path: str, line: int | None, message: str) -> None:
        where = path if line is None else f"{path}:{line}"
        super().__init__(f"{where}: {message}")
        self.path = path
        self.line = line
        self.message = message


def load_config(path: str | Path) -> InterfaceConfig:
    """Read and parse the configuration file at `path`."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(name, None, "the file is not UTF-8 text; save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError(name, None, f"cannot read the file: {exc.strerror}") from None
    return parse_config(text, name)


def parse_config(text: str, path: str = "<config>") -> InterfaceConfig:
    """Parse configuration text; `path` only serves to name the file in errors."""
    return _Parser(path).parse(text)


class _Invalid(Exception):
    """A problem with one line; the parser adds the file and line number."""


@dataclass
class _InterfaceDraft:
    line: int
    seen: dict[str, int] = field(default_factory=dict)
    private_key: bytes | None = None
    addresses: list[IPv4Interface | IPv6Interface] = field(default_factory=list)
    listen_port: int | None = None
    mtu: int | None = None


@dataclass
class _PeerDraft:
    line: int
    seen: dict[str, int] = field(default_factory=dict)
    public_key: bytes | None = None
    preshared_key: bytes | None = None
    allowed_ips: list[tuple[IPv4Network | IPv6Network, int]] = field(default_factory=list)
    endpoint: tuple[str, int] | None = None
    persistent_keepalive_s: int | None = None


_Draft = TypeVar("_Draft", _InterfaceDraft, _PeerDraft)


class _Parser:
    def __init__(self, path: str) -> None:
        self.path = path
        self.interface: _InterfaceDraft | None = None
        self.peers: list[_PeerDraft] = []
        self.section: _InterfaceDraft | _PeerDraft | None = None

    def parse(self, text: str) -> InterfaceConfig:
        for number, raw in enumerate(text.removeprefix("\ufeff").split("\n"), start=1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            try:
                if line.startswith("["):
                    self._start_section(line, number)
                else:
                    self._assign(line, number)
            except _Invalid as exc:
                raise ConfigError(self.path, number, str(exc)) from None
        return self._finish()

    def _start_section(self, line: str, number: int) -> None:
        name = line[1:-1].strip().lower() if line.endswith("]") else ""
        if name == "interface":
            if self.interface is not None:
                raise _Invalid(
                    f"a second [Interface] section (the first is on line {self.interface.line});"
                    " a file describes one interface, merge them"
                )
            self.interface = _InterfaceDraft(number)
            self.section = self.interface
        elif name == "peer":
            peer = _PeerDraft(number)
            self.peers.append(peer)
            self.section = peer
        else:
            raise _Invalid(f"unknown section {line!r}; expected [Interface] or [Peer]")

    def _assign(self, line: str, number: int) -> None:
        key, equals, value = line.partition("=")
        key = key.strip()
        value = value.strip()
        if not equals:
            raise _Invalid(f"expected 'Key = Value', got {line!r}")
        lowered = key.lower()
        if lowered in _UNSUPPORTED_KEYS:
            raise _Invalid(f"{_UNSUPPORTED_KEYS[lowered]} is not supported by pilotif; remove it")
        section = self.section
        if section is None:
            raise _Invalid(f"{key!r} is outside a section; put it under [Interface] or [Peer]")
        if isinstance(section, _InterfaceDraft):
            _apply(section, _INTERFACE_KEYS, _PEER_KEYS, key, value, number)
        else:
            _apply(section, _PEER_KEYS, _INTERFACE_KEYS, key, value, number)

    def _finish(self) -> InterfaceConfig:
        interface = self.interface
        if interface is None:
            raise ConfigError(
                self.path, None, "no [Interface] section; add one with PrivateKey and Address"
            )
        if interface.private_key is None:
            raise ConfigError(
                self.path,
                interface.line,
                "[Interface] has no PrivateKey; add PrivateKey = <output of `wg genkey`>",
            )
        if interface.mtu is not None and interface.mtu < IPV6_MIN_MTU:
            ipv6 = [str(a) for a in interface.addresses if a.version == 6]
            if ipv6:
                raise ConfigError(
                    self.path,
                    interface.seen["MTU"],
                    f"MTU {interface.mtu} is below {IPV6_MIN_MTU}, the minimum for IPv6 address"
                    f" {ipv6[0]}; raise MTU to at least {IPV6_MIN_MTU}",
                )
        return InterfaceConfig(
            private_key=interface.private_key,
            addresses=tuple(interface.addresses),
            listen_port=interface.listen_port,
            mtu=interface.mtu,
            peers=self._finish_peers(public_key(interface.private_key)),
        )

    def _finish_peers(self, own_public_key: bytes) -> tuple[PeerConfig, ...]:
        peer_lines: dict[bytes, int] = {}
        network_owners: dict[IPv4Network | IPv6Network, int] = {}
        peers = []
        for peer in self.peers:
            if peer.public_key is None:
                raise ConfigError(
                    self.path, peer.line, "[Peer] has no PublicKey; add PublicKey = <base64 key>"
                )
            key_line = peer.seen["PublicKey"]
            if peer.public_key == own_public_key:
                raise ConfigError(
                    self.path,
                    key_line,
                    "this PublicKey is the interface's own key; list other nodes as peers",
                )
            if peer.public_key in peer_lines:
                raise ConfigError(
                    self.path,
                    key_line,
                    f"this peer is already listed (line {peer_lines[peer.public_key]});"
                    " merge the two [Peer] sections",
                )
            peer_lines[peer.public_key] = peer.line
            for network, line in peer.allowed_ips:
                if network in network_owners:
                    raise ConfigError(
                        self.path,
                        line,
                        f"AllowedIPs {network} already belongs to the [Peer] on line"
                        f" {network_owners[network]}; a network routes to one peer only",
                    )
            network_owners.update((network, peer.line) for network, _ in peer.allowed_ips)
            peers.append(
                PeerConfig(
                    public_key=peer.public_key,
                    preshared_key=peer.preshared_key,
                    allowed_ips=tuple(network for network, _ in peer.allowed_ips),
                    endpoint=peer.endpoint,
                    persistent_keepalive_s=peer.persistent_keepalive_s,
                )
            )
        return tuple(peers)


def _set_private_key(section: _InterfaceDraft, value: str, line: int) -> None:
    section.private_key = _key("PrivateKey", value, hint="generate one with `wg genkey`")


def _add_addresses(section: _InterfaceDraft, value: str, line: int) -> None:
    for item in _items("Address", value):
        address = _address(item)
        if address in section.addresses:
            raise _Invalid(f"Address {address} is listed twice; keep one")
        section.addresses.append(address)


def _set_listen_port(section: _InterfaceDraft, value: str, line: int) -> None:
    port = _number("ListenPort", value, 0, MAX_PORT, hint="use 1..65535, or 0 for any port")
    section.listen_port = port or None


def _set_mtu(section: _InterfaceDraft, value: str, line: int) -> None:
    section.mtu = _number("MTU", value, MIN_MTU, MAX_MTU, hint="1420 suits most links")


def _set_public_key(section: _PeerDraft, value: str, line: int) -> None:
    section.public_key = _key("PublicKey", value, hint="copy it from `wg pubkey`")


def _set_preshared_key(section: _PeerDraft, value: str, line: int) -> None:
    section.preshared_key = _key("PresharedKey", value, hint="generate one with `wg genpsk`")


def _add_allowed_ips(section: _PeerDraft, value: str, line: int) -> None:
    for item in _items("AllowedIPs", value):
        network = _network(item)
        if any(network == listed for listed, _ in section.allowed_ips):
            raise _Invalid(f"AllowedIPs {network} is listed twice for this peer; keep one")
        section.allowed_ips.append((network, line))


def _set_endpoint(section: _PeerDraft, value: str, line: int) -> None:
    section.endpoint = _endpoint(value)


def _set_keepalive(section: _PeerDraft, value: str, line: int) -> None:
    if value.lower() == "off":
        section.persistent_keepalive_s = None
        return
    seconds = _number(
        "PersistentKeepalive", value, 0, MAX_KEEPALIVE_S, hint="use seconds (25 is usual) or off"
    )
    section.persistent_keepalive_s = seconds or None


_INTERFACE_KEYS: Final[dict[str, tuple[str, Callable[[_InterfaceDraft, str, int], None]]]] = {
    "privatekey": ("PrivateKey", _set_private_key),
    "address": ("Address", _add_addresses),
    "listenport": ("ListenPort", _set_listen_port),
    "mtu": ("MTU", _set_mtu),
}
_PEER_KEYS: Final[dict[str, tuple[str, Callable[[_PeerDraft, str, int], None]]]] = {
    "publickey": ("PublicKey", _set_public_key),
    "presharedkey": ("PresharedKey", _set_preshared_key),
    "allowedips": ("AllowedIPs", _add_allowed_ips),
    "endpoint": ("Endpoint", _set_endpoint),
    "persistentkeepalive": ("PersistentKeepalive", _set_keepalive),
}
_REPEATABLE_KEYS: Final = frozenset({"Address", "AllowedIPs"})


def _apply(
    section: _Draft,
    own: Mapping[str, tuple[str, Callable[[_Draft, str, int], None]]],
    other: Mapping[str, tuple[str, object]],
    key: str,
    value: str,
    number: int,
) -> None:
    lowered = key.lower()
    if lowered not in own:
        if lowered in other:
            other_section = "[Peer]" if isinstance(section, _InterfaceDraft) else "[Interface]"
            raise _Invalid(f"{other[lowered][0]} belongs in the {other_section} section")
        expected = ", ".join(canonical for canonical, _ in own.values())
        raise _Invalid(f"unknown key {key!r}; expected one of: {expected}")
    canonical, handler = own[lowered]
    if not value:
        raise _Invalid(f"{canonical} has no value; give one or remove the line")
    if canonical not in _REPEATABLE_KEYS and canonical in section.seen:
        raise _Invalid(
            f"{canonical} appears twice in this section (first on line"
            f" {section.seen[canonical]}); keep one"
        )
    section.seen.setdefault(canonical, number)
    handler(section, value, number)


def _key(name: str, value: str, *, hint: str) -> bytes:
    try:
        return decode_key(value)
    except ValueError as exc:  # InvalidKeyError, or base64's own for non-ASCII text
        raise _Invalid(f"bad {name}: {exc}; {hint}") from None


def _items(name: str, value: str) -> list[str]:
    items = [item.strip() for item in value.split(",")]
    if not all(items):
        raise _Invalid(f"{name} has an empty item in {value!r}; remove the extra comma")
    return items


def _address(text: str) -> IPv4Interface | IPv6Interface:
    try:
        address = ipaddress.ip_interface(text)
    except ValueError:
        raise _Invalid(
            f"bad Address {text!r}; write an IP address with its prefix length,"
            " like 100.64.0.1/24 or fd7a:115c:a1e0::1/64"
        ) from None
    if isinstance(address, IPv6Interface) and address.scope_id:
        raise _Invalid(f"Address {text!r} has a scope (%); remove it")
    ip = address.ip
    if ip.is_unspecified or ip.is_multicast or ip.is_loopback:
        raise _Invalid(f"Address {text!r} cannot be an interface address; use a unicast address")
    return address


def _network(text: str) -> IPv4Network | IPv6Network:
    try:
        network = ipaddress.ip_network(text)
    except ValueError:
        try:
            corrected = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise _Invalid(
                f"bad AllowedIPs {text!r}; write networks like 100.64.0.2/32 or fd7a::/48"
            ) from None
        raise _Invalid(
            f"AllowedIPs {text!r} has host bits set; write {corrected} instead"
        ) from None
    if isinstance(network, IPv6Network) and network.network_address.scope_id:
        raise _Invalid(f"AllowedIPs {text!r} has a scope (%); remove it")
    return network


def _endpoint(text: str) -> tuple[str, int]:
    try:
        return parse_host_port(text)
    except HostPortError as error:
        raise _Invalid(f"bad Endpoint {error}") from None


def _number(name: str, text: str, low: int, high: int, *, hint: str) -> int:
    if not _DIGITS.fullmatch(text):
        raise _Invalid(f"{name} must be a number, got {text!r}; {hint}")
    # Compare lengths first: int() refuses strings of thousands of digits.
    significant = text.lstrip("0")
    number = int(significant or "0") if len(significant) <= len(str(high)) else high + 1
    if not low <= number <= high:
        raise _Invalid(f"{name} {text} is out of range {low}..{high}; {hint}")
    return number
