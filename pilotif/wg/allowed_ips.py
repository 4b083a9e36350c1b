"""Cryptokey routing: which peer owns an overlay address (whitepaper section 2).

One dict per prefix length maps the prefix (as an int) to its owner; a lookup
probes the prefix lengths in use, longest first. Lookups take raw address
bytes so the packet path builds no ipaddress objects.
"""

from ipaddress import IPv4Network, IPv6Network
from typing import Generic, TypeVar

from pilotif.wg.crypto import BytesLike

T = TypeVar("T")

_IPV4_BITS = 32
_IPV6_BITS = 128
_BITS_BY_SIZE = {4: _IPV4_BITS, 16: _IPV6_BITS}


class _Family(Generic[T]):
    """The prefixes of one address family."""

    __slots__ = ("bits", "by_length", "lengths")

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.by_length: dict[int, dict[int, T]] = {}
        self.lengths: list[int] = []
        """Prefix lengths in use, longest first."""

    def insert(self, prefix_length: int, prefix: int, value: T) -> None:
        table = self.by_length.get(prefix_length)
        if table is None:
            table = self.by_length[prefix_length] = {}
            self.lengths = sorted(self.by_length, reverse=True)
        table[prefix] = value

    def remove_value(self, value: T) -> None:
        for prefix_length, table in list(self.by_length.items()):
            for prefix in [prefix for prefix, owner in table.items() if owner == value]:
                del table[prefix]
            if not table:
                del self.by_length[prefix_length]
        self.lengths = sorted(self.by_length, reverse=True)

    def lookup(self, address: int) -> T | None:
        for prefix_length in self.lengths:
            owner = self.by_length[prefix_length].get(address >> (self.bits - prefix_length))
            if owner is not None:
                return owner
        return None


class AllowedIPs(Generic[T]):
    """A longest-prefix-match table from IPv4/IPv6 networks to their owners (peers)."""

    def __init__(self) -> None:
        self._families: dict[int, _Family[T]] = {
            _IPV4_BITS: _Family(_IPV4_BITS),
            _IPV6_BITS: _Family(_IPV6_BITS),
        }

    def insert(self, network: IPv4Network | IPv6Network, value: T) -> None:
        """Give `network` to `value`, taking it from its previous owner if any."""
        family = self._families[network.max_prefixlen]
        prefix = int(network.network_address) >> (family.bits - network.prefixlen)
        family.insert(network.prefixlen, prefix, value)

    def remove_value(self, value: T) -> None:
        """Forget every network of `value`."""
        for family in self._families.values():
            family.remove_value(value)

    def lookup(self, address: BytesLike) -> T | None:
        """The owner of the longest prefix containing the 4- or 16-byte address, if any."""
        bits = _BITS_BY_SIZE.get(len(address))
        if bits is None:
            return None
        return self._families[bits].lookup(int.from_bytes(address, "big"))

    def networks_of(self, value: T) -> list[IPv4Network | IPv6Network]:
        """The networks that `value` owns, IPv4 first, longest prefixes first."""
        networks: list[IPv4Network | IPv6Network] = []
        for family in self._families.values():
            for prefix_length in family.lengths:
                for prefix, owner in family.by_length[prefix_length].items():
                    if owner == value:
                        address = prefix << (family.bits - prefix_length)
                        networks.append(_network(family.bits, address, prefix_length))
        return networks


def _network(bits: int, address: int, prefix_length: int) -> IPv4Network | IPv6Network:
    if bits == _IPV4_BITS:
        return IPv4Network((address, prefix_length))
    return IPv6Network((address, prefix_length))
