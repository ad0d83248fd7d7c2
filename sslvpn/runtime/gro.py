"""TCP receive coalescing for TUN writes (userspace GRO), with the virtio-net header.

Writing a TUN device costs one syscall per packet and, worse, one full trip through the
kernel's forwarding and TCP receive path per packet. A TUN opened with ``IFF_VNET_HDR``
accepts GSO "super packets" instead: a run of consecutive segments of one TCP flow, written
as one IPv4 packet whose virtio-net header says "TCPv4 GSO, segment size N, checksum still
to do" (linux/virtio_net.h, Documentation/networking/segmentation-offloads.rst). The kernel
forwards it as one skb and the receiving stack (or the egress device) cuts it up.

The rules mirror the kernel's own GRO (net/ipv4/tcp_offload.c tcp_gro_receive): only
adjacent IPv4 segments with no IP options or fragmentation, flags exactly ACK (PSH allowed,
and it ends the run), identical headers apart from length, id, checksums and sequence
number (so the same ACK number, window and TCP options), contiguous sequence numbers, all
but the last segment carrying the same payload size. Everything else is written as it is,
behind an empty header. Order is kept: only neighbours are merged.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

VNET_HDR_LEN = 10  # struct virtio_net_hdr (no mergeable-buffers field)
VNET_NONE = bytes(VNET_HDR_LEN)
VNET_F_NEEDS_CSUM = 1
VNET_GSO_NONE = 0
VNET_GSO_TCPV4 = 1
MAX_SUPER_PACKET = 65535  # the IPv4 total-length field
MAX_SEGMENTS = 64
_VNET = struct.Struct("=BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
_IP_WORDS = struct.Struct("!10H")
_TCP_CSUM_OFFSET = 16
_ACK, _PSH = 0x10, 0x08
_PROTO_TCP = 6

Write = Callable[[list[bytes | memoryview]], None]


def _fold(total: int) -> int:
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _segment(packet: bytes) -> tuple[bytes, int, int, int] | None:
    """(flow key, header length, sequence number, flags) of a mergeable segment, else None."""
    if len(packet) < 40 or packet[0] != 0x45 or packet[9] != _PROTO_TCP:
        return None
    if packet[6] & 0x3F or packet[7] or int.from_bytes(packet[2:4], "big") != len(packet):
        return None  # a fragment (MF or an offset) or a length mismatch
    flags = packet[33]
    header = 20 + (packet[32] >> 4) * 4
    if flags & ~_PSH != _ACK or header < 40 or len(packet) <= header:
        return None
    key = packet[0:2] + packet[6:10] + packet[12:24] + packet[28:33] + packet[34:36] \
        + packet[38:header]
    return key, header, int.from_bytes(packet[24:28], "big"), flags


def _checksums_ok(run: list[bytes]) -> bool:
    """Whether every segment's TCP checksum holds, checked before merging: the kernel writes
    fresh checksums for a super packet's segments, so merging an unchecked segment would
    launder corruption past TCP's end-to-end check.

    The ones'-complement sum of 16-bit words equals the big-endian integer modulo 0xFFFF
    (2**16 = 1 mod 0xFFFF), and a valid checksum makes a segment's total, pseudo-header
    included, a multiple of 0xFFFF (RFC 1071). Summing the whole run before the one modulo
    keeps the cost to one C-speed ``int.from_bytes`` per segment; a run with a bad segment
    is not a multiple (bar two errors that cancel, as weak as TCP's own checksum) and is
    written unmerged, so the receiver still sees and drops the bad one.
    """
    total = sum(int.from_bytes(memoryview(packet)[20:], "big") for packet in run)
    for packet in run:
        if len(packet) % 2:  # pad an odd segment with a zero byte: x << 8 == x + 255 * x
            total += 255 * int.from_bytes(memoryview(packet)[20:], "big")
    # one flow: the same addresses in every pseudo-header, only the lengths differ
    pseudo = len(run) * (int.from_bytes(run[0][12:20], "big") + _PROTO_TCP - 20)
    total += pseudo + sum(len(packet) for packet in run)
    return total % 0xFFFF == 0


def super_packet(run: list[bytes], header: int) -> list[bytes | memoryview]:
    """One GSO write (virtio-net header, IP+TCP header, payloads) for a run of segments."""
    first = run[0]
    total = header + sum(len(p) - header for p in run)
    ip_tcp = bytearray(first[:header])
    ip_tcp[2:4] = total.to_bytes(2, "big")
    ip_tcp[10:12] = b"\0\0"
    ip_tcp[10:12] = (~_fold(sum(_IP_WORDS.unpack_from(ip_tcp))) & 0xFFFF).to_bytes(2, "big")
    ip_tcp[33] |= run[-1][33] & _PSH
    # CHECKSUM_PARTIAL: the field holds the pseudo-header sum, the kernel adds the rest
    pseudo = sum(struct.unpack_from("!4H", ip_tcp, 12)) + _PROTO_TCP + total - 20
    ip_tcp[36:38] = _fold(pseudo).to_bytes(2, "big")
    vnet = _VNET.pack(VNET_F_NEEDS_CSUM, VNET_GSO_TCPV4, header, len(first) - header, 20,
                      _TCP_CSUM_OFFSET)
    return [vnet, bytes(ip_tcp), *(memoryview(p)[header:] for p in run)]


def coalesce(packets: list[bytes], write: Write) -> None:
    """Hand ``write`` one iovec per TUN write: merged runs, the rest behind an empty header."""
    run: list[bytes] = []
    key = b""
    header = size = total = next_seq = 0
    for packet in packets:
        seg = _segment(packet)
        if seg is not None and run:
            s_key, s_header, seq, _flags = seg
            payload = len(packet) - s_header
            if (s_key == key and seq == next_seq and payload <= size
                    and total + payload <= MAX_SUPER_PACKET and len(run) < MAX_SEGMENTS
                    and not run[-1][33] & _PSH and len(run[-1]) - header == size):
                run.append(packet)
                total += payload
                next_seq = (seq + payload) & 0xFFFFFFFF
                continue
        if run:
            _emit(run, header, write)
            run = []
        if seg is None:
            write([VNET_NONE, packet])
            continue
        key, header, seq, _flags = seg
        size = len(packet) - header
        total = len(packet)
        next_seq = (seq + size) & 0xFFFFFFFF
        run = [packet]
    if run:
        _emit(run, header, write)


def _emit(run: list[bytes], header: int, write: Write) -> None:
    if len(run) > 1 and _checksums_ok(run):
        write(super_packet(run, header))
    else:
        for packet in run:
            write([VNET_NONE, packet])
