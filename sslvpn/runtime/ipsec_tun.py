"""The IPsec service's TUN device, with virtio-net headers so decrypted TCP enters as GSO batches.

Decrypted packets coming out of the tunnel are mostly full-sized segments of a few TCP
streams. Handing them to the kernel one ``write`` at a time makes it forward, and the LAN
host's TCP receive, every segment separately; that per-packet kernel work dominated the
inbound path. With ``IFF_VNET_HDR`` each write carries a ``virtio_net_hdr``
(include/uapi/linux/virtio_net.h), so consecutive in-order segments of one flow are written
as one TCP "super-packet" with ``GSO_TCPV4`` (what GRO does in a NIC driver, and what
wireguard-go does for its TUN); the kernel splits it again only if a device on the way
needs that. Only segments that are safe to merge are merged: IPv4 without options or
fragments, flags ACK (PSH may end a batch), identical headers apart from the sequence
number, ID and checksums, and a verified TCP checksum (the kernel recomputes checksums of
a merged packet, so a corrupt segment must never be merged). Everything else is written
unchanged with an empty header.

Writes are queued and flushed once per event-loop iteration (the same batch the UDP socket
drained); reads strip the header (no offloads are enabled for reads, so the kernel hands
us plain, checksummed packets). ``open_tun`` falls back to the plain `LinuxTun` when the
kernel refuses the header.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import struct

from sslvpn.runtime.tun import READ_BATCH, READ_SIZE, LinuxTun, PacketSink, Tun

log = logging.getLogger(__name__)

# -- spec constants (virtio_net.h, RFC 791, RFC 9293) ---------------------------------
VNET_HDR = struct.Struct("=BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start/offset
VNET_HDR_LEN = VNET_HDR.size
F_NEEDS_CSUM = 1
GSO_NONE = 0
GSO_TCPV4 = 1
IPV4_NO_OPTIONS = 0x45  # version 4, IHL 5
IPPROTO_TCP = 6
IPV4_HEADER_LEN = 20
TCP_CHECKSUM_OFFSET = 16
TCP_ACK, TCP_PSH = 0x10, 0x08
IP_MAX_LEN = 0xFFFF

# -- tuning constants -------------------------------------------------------------------
MAX_SEGMENTS = 64  # segments merged into one write
MAX_QUEUED = 256  # packets queued before a flush is forced

PLAIN = bytes(VNET_HDR_LEN)  # no offload: the packet goes in as is
_TEN_WORDS = struct.Struct("!10H")


def _fold(total: int) -> int:
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def tcp_checksum_ok(packet: bytes) -> bool:
    """Whether an option-less IPv4 TCP packet's checksum verifies (RFC 9293 3.1)."""
    segment = packet[IPV4_HEADER_LEN:]
    value = int.from_bytes(segment, "big")
    if len(segment) & 1:
        value <<= 8  # an odd segment is padded with a zero byte
    pseudo = int.from_bytes(packet[12:20], "big") + IPPROTO_TCP + len(segment)
    return (value + pseudo) % 0xFFFF == 0  # 2**16 == 1 mod 0xFFFF: the word sum, folded


def _signature(packet: bytes, header_len: int) -> bytes | None:
    """The header bytes that must match for two segments to merge, or None if it never may.

    Left out: total length, IP ID and checksum, sequence number, PSH and the TCP checksum.
    """
    size = len(packet)
    if size <= 40 or packet[0] != IPV4_NO_OPTIONS or packet[9] != IPPROTO_TCP:
        return None
    if packet[6] & 0x3F or packet[7] or (packet[2] << 8 | packet[3]) != size:
        return None  # a fragment, or a length that disagrees with the datagram
    if packet[33] & ~TCP_PSH != TCP_ACK or not 40 <= header_len < size:
        return None
    return (packet[:2] + packet[6:10] + packet[12:24] + packet[28:33] + packet[34:36]
            + packet[38:header_len])


