"""TUN write coalescing: which segments merge, and that a super packet means the same bytes."""

from __future__ import annotations

import ipaddress
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from sslvpn.runtime.gro import VNET_F_NEEDS_CSUM, VNET_GSO_TCPV4, VNET_NONE, coalesce

SRC, DST = "10.8.0.2", "10.10.0.10"
ACK, PSH, SYN = 0x10, 0x08, 0x02
OPTIONS = b"\x01\x01\x08\x0a" + bytes(range(8))  # NOP NOP timestamps


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = int(sum(struct.unpack(f"!{len(data) // 2}H", data)))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def segment(seq: int, payload: bytes, *, flags: int = ACK, sport: int = 40000,
            ack: int = 7, window: int = 500, ip_id: int = 1) -> bytes:
    """An IPv4/TCP segment with correct checksums."""
    tcp = bytearray(struct.pack("!HHIIBBHHH", sport, 5201, seq, ack, (20 + len(OPTIONS)) // 4 << 4,
                                flags, window, 0, 0)) + OPTIONS
    total = 20 + len(tcp) + len(payload)
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, ip_id, 0x4000, 64, 6, 0,
                               ipaddress.ip_address(SRC).packed, ipaddress.ip_address(DST).packed))
    ip[10:12] = (~_csum(bytes(ip)) & 0xFFFF).to_bytes(2, "big")
    pseudo = bytes(ip[12:20]) + struct.pack("!BBH", 0, 6, len(tcp) + len(payload))
    tcp[16:18] = (~_csum(pseudo + bytes(tcp) + payload) & 0xFFFF).to_bytes(2, "big")
    return bytes(ip) + bytes(tcp) + payload


def writes(packets: list[bytes]) -> list[bytes]:
    out: list[bytes] = []
    coalesce(packets, lambda parts: out.append(b"".join(bytes(p) for p in parts)))
    return out


def resegment(frame: bytes) -> list[tuple[int, bytes, int]]:
    """What the kernel makes of one write: (sequence number, payload, flags) per segment."""
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = struct.unpack_from("=BBHHHH",
                                                                                     frame)
    packet = frame[10:]
    header = 20 + (packet[32] >> 4) * 4
    seq = int.from_bytes(packet[24:28], "big")
    if gso_type == 0:
        assert flags == 0
        return [(seq, packet[header:], packet[33])]
    assert (flags, gso_type, hdr_len, csum_start, csum_offset) == (
        VNET_F_NEEDS_CSUM, VNET_GSO_TCPV4, header, 20, 16)
    assert int.from_bytes(packet[2:4], "big") == len(packet)
    assert _csum(packet[:20]) == 0xFFFF  # a valid IPv4 header checksum
    # completing CHECKSUM_PARTIAL gives the checksum of the whole super packet
    partial = ~_csum(packet[20:]) & 0xFFFF
    clean = bytearray(packet)
    clean[36:38] = b"\0\0"
    pseudo = packet[12:20] + struct.pack("!BBH", 0, 6, len(packet) - 20)
    assert partial == ~_csum(pseudo + bytes(clean[20:])) & 0xFFFF
    payload = packet[header:]
    out = []
    for offset in range(0, len(payload), gso_size):
        last = offset + gso_size >= len(payload)
        out.append((seq + offset, payload[offset:offset + gso_size],
                    packet[33] if last else packet[33] & ~PSH))
    return out


def test_a_burst_of_one_flow_becomes_one_super_packet() -> None:
    packets = [segment(1000 + i * 1400, bytes([i]) * 1400) for i in range(5)]
    packets.append(segment(1000 + 5 * 1400, b"tail", flags=ACK | PSH))
    out = writes(packets)
    assert len(out) == 1
    assert resegment(out[0]) == [(1000 + i * 1400, bytes([i]) * 1400, ACK) for i in range(5)] + [
        (1000 + 5 * 1400, b"tail", ACK | PSH)]


def test_what_cannot_merge_is_written_alone_in_order() -> None:
    a = [segment(1, b"a" * 100), segment(101, b"b" * 100)]
    gap = segment(500, b"c" * 100)  # not contiguous
    other = segment(600, b"d" * 100, sport=40001)  # another flow
    syn = segment(0, b"", flags=SYN)
    pushed = [segment(2000, b"e" * 100, flags=ACK | PSH), segment(2100, b"f" * 100)]
    moved_ack = [segment(3000, b"g" * 100), segment(3100, b"h" * 100, ack=8)]
    longer = [segment(4000, b"i" * 100), segment(4100, b"j" * 200)]
    udp = bytearray(segment(5, b"x" * 10))
    udp[9] = 17
    out = writes(a + [gap, other, syn, *pushed, *moved_ack, *longer, bytes(udp)])
    assert [len(resegment(w)) for w in out] == [2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]
    assert all(w.startswith(VNET_NONE) for w in out[1:])
    assert out[-1] == VNET_NONE + bytes(udp)


def test_a_segment_with_a_bad_checksum_is_never_merged() -> None:
    good = [segment(1000 + i * 100, bytes([i]) * 100) for i in range(3)]
    corrupt = bytearray(good[1])
    corrupt[-1] ^= 0x01
    out = writes([good[0], bytes(corrupt), good[2]])
    assert [frame[10:] for frame in out] == [good[0], bytes(corrupt), good[2]]
    assert writes(good) != [VNET_NONE + p for p in good]  # the same run, intact, does merge


def test_odd_length_segments_verify() -> None:
    odd = [segment(1, b"x" * 101), segment(102, b"y" * 1)]
    assert len(writes(odd)) == 1


def test_a_super_packet_stays_within_the_ipv4_length() -> None:
    packets = [segment(1 + i * 1400, b"z" * 1400) for i in range(100)]
    out = writes(packets)
    assert len(out) > 1
    assert all(len(w) - 10 <= 65535 for w in out)
    assert b"".join(p for w in out for _, p, _ in resegment(w)) == b"z" * 140_000


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(1, 1400), st.booleans()),
                min_size=1, max_size=80))
def test_every_byte_arrives_once_in_order_per_flow(spec: list[tuple[int, int, bool]]) -> None:
    seqs = [10_000, 90_000]
    packets, sent = [], {0: b"", 1: b""}
    for index, (flow, size, push) in enumerate(spec):
        payload = bytes([index % 256]) * size
        packets.append(segment(seqs[flow], payload, sport=40000 + flow,
                               flags=ACK | (PSH if push else 0)))
        seqs[flow] += size
        sent[flow] += payload
    got = {0: b"", 1: b""}
    for frame in writes(packets):
        flow = int.from_bytes(frame[10 + 20:10 + 22], "big") - 40000
        for _seq, payload, _flags in resegment(frame):
            got[flow] += payload
    assert got == sent
