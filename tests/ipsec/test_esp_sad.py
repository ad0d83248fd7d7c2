"""The SA database: lookup by SPI, owners, counted drops, old SAs alive until deleted."""

from __future__ import annotations

import pytest

from sslvpn.ipsec.esp.packet import DropReason, EspCipher, EspKeys, InboundSa, OutboundSa
from sslvpn.ipsec.esp.sad import Sad

KEYS = EspKeys(b"\x01" * 36)


def _sa(spi: int) -> tuple[OutboundSa, InboundSa]:
    return (
        OutboundSa(spi, EspCipher.AES_GCM16, KEYS),
        InboundSa(spi, EspCipher.AES_GCM16, KEYS),
    )


def test_open_routes_by_spi_to_the_owner() -> None:
    sad: Sad[str] = Sad()
    out_a, in_a = _sa(0x1000)
    out_b, in_b = _sa(0x2000)
    sad.add(in_a, "dc1")
    sad.add(in_b, "dc2")
    assert sad.open(out_b.seal(b"\x45hello!!")) == ("dc2", in_b, b"\x45hello!!")
    assert sad.open(out_a.seal(b"\x45abc")) == ("dc1", in_a, b"\x45abc")


def test_unknown_spi_and_short_packets_are_counted() -> None:
    sad: Sad[str] = Sad()
    out, inb = _sa(0x1000)
    assert sad.open(out.seal(b"x")) is DropReason.UNKNOWN_SPI
    assert sad.open(b"\x00\x01") is DropReason.TRUNCATED
    assert sad.drops == {DropReason.UNKNOWN_SPI: 1, DropReason.TRUNCATED: 1}


def test_rekeyed_sa_stays_until_removed_and_clashes_are_refused() -> None:
    sad: Sad[str] = Sad()
    old_out, old_in = _sa(0x1000)
    new_out, new_in = _sa(0x1001)
    sad.add(old_in, "dc1")
    sad.add(new_in, "dc1")
    with pytest.raises(ValueError):
        sad.add(InboundSa(0x1000, EspCipher.AES_GCM16, KEYS), "dc2")
    late = old_out.seal(b"late")
    assert sad.open(new_out.seal(b"new"))[2] == b"new"  # type: ignore[index]
    assert sad.open(late)[2] == b"late"  # type: ignore[index]
    assert sad.remove(0x1000) is old_in
    assert sad.open(old_out.seal(b"gone")) is DropReason.UNKNOWN_SPI
    assert sad.remove(0x1001) is new_in and sad.remove(0x1001) is None
    assert len(sad) == 0
