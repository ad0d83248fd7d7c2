"""The Security Association Database: inbound SAs by SPI, each tagged with its owner (tunnel).

The runtime asks one question per ESP datagram: "which SA (and so which tunnel) does this SPI
belong to, and what is inside?". Inbound SAs stay here until the IKE core deletes them, so
an old SA keeps working during a rekey (RFC 7296 section 2.8) until its DELETE completes.
Unknown SPIs and short packets are counted drops, like every other ESP failure.
"""

from __future__ import annotations

from collections import Counter
from typing import Generic, TypeVar

from sslvpn.ipsec.esp.packet import DropReason, InboundSa, peek_spi

T = TypeVar("T")


class Sad(Generic[T]):
    """Inbound SAs keyed by our SPI; ``open`` routes a datagram to its SA and owner."""

    __slots__ = ("_inbound", "drops")

    def __init__(self) -> None:
        self._inbound: dict[int, tuple[InboundSa, T]] = {}
        self.drops: Counter[DropReason] = Counter()  # drops before an SA was found

    def add(self, sa: InboundSa, owner: T) -> None:
        """Install an inbound SA; an SPI is ours alone, so a clash is a caller bug."""
        if sa.spi in self._inbound:
            raise ValueError(f"inbound SPI {sa.spi:08x} already installed")
        self._inbound[sa.spi] = (sa, owner)

    def remove(self, spi: int) -> InboundSa | None:
        """Forget the SA with this inbound SPI (after its DELETE), returning it if present."""
        entry = self._inbound.pop(spi, None)
        return entry[0] if entry else None

    def __len__(self) -> int:
        return len(self._inbound)

    def __contains__(self, spi: object) -> bool:
        return spi in self._inbound

    def owner(self, packet: bytes) -> T | None:
        """Whose SA a datagram names (to file a drop under its tunnel), if anyone's."""
        spi = peek_spi(packet)
        entry = self._inbound.get(spi) if spi is not None else None
        return entry[1] if entry is not None else None

    def open(self, packet: bytes) -> tuple[T, InboundSa, bytes] | DropReason:
        """(owner, SA, inner IP packet) for an authentic fresh packet, else the drop reason."""
        spi = peek_spi(packet)
        if spi is None:
            self.drops[DropReason.TRUNCATED] += 1
            return DropReason.TRUNCATED
        entry = self._inbound.get(spi)
        if entry is None:
            self.drops[DropReason.UNKNOWN_SPI] += 1
            return DropReason.UNKNOWN_SPI
        sa, owner = entry
        inner = sa.open(packet)
        if isinstance(inner, DropReason):
            return inner
        return owner, sa, inner
