"""Configure the TUN link over netlink (pyroute2): MTU, addresses, state and routes, and
the guard that keeps its addresses off every other interface (`pilotif.tun.guard`).

Everything acts in the caller's current network namespace and is safe to repeat:
addresses and routes are written with replace semantics, the guard replaced whole.
"""

import errno
import logging
import os
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from ipaddress import IPv4Interface, IPv4Network, IPv6Interface, IPv6Network
from pathlib import Path
from typing import TYPE_CHECKING, Final

from pilotif.packet.ip import IPV6_MIN_MTU
from pilotif.tun.guard import GuardError, guard_overlay_addresses, remove_guard
from pilotif.util.logs import log_event

if TYPE_CHECKING:  # at run time imported where used: a userspace node (no TUN) imports
    # this package for its LocalStack and may have no pyroute2 (netlink is Linux's)
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

# Address flag: use the IPv6 address at once, without duplicate address detection.
_IFA_F_NODAD: Final = 0x02
_RT_SCOPE_UNIVERSE: Final = 0
_RT_SCOPE_LINK: Final = 253
_FAMILY: Final = {4: socket.AF_INET, 6: socket.AF_INET6}
_DISABLE_IPV6_SYSCTL: Final = "/proc/sys/net/ipv6/conf/{name}/disable_ipv6"


class LinkError(Exception):
    """A netlink request failed; the message names the link and what to do."""


class Ipv6UnavailableError(LinkError):
    """IPv6 is off for this link and cannot be switched on (e.g. a container's
    read-only /proc/sys)."""


def link_exists(name: str) -> bool:
    """Whether a network device called `name` exists in this namespace."""
    with _netlink(name, "look up") as ipr:
        return bool(ipr.link_lookup(ifname=name))


def delete_link(name: str) -> bool:
    """Remove the device `name` and its guard; True if a device was removed, False if
    there was none."""
    try:
        remove_guard(name)
    except GuardError as error:
        log_event("overlay_guard_not_removed", level=logging.WARNING, error=str(error))
    from pyroute2.netlink.exceptions import NetlinkError

    with _netlink(name, "delete") as ipr:
        indices = ipr.link_lookup(ifname=name)
        if not indices:
            return False
        try:
            ipr.link("del", index=indices[0])
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return False
            raise
        return True


def configure_link(
    name: str,
    addresses: Sequence[IPv4Interface | IPv6Interface],
    mtu: int,
    routes: Sequence[IPv4Network | IPv6Network],
) -> None:
    """Set the MTU, add the addresses, bring `name` up and route `routes` to it; guard
    the addresses so that only `name` reaches them (a warning when nftables cannot).

    A network already covered by the connected route of one of the addresses gets no
    route of its own.
    """
    has_ipv6 = any(address.version == 6 for address in addresses)
    if has_ipv6 and mtu < IPV6_MIN_MTU:
        raise LinkError(
            f"cannot configure {name}: MTU {mtu} is below {IPV6_MIN_MTU}, the minimum for IPv6; "
            f"raise the MTU or drop the IPv6 address"
        )
    with _netlink(name, "configure") as ipr:
        index = _index(ipr, name)
        with _step(name, f"set MTU {mtu} on"):
            ipr.link("set", index=index, mtu=mtu)
        if has_ipv6:
            _enable_ipv6(name)
        for address in addresses:
            with _step(name, f"add address {address} to"):
                _add_address(ipr, index, address)
        with _step(name, "bring up"):
            ipr.link("set", index=index, state="up")
        for network in routes:
            if _connected(network, addresses):
                continue
            with _step(name, f"add route {network} to"):
                _replace_route(ipr, index, network)
    try:
        guard_overlay_addresses(name, addresses)
    except GuardError as error:
        log_event("overlay_guard_unavailable", level=logging.WARNING, error=str(error))


def limit_gso_segments(name: str, segments: int) -> bool:
    """Cap the TCP segments the kernel puts in one super-packet for `name` (TSO reads);
    whether the kernel took it.

    A super-packet whose segments fit one UDP GSO send leaves as one send and arrives as
    one GRO receive, one write into the peer's TUN and one ACK back.
    """
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        with IPRoute() as ipr:
            ipr.link("set", index=_index(ipr, name), gso_max_segs=segments)
    except NetlinkError:
        return False
    return True


def _connected(
    network: IPv4Network | IPv6Network, addresses: Sequence[IPv4Interface | IPv6Interface]
) -> bool:
    """Whether the kernel's connected route of one of `addresses` already covers `network`."""
    return any(
        network.version == address.version
        and network.prefixlen >= address.network.prefixlen
        and network.network_address in address.network
        for address in addresses
    )


def _add_address(ipr: "IPRoute", index: int, address: IPv4Interface | IPv6Interface) -> None:
    ipr.addr(
        "replace",
        index=index,
        address=str(address.ip),
        prefixlen=address.network.prefixlen,
        family=_FAMILY[address.version],
        flags=_IFA_F_NODAD if address.version == 6 else 0,
    )


def _replace_route(ipr: "IPRoute", index: int, network: IPv4Network | IPv6Network) -> None:
    # Scope link for IPv4, as `ip route add NET dev NAME` sets for a route without a gateway.
    ipr.route(
        "replace",
        dst=str(network),
        oif=index,
        family=_FAMILY[network.version],
        scope=_RT_SCOPE_LINK if network.version == 4 else _RT_SCOPE_UNIVERSE,
    )


def _enable_ipv6(name: str) -> None:
    sysctl = Path(_DISABLE_IPV6_SYSCTL.format(name=name))
    try:
        if sysctl.read_text().strip() != "0":
            sysctl.write_text("0")
    except FileNotFoundError:
        raise Ipv6UnavailableError(
            f"cannot add IPv6 addresses to {name}: IPv6 is disabled in this kernel "
            f"(ipv6.disable=1); enable it or use IPv4 addresses only"
        ) from None
    except OSError as exc:
        raise Ipv6UnavailableError(
            f"cannot enable IPv6 on {name} ({sysctl}: {exc.strerror}); "
            f"set net.ipv6.conf.{name}.disable_ipv6=0 or use IPv4 addresses only"
        ) from None


def _index(ipr: "IPRoute", name: str) -> int:
    indices: list[int] = ipr.link_lookup(ifname=name)
    if not indices:
        raise LinkError(f"no network device named {name}; open the TUN device first")
    return indices[0]


@contextmanager
def _netlink(name: str, action: str) -> Iterator["IPRoute"]:
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        with IPRoute() as ipr:
            yield ipr
    except NetlinkError as exc:
        raise LinkError(_describe(name, action, exc)) from None


@contextmanager
def _step(name: str, action: str) -> Iterator[None]:
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        yield
    except NetlinkError as exc:
        raise LinkError(_describe(name, action, exc)) from None


def _describe(name: str, action: str, exc: "NetlinkError") -> str:
    code: int = exc.code
    reason = errno.errorcode.get(code, str(code))
    if code == errno.EPERM:
        hint = "run as root or grant CAP_NET_ADMIN"
    elif code == errno.EINVAL:
        hint = "the kernel rejected the value; check the MTU (68..65535) and the addresses"
    elif code == errno.ENODEV:
        hint = "the device disappeared; is pilotif still running?"
    elif code == errno.EEXIST:
        hint = "something else already configured this; check `ip addr` and `ip route`"
    else:
        hint = "see `ip addr` and `ip route` for the current state"
    return f"cannot {action} {name}: {os.strerror(code)} ({reason}); {hint}"