class _Batch:
    """Consecutive segments of one flow being merged."""

    __slots__ = ("packets", "signature", "header_len", "mss", "next_seq", "length", "closed")

    def __init__(self, packet: bytes, signature: bytes | None, header_len: int) -> None:
        self.packets = [packet]
        self.signature = signature
        self.header_len = header_len
        self.length = len(packet)
        self.closed = signature is None or bool(packet[33] & TCP_PSH)
        self.mss = self.next_seq = 0
        if signature is not None:
            self.mss = len(packet) - header_len
            self.next_seq = (int.from_bytes(packet[24:28], "big") + self.mss) & 0xFFFFFFFF

    def take(self, packet: bytes, signature: bytes) -> bool:
        """Append the next segment if it continues this batch (and its checksum verifies)."""
        payload = len(packet) - self.header_len
        if (self.closed or signature != self.signature or payload > self.mss
                or len(self.packets) >= MAX_SEGMENTS or self.length + payload > IP_MAX_LEN
                or int.from_bytes(packet[24:28], "big") != self.next_seq):
            return False
        if len(self.packets) == 1 and not tcp_checksum_ok(self.packets[0]):
            return False
        if not tcp_checksum_ok(packet):
            return False
        self.packets.append(packet)
        self.next_seq = (self.next_seq + payload) & 0xFFFFFFFF
        self.length += payload
        self.closed = payload < self.mss or bool(packet[33] & TCP_PSH)
        return True

    def output(self) -> list[bytes | bytearray | memoryview]:
        """The buffers of one write: a virtio header and the (merged) packet."""
        if len(self.packets) == 1:
            return [PLAIN, self.packets[0]]
        first, hlen = self.packets[0], self.header_len
        header = bytearray(first[:hlen])
        header[2:4] = self.length.to_bytes(2, "big")
        header[10:12] = b"\x00\x00"
        header[10:12] = (~_fold(sum(_TEN_WORDS.unpack_from(header))) & 0xFFFF).to_bytes(2, "big")
        if self.packets[-1][33] & TCP_PSH:
            header[33] |= TCP_PSH
        pseudo = int.from_bytes(header[12:16], "big") + int.from_bytes(header[16:20], "big")
        pseudo = _fold((pseudo >> 16) + (pseudo & 0xFFFF) + IPPROTO_TCP
                       + self.length - IPV4_HEADER_LEN)
        header[36:38] = pseudo.to_bytes(2, "big")  # partial checksum: the kernel completes it
        vnet = VNET_HDR.pack(F_NEEDS_CSUM, GSO_TCPV4, hlen, self.mss, IPV4_HEADER_LEN,
                             TCP_CHECKSUM_OFFSET)
        return [vnet, header, *(memoryview(p)[hlen:] for p in self.packets)]


def coalesce(packets: list[bytes]) -> list[_Batch]:
    """Group packets, in order, into batches of mergeable consecutive TCP segments."""
    batches: list[_Batch] = []
    current: _Batch | None = None
    for packet in packets:
        header_len = IPV4_HEADER_LEN + (packet[32] >> 4) * 4 if len(packet) > 40 else 0
        signature = _signature(packet, header_len) if header_len else None
        if signature is not None and current is not None and current.take(packet, signature):
            continue
        current = _Batch(packet, signature, header_len)
        batches.append(current)
    return batches


class OffloadTun:
    """A kernel TUN device with virtio-net headers: merged TCP writes, plain reads."""

    def __init__(self, name: str, *, mtu: int) -> None:
        import pytun  # imported here so MemoryTun users need no kernel support

        flags = pytun.IFF_TUN | pytun.IFF_NO_PI | pytun.IFF_VNET_HDR
        self._device = pytun.TunTapDevice(name=name, flags=flags)
        self._device.mtu = mtu
        self.name: str = self._device.name
        self.drops = 0
        self.merged = 0  # segments that went to the kernel inside a larger write
        self.gro = True  # cleared if the kernel refuses a merged write
        self._fd: int = self._device.fileno()
        os.set_blocking(self._fd, False)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queued: list[bytes] = []
        self._flush_scheduled = False

    def start(self, on_packet: PacketSink) -> None:
        """Hand every packet the kernel routes into the device to ``on_packet``."""
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._fd, self._readable, on_packet)

    def _readable(self, on_packet: PacketSink) -> None:
        fd = self._fd
        for _ in range(READ_BATCH):
            try:
                data = os.read(fd, READ_SIZE + VNET_HDR_LEN)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.drops += 1
                return
            if len(data) <= VNET_HDR_LEN or data[1] != GSO_NONE:
                self.drops += 1  # no offloads are enabled, so the kernel never sends GSO
                continue
            on_packet(data[VNET_HDR_LEN:])

    def write(self, packet: bytes) -> None:
        """Queue a packet for the kernel; the batch goes in at the end of this loop turn."""
        loop = self._loop
        if loop is None:
            self._write([PLAIN, packet])
            return
        self._queued.append(packet)
        if len(self._queued) >= MAX_QUEUED:
            self.flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write every queued packet, merging runs of TCP segments when allowed."""
        self._flush_scheduled = False
        packets, self._queued = self._queued, []
        if not self.gro:
            for packet in packets:
                self._write([PLAIN, packet])
            return
        for batch in coalesce(packets):
            if len(batch.packets) == 1:
                self._write([PLAIN, batch.packets[0]])
                continue
            try:
                os.writev(self._fd, batch.output())
                self.merged += len(batch.packets)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    self.drops += len(batch.packets)  # a full device drops, never queues
                    continue
                log.warning("the kernel refused a merged TCP write (%s); writing per packet",
                            exc)
                self.gro = False
                for packet in batch.packets:
                    self._write([PLAIN, packet])

    def _write(self, buffers: list[bytes | bytearray | memoryview]) -> None:
        try:
            os.writev(self._fd, buffers)
        except OSError:
            self.drops += 1

    def close(self) -> None:
        """Stop reading and destroy the device (the kernel removes its routes with it)."""
        self._queued.clear()
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._fd)
            self._loop = None
        with contextlib.suppress(OSError):
            self._device.close()


def open_tun(name: str, *, mtu: int) -> Tun:
    """The offloading TUN device, or the plain one where the kernel lacks IFF_VNET_HDR."""
    try:
        return OffloadTun(name, mtu=mtu)
    except Exception as exc:  # pytun raises its own error type
        log.warning("TUN without virtio-net headers (%s): no merged TCP writes", exc)
        return LinuxTun(name, mtu=mtu)
