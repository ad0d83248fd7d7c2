"""Merging decrypted TCP segments into GSO writes: what may merge, and that nothing changes.

The checks use a plain RFC 1071 checksum written here, independent of the module's, and
re-split every merged packet the way the kernel's TCP segmentation does: the result must be
the original segments, byte for byte.
"""

from __future__ import annotations

import ipaddress
import struct

import pytest

from sslvpn.runtime.ipsec_tun import (
    F_NEEDS_CSUM,
    GSO_TCPV4,
    MAX_SEGMENTS,
    PLAIN,
    VNET_HDR,
    coalesce,
    tcp_checksum_ok,
)

ACK, PSH, SYN = 0x10, 0x08, 0x02
TIMESTAMPS = bytes([1, 1, 8, 10]) + struct.pack("!II", 1000, 2000)


def rfc1071(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def tcp_segment(seq: int, payload: bytes, *, flags: int = ACK, ident: int = 1,
                src: str = "10.1.0.10", dst: str = "10.2.0.10", sport: int = 40000,
                options: bytes = TIMESTAMPS, frag: int = 0x4000, proto: int = 6) -> bytes:
    """An IPv4 TCP segment with correct checksums (DF set, as Linux sends them)."""
    s, d = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
    tcp = struct.pack("!HHIIBBHHH", sport, 5001, seq, 777, (20 + len(options)) // 4 << 4,
                      flags, 500, 0, 0) + options + payload
    pseudo = s + d + struct.pack("!BBH", 0, proto, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", rfc1071(pseudo + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), ident, frag, 64, proto, 0, s, d)
    ip = ip[:10] + struct.pack("!H", rfc1071(ip)) + ip[12:]
    return ip + tcp


def stream(count: int, mss: int = 1348, seq: int = 5000, last: int | None = None) -> list[bytes]:
    sizes = [mss] * count if last is None else [mss] * (count - 1) + [last]
    out, offset = [], 0
    for i, size in enumerate(sizes):
        out.append(tcp_segment(seq + offset, bytes([i % 251]) * size, ident=100 + i))
        offset += size
    return out


def resegment(merged: bytes, mss: int, header_len: int) -> list[bytes]:
    """What the kernel makes of a GSO_TCPV4 packet: one segment per mss, IDs counting up."""
    header, payload = merged[:header_len], merged[header_len:]
    seq = int.from_bytes(header[24:28], "big")
    ident = int.from_bytes(header[4:6], "big")
    chunks = [payload[i:i + mss] for i in range(0, len(payload), mss)]
    flags = header[33]
    out = []
    for i, chunk in enumerate(chunks):
        fl = flags if i == len(chunks) - 1 else flags & ~PSH
        h = bytearray(header)
        h[2:4] = (header_len + len(chunk)).to_bytes(2, "big")
        h[4:6] = (ident + i).to_bytes(2, "big")
        h[10:12] = b"\x00\x00"
        h[10:12] = rfc1071(bytes(h[:20])).to_bytes(2, "big")
        h[24:28] = (seq + i * mss).to_bytes(4, "big")
        h[33] = fl
        h[36:38] = b"\x00\x00"
        pseudo = h[12:20] + struct.pack("!BBH", 0, 6, header_len - 20 + len(chunk))
        h[36:38] = rfc1071(bytes(pseudo) + bytes(h[20:]) + chunk).to_bytes(2, "big")
        out.append(bytes(h) + chunk)
    return out


def merged_of(batch_output: list[bytes | bytearray | memoryview]) -> tuple[tuple[int, ...], bytes]:
    vnet = VNET_HDR.unpack(bytes(batch_output[0]))
    return vnet, b"".join(bytes(b) for b in batch_output[1:])


def test_the_checksum_check_agrees_with_rfc1071() -> None:
    good = tcp_segment(1, b"odd-length payload!")
    assert tcp_checksum_ok(good)
    assert not tcp_checksum_ok(good[:-1] + bytes([good[-1] ^ 1]))


def test_a_run_of_segments_becomes_one_gso_write_that_splits_back_exactly() -> None:
    segments = stream(10, last=300)
    segments[-1] = tcp_segment(int.from_bytes(segments[-1][24:28], "big"),
                               segments[-1][52:], flags=ACK | PSH, ident=109)
    batches = coalesce(segments)
    assert len(batches) == 1
    vnet, merged = merged_of(batches[0].output())
    header_len = 20 + 32
    assert vnet == (F_NEEDS_CSUM, GSO_TCPV4, header_len, 1348, 20, 16)
    assert len(merged) == int.from_bytes(merged[2:4], "big") == 52 + 9 * 1348 + 300
    assert rfc1071(merged[:20]) == 0  # the IP header checksum is complete
    partial = int.from_bytes(merged[36:38], "big")
    pseudo = merged[12:20] + struct.pack("!BBH", 0, 6, len(merged) - 20)
    assert partial == ~rfc1071(pseudo) & 0xFFFF  # the pseudo-header sum, as Linux's TSO
    assert merged[33] == ACK | PSH
    assert resegment(merged, 1348, header_len) == segments


@pytest.mark.parametrize(
    ("second", "why"),
    [
        (tcp_segment(5000 + 1348 + 1, b"x" * 1348), "sequence gap"),
        (tcp_segment(5000 + 1348, b"x" * 1348, sport=40001), "another flow"),
        (tcp_segment(5000 + 1348, b"x" * 1348, dst="10.2.0.11"), "another host"),
        (tcp_segment(5000 + 1348, b"x" * 1348, flags=ACK | SYN), "SYN"),
        (tcp_segment(5000 + 1348, b"x" * 1348, options=TIMESTAMPS[:-1] + b"\x01"), "options"),
        (tcp_segment(5000 + 1348, b"x" * 1400), "longer than the first"),
        (tcp_segment(5000 + 1348, b"x" * 1348, frag=0x2000), "a fragment"),
        (tcp_segment(5000 + 1348, b"x" * 1348, proto=17), "not TCP"),
        (tcp_segment(5000 + 1348, b"x" * 1348)[:-1] + b"?", "bad checksum"),
        (tcp_segment(5000 + 1348, b""), "no payload"),
        (tcp_segment(5000 + 1348, b"x" * 1348, options=b""), "header length"),
    ],
)
def test_segments_that_must_not_merge_stay_apart(second: bytes, why: str) -> None:
    first = stream(1)[0]
    batches = coalesce([first, second])
    assert [b.packets for b in batches] == [[first], [second]], why
    assert batches[1].output() == [PLAIN, second]


def test_a_corrupt_first_segment_is_not_merged() -> None:
    first, second = stream(2)
    corrupt = first[:-1] + bytes([first[-1] ^ 0xFF])
    assert [len(b.packets) for b in coalesce([corrupt, second])] == [1, 1]


def test_short_or_pushed_segments_end_a_batch_and_limits_hold() -> None:
    short = stream(3, last=100)
    following = tcp_segment(5000 + 2 * 1348 + 100, b"y" * 1348, ident=200)
    assert [len(b.packets) for b in coalesce([*short, following])] == [3, 1]
    many = stream(MAX_SEGMENTS + 5, mss=900)
    batches = coalesce(many)
    assert [len(b.packets) for b in batches] == [MAX_SEGMENTS, 5]
    big = stream(60, mss=1460)  # 64 KiB of IP packet at most
    assert all(b.length <= 0xFFFF for b in coalesce(big))
    for batch in coalesce(big):
        if len(batch.packets) > 1:
            _, merged = merged_of(batch.output())
            assert resegment(merged, 1460, 52) == batch.packets


def test_garbage_and_other_traffic_pass_through_in_order() -> None:
    packets = [b"", b"\x45", bytes(60), b"\x60" + bytes(59), *stream(2), b"\x45" + bytes(100)]
    batches = coalesce(packets)
    assert [p for b in batches for p in b.packets] == packets
    assert [len(b.packets) for b in batches] == [1, 1, 1, 1, 2, 1]
