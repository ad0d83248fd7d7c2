"""Client address pool: hands out tunnel addresses and remembers each certificate's lease.

The first host of the pool network is the gateway's own tunnel address (``route-gateway``);
clients get the others. Every address handed out becomes the asking owner's (certificate
serial's) lease, taken from whoever held it before. An owner gets its leased address back
while nobody else is using it; fresh allocations take the lowest free address that is nobody's
lease, and only when none is left the lowest free leased one, so a returning client usually
finds its address free. The store keeps the leases across restarts (``restore_leases``).

Allocation is O(log n) amortised whatever the number of sessions: addresses above a cursor
were never looked at, and free addresses below it wait in two lazily cleaned min-heaps
(unleased and leased), so the pool never scans the addresses in use.
"""

from __future__ import annotations

import heapq
import ipaddress
from collections.abc import Mapping

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
MIN_COMPACT = 1024  # heap entries tolerated before stale ones are swept out


class PoolExhausted(Exception):
    """Every client address of the pool is in use."""


class AddressPool:
    """Addresses in use by live sessions and the lease of each owner, all in memory."""

    def __init__(self, network: IPNetwork | str) -> None:
        self.network: IPNetwork = ipaddress.ip_network(network)
        if self.network.num_addresses < 4:
            raise ValueError(f"pool {self.network} is too small for a gateway and a client")
        self.gateway: IPAddress = self.network.network_address + 1
        self._first = int(self.network.network_address) + 2
        # the last address of an IPv4 network is its broadcast address
        self._last = int(self.network.broadcast_address) - (1 if self.network.version == 4 else 0)
        self._in_use: set[int] = set()
        self._lease_of: dict[str, int] = {}  # owner -> address
        self._owner_of: dict[int, str] = {}  # address -> owner
        self._cursor = self._first  # addresses from here on were never looked at
        # free addresses below the cursor; entries go stale when taken and are dropped lazily
        self._unleased: list[int] = []
        self._leased: list[int] = []
        self._compact_at = MIN_COMPACT

    @property
    def capacity(self) -> int:
        return self._last - self._first + 1

    def in_use(self) -> set[IPAddress]:
        return {ipaddress.ip_address(value) for value in self._in_use}

    def is_client_address(self, address: IPAddress) -> bool:
        return address.version == self.network.version and (
            self._first <= int(address) <= self._last
        )

    def restore_leases(self, leases: Mapping[str, str]) -> None:
        """Load the stored leases (owner -> address) before the first allocation.

        Addresses outside this pool (another gateway's, an old pool's) are ignored.
        """
        for owner, text in leases.items():
            address = ipaddress.ip_address(text)
            if self.is_client_address(address):
                self._set_lease(owner, int(address))

    def lease_of(self, owner: str) -> IPAddress | None:
        value = self._lease_of.get(owner)
        return None if value is None else ipaddress.ip_address(value)

    def leases(self) -> dict[str, IPAddress]:
        """Every lease, owner -> address (for tests and diagnostics)."""
        return {owner: ipaddress.ip_address(v) for owner, v in self._lease_of.items()}

    def allocate(self, owner: str) -> IPAddress:
        """``owner``'s lease when free, else the lowest free unleased address, else the
        lowest free leased one; the address becomes ``owner``'s lease."""
        value = self._lease_of.get(owner)
        if value is None or value in self._in_use:
            value = self._lowest_unleased()
            if value is None:
                value = self._lowest_leased()
            if value is None:
                raise PoolExhausted(f"no free address in {self.network}")
        self._in_use.add(value)
        self._set_lease(owner, value)
        return ipaddress.ip_address(value)

    def release(self, address: IPAddress | str) -> None:
        """Return ``address`` to the pool (its lease stays; unknown addresses are ignored)."""
        value = int(ipaddress.ip_address(address))
        if value not in self._in_use:
            return
        self._in_use.discard(value)
        if value < self._cursor:
            heap = self._leased if value in self._owner_of else self._unleased
            heapq.heappush(heap, value)
            if len(heap) > self._compact_at:
                self._compact()

    def _set_lease(self, owner: str, value: int) -> None:
        previous_owner = self._owner_of.get(value)
        if previous_owner is not None and previous_owner != owner:
            del self._lease_of[previous_owner]
        previous = self._lease_of.get(owner)
        if previous is not None and previous != value:
            del self._owner_of[previous]  # in use by the owner's older session: never free here
        self._lease_of[owner] = value
        self._owner_of[value] = owner

    def _lowest_unleased(self) -> int | None:
        heap = self._unleased
        while heap:
            value = heap[0]
            if value not in self._in_use and value not in self._owner_of:
                return value
            heapq.heappop(heap)  # taken since, and if released again it sits in ``_leased``
        while self._cursor <= self._last:
            value = self._cursor
            if value not in self._in_use:
                if value not in self._owner_of:
                    return value
                heapq.heappush(self._leased, value)
            self._cursor += 1  # in-use addresses are pushed when released
        return None

    def _lowest_leased(self) -> int | None:
        """Called after ``_lowest_unleased`` found nothing: every free address is leased."""
        heap = self._leased
        while heap:
            value = heap[0]
            if value not in self._in_use:
                return value
            heapq.heappop(heap)
        return None

    def _compact(self) -> None:
        """Drop stale and duplicate heap entries so memory follows the free addresses."""
        free = [v for v in set(self._unleased) | set(self._leased) if v not in self._in_use]
        self._unleased = sorted(v for v in free if v not in self._owner_of)
        self._leased = sorted(v for v in free if v in self._owner_of)
        self._compact_at = max(MIN_COMPACT, 2 * (len(self._unleased) + len(self._leased)))
