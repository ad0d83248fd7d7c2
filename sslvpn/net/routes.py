"""Longest-prefix route table over raw address bytes: VPC networks and owners of addresses.

The gateway asks two questions per packet: "is this destination inside the VPC networks?" and
"which session owns this address?". Both are longest-prefix lookups over a handful of prefix
lengths, done here with one dict per prefix length (checked longest first), so a lookup costs
one mask and one dict probe per distinct prefix length in use.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Generic, TypeVar

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
T = TypeVar("T")


class _Family(Generic[T]):
    __slots__ = ("bits", "by_length", "lengths")

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.by_length: dict[int, dict[int, T]] = {}
        self.lengths: list[tuple[int, int]] = []  # (prefix length, mask), longest first

    def reindex(self) -> None:
        full = (1 << self.bits) - 1
        self.lengths = [
            (length, full ^ ((1 << (self.bits - length)) - 1))
            for length in sorted(self.by_length, reverse=True)
        ]


class RouteTable(Generic[T]):
    """Maps networks to owners; ``lookup`` returns the owner of the longest matching prefix."""

    def __init__(self) -> None:
        self._families: dict[int, _Family[T]] = {4: _Family(32), 16: _Family(128)}

    def add(self, network: Network | str, owner: T) -> None:
        """Route ``network`` to ``owner`` (replacing an existing route for the same network)."""
        net = ipaddress.ip_network(network)
        family = self._families[len(net.network_address.packed)]
        table = family.by_length.setdefault(net.prefixlen, {})
        table[int(net.network_address)] = owner
        family.reindex()

    def remove(self, network: Network | str) -> T | None:
        """Drop the route for exactly ``network``; returns its owner if there was one."""
        net = ipaddress.ip_network(network)
        family = self._families[len(net.network_address.packed)]
        table = family.by_length.get(net.prefixlen)
        if table is None:
            return None
        owner = table.pop(int(net.network_address), None)
        if not table:
            del family.by_length[net.prefixlen]
            family.reindex()
        return owner

    def lookup(self, address: bytes) -> T | None:
        """Owner of the longest prefix containing ``address`` (4 or 16 raw bytes)."""
        family = self._families.get(len(address))
        if family is None:
            return None
        value = int.from_bytes(address, "big")
        for length, mask in family.lengths:
            owner = family.by_length[length].get(value & mask)
            if owner is not None:
                return owner
        return None

    def __contains__(self, address: bytes) -> bool:
        return self.lookup(address) is not None

    def networks(self) -> Iterator[tuple[Network, T]]:
        """Every route, for display."""
        for size, family in self._families.items():
            for length, table in family.by_length.items():
                for value, owner in table.items():
                    addr = ipaddress.ip_address(value.to_bytes(size, "big"))
                    yield ipaddress.ip_network(f"{addr}/{length}"), owner
