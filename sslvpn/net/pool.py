"""Client address pool: hands out tunnel addresses, preferring each certificate's stored lease.

The first host of the pool network is the gateway's own tunnel address (``route-gateway``);
clients get the others. A certificate asks with its stored lease as ``preferred`` and keeps
that address across reconnects while nobody else holds it. Fresh allocations avoid addresses
that are stored leases of other certificates while any never-leased address is left, so a
returning client usually finds its address free.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class PoolExhausted(Exception):
    """Every client address of the pool is in use."""


class AddressPool:
    """Addresses in use by live sessions; the stored leases live in the store, not here."""

    def __init__(self, network: IPNetwork | str) -> None:
        self.network: IPNetwork = ipaddress.ip_network(network)
        if self.network.num_addresses < 4:
            raise ValueError(f"pool {self.network} is too small for a gateway and a client")
        self.gateway: IPAddress = self.network.network_address + 1
        self._first = int(self.network.network_address) + 2
        # the last address of an IPv4 network is its broadcast address
        self._last = int(self.network.broadcast_address) - (1 if self.network.version == 4 else 0)
        self._in_use: set[int] = set()

    @property
    def capacity(self) -> int:
        return self._last - self._first + 1

    def in_use(self) -> set[IPAddress]:
        return {ipaddress.ip_address(value) for value in self._in_use}

    def is_client_address(self, address: IPAddress) -> bool:
        return address.version == self.network.version and (
            self._first <= int(address) <= self._last
        )

    def allocate(
        self,
        *,
        preferred: IPAddress | str | None = None,
        avoid: Collection[IPAddress] = (),
    ) -> IPAddress:
        """Take ``preferred`` when it is a free client address, else the lowest free one.

        ``avoid`` (other certificates' stored leases) is used only when nothing else is free.
        """
        if preferred is not None:
            wanted = ipaddress.ip_address(preferred)
            if self.is_client_address(wanted) and int(wanted) not in self._in_use:
                self._in_use.add(int(wanted))
                return wanted
        avoided = {int(a) for a in avoid}
        fallback: int | None = None
        for value in range(self._first, self._last + 1):
            if value in self._in_use:
                continue
            if value not in avoided:
                self._in_use.add(value)
                return ipaddress.ip_address(value)
            if fallback is None:
                fallback = value
        if fallback is None:
            raise PoolExhausted(f"no free address in {self.network}")
        self._in_use.add(fallback)
        return ipaddress.ip_address(fallback)

    def release(self, address: IPAddress | str) -> None:
        """Return ``address`` to the pool (unknown addresses are ignored)."""
        self._in_use.discard(int(ipaddress.ip_address(address)))
