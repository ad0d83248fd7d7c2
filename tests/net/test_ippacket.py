import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from sslvpn.net import ippacket


def ipv4_packet(src: str, dst: str, payload: bytes = b"x") -> bytes:
    header = bytearray(20)
    header[0] = 0x45
    header[2:4] = (20 + len(payload)).to_bytes(2, "big")
    header[8] = 64
    header[9] = 17
    header[12:16] = ipaddress.ip_address(src).packed
    header[16:20] = ipaddress.ip_address(dst).packed
    return bytes(header) + payload


def ipv6_packet(src: str, dst: str) -> bytes:
    header = bytearray(40)
    header[0] = 0x60
    header[8:24] = ipaddress.ip_address(src).packed
    header[24:40] = ipaddress.ip_address(dst).packed
    return bytes(header)


def test_ipv4_addresses() -> None:
    packet = ipv4_packet("10.8.0.2", "10.10.0.10")
    assert ippacket.version(packet) == 4
    assert ippacket.addresses(packet) == (
        ippacket.pack_address("10.8.0.2"),
        ippacket.pack_address("10.10.0.10"),
    )
    assert ippacket.destination(packet) == ippacket.pack_address("10.10.0.10")


def test_ipv6_addresses() -> None:
    packet = ipv6_packet("fd00::2", "fd10::a")
    assert ippacket.version(packet) == 6
    src, dst = ippacket.addresses(packet) or (b"", b"")
    assert ippacket.format_address(src) == "fd00::2"
    assert ippacket.format_address(dst) == "fd10::a"
    assert ippacket.destination(packet) == dst


def test_short_or_foreign_packets_are_none() -> None:
    assert ippacket.addresses(b"") is None
    assert ippacket.destination(b"") is None
    assert ippacket.addresses(ipv4_packet("1.2.3.4", "5.6.7.8")[:19]) is None
    assert ippacket.addresses(ipv6_packet("::1", "::2")[:39]) is None
    assert ippacket.addresses(b"\x50" + bytes(40)) is None
    assert ippacket.addresses(b"\x44" + bytes(40)) is None  # IHL below 5
    assert ippacket.version(b"") == 0


@given(st.binary(max_size=64))
def test_random_bytes_never_raise(data: bytes) -> None:
    result = ippacket.addresses(data)
    if result is not None:
        assert len(result[0]) in (4, 16)
    ippacket.destination(data)
