"""UDP 500 and 4500 for IKEv2 and ESP-in-UDP on one local address (RFC 7296 2.23, RFC 3948).

Port 500 carries bare IKE messages. Port 4500 carries three things told apart by their first
bytes (RFC 3948 section 2): a single 0xFF byte is a NAT keepalive (dropped, never answered),
four zero bytes (the non-ESP marker) precede an IKE message, anything else is ESP starting
with its non-zero SPI. The marker is removed here on receipt and added on sending, so the
callbacks see bare IKE messages plus the port they used. Short or malformed datagrams are
counted drops. Keepalives are sent on request by `send_keepalive`.

The sockets are read straight from the event loop in batches (like the TUN device), because
the ESP data path is the hot path: one readiness callback drains up to `READ_BATCH`
datagrams instead of paying one loop iteration per packet. ESP going out is batched too:
`send_esp` queues, and one flush per loop iteration hands each run of equal-sized packets to
the kernel in a single UDP GSO send (``UDP_SEGMENT``, Linux 4.18+), which cuts the cost of
the send path several times; the kernel still puts one ESP packet in each datagram. Kernels
or routes without GSO get one ``sendto`` per packet. The 4500 socket also asks for UDP GRO
(``UDP_GRO``): where the NIC driver coalesces a burst of equal-sized datagrams from the peer,
one read returns all of them (the cmsg gives their size) and they are split here. Sends
never block: a full socket buffer is a counted drop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import socket
import struct
from collections.abc import Callable
from enum import Enum

log = logging.getLogger(__name__)

Address = tuple[str, int]

NON_ESP_MARKER = b"\x00\x00\x00\x00"  # RFC 3948 section 2.2
NAT_KEEPALIVE = b"\xff"  # RFC 3948 section 2.3
ESP_MIN_LEN = 8  # SPI + sequence number
IKE_PORT = 500
NAT_T_PORT = 4500
KEEPALIVE_INTERVAL = 20.0  # seconds of silence before a keepalive (strongSwan's default)
READ_BATCH = 64
READ_SIZE = 65535
SOCKET_BUFFER = 4 * 1024 * 1024  # absorb bursts between two loop iterations
UDP_SEGMENT = getattr(socket, "UDP_SEGMENT", 103)  # linux/udp.h: GSO segment size (cmsg)
UDP_GRO = getattr(socket, "UDP_GRO", 104)  # linux/udp.h: accept coalesced datagrams
_GRO_CMSG_SPACE = socket.CMSG_SPACE(4)
_GRO_SIZE = struct.Struct("=i")
GSO_MAX_SEGMENTS = 64  # the kernel's UDP_MAX_SEGMENTS on older kernels
GSO_MAX_BYTES = 65000  # one GSO send stays below the 65507-byte UDP payload limit
MAX_QUEUED = 256  # ESP packets queued before a flush is forced (bounded, never grows)
_GSO_UNSUPPORTED = frozenset({errno.EIO, errno.EOPNOTSUPP, errno.ENOPROTOOPT})
_SEGMENT_SIZE = struct.Struct("=H")


class Datagram(Enum):
    IKE = "ike"
    ESP = "esp"
    KEEPALIVE = "keepalive"
    MALFORMED = "malformed"


def demux_nat_t(datagram: bytes) -> tuple[Datagram, bytes]:
    """What a port-4500 datagram is, and its payload (IKE without the marker, ESP whole)."""
    if datagram == NAT_KEEPALIVE:
        return Datagram.KEEPALIVE, b""
    if len(datagram) < ESP_MIN_LEN:
        return Datagram.MALFORMED, b""
    if datagram[:4] == NON_ESP_MARKER:
        return Datagram.IKE, datagram[4:]
    return Datagram.ESP, datagram


IkeSink = Callable[[bytes, Address, bool], None]  # (message, peer, arrived on 4500)
EspSink = Callable[[bytes, Address], None]


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def gso_runs(sizes: list[int]) -> list[tuple[int, int]]:
    """Split packets (by size) into [start, end) runs that one GSO send may carry.

    A run is consecutive packets of one size, optionally ended by one shorter packet (the
    kernel allows a short last segment), within the segment and byte limits.
    """
    runs: list[tuple[int, int]] = []
    start, count = 0, len(sizes)
    while start < count:
        size = sizes[start]
        limit = min(count, start + GSO_MAX_SEGMENTS, start + max(1, GSO_MAX_BYTES // max(size, 1)))
        end = start + 1
        while end < limit and sizes[end] == size:
            end += 1
        if end < limit and sizes[end] < size:
            end += 1
        runs.append((start, end))
        start = end
    return runs


class IkeSockets:
    """The two UDP sockets of one VPN gateway address, with counters."""

    def __init__(self, on_ike: IkeSink, on_esp: EspSink,
                 on_batch_end: Callable[[], None] | None = None) -> None:
        self._on_ike = on_ike
        self._on_esp = on_esp
        self._on_batch_end = on_batch_end  # after each burst read from 4500 (flush the TUN)
        self._ike: socket.socket | None = None
        self._natt: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.keepalives_received = 0
        self.keepalives_sent = 0
        self.malformed = 0
        self.send_errors = 0
        self.coalesced_reads = 0  # reads that returned several datagrams (UDP GRO)
        self.gso = hasattr(socket, "SOL_UDP")  # cleared when the kernel refuses UDP_SEGMENT
        self._queued: list[bytes] = []
        self._queued_peer: Address | None = None
        self._flush_scheduled = False

    async def open(self, host: str, ike_port: int = IKE_PORT, nat_t_port: int = NAT_T_PORT) -> None:
        """Bind both sockets (port 0 picks free ports, for tests in the host namespace).

        An address that is not on this host (a public IP NATed 1:1 to us, as in clouds)
        falls back to the wildcard address.
        """
        try:
            self._ike = _bind(host, ike_port)
        except OSError as exc:
            if exc.errno != errno.EADDRNOTAVAIL:
                raise
            log.warning("%s is not a local address; listening on all addresses", host)
            host = "::" if ipaddress.ip_address(host).version == 6 else "0.0.0.0"  # noqa: S104
            self._ike = _bind(host, ike_port)
        try:
            self._natt = _bind(host, nat_t_port)
        except OSError:
            self.close()
            raise
        with contextlib.suppress(OSError):  # a kernel without UDP GRO reads one at a time
            self._natt.setsockopt(socket.SOL_UDP, UDP_GRO, 1)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._ike.fileno(), self._drain, self._ike, self._from_ike_port)
        self._loop.add_reader(self._natt.fileno(), self._drain_nat_t)

    @property
    def ports(self) -> tuple[int, int]:
        """(IKE port, NAT-T port) actually bound."""
        return _port(self._ike), _port(self._natt)

    def _drain_nat_t(self) -> None:
        if self._natt is not None:
            self._drain(self._natt, self._from_nat_t_port)
        if self._on_batch_end is not None:
            self._on_batch_end()

    def _drain(self, sock: socket.socket, handler: Callable[[bytes, Address], None]) -> None:
        for _ in range(READ_BATCH):
            try:
                data, ancillary, _flags, addr = sock.recvmsg(READ_SIZE, _GRO_CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # ICMP errors surface here; the IKE core times out on its own
                return
            peer = (str(addr[0]), int(addr[1]))
            if not ancillary:
                handler(data, peer)
                continue
            size = _gro_size(ancillary)  # several datagrams of one size (the last shorter)
            self.coalesced_reads += 1
            for start in range(0, len(data), size):
                handler(data[start:start + size], peer)

    def _from_ike_port(self, data: bytes, peer: Address) -> None:
        self._on_ike(data, peer, False)

    def _from_nat_t_port(self, data: bytes, peer: Address) -> None:
        kind, payload = demux_nat_t(data)
        if kind is Datagram.ESP:
            self._on_esp(payload, peer)
        elif kind is Datagram.IKE:
            self._on_ike(payload, peer, True)
        elif kind is Datagram.KEEPALIVE:
            self.keepalives_received += 1
        else:
            self.malformed += 1

    def send_ike(self, message: bytes, peer: Address, nat_t: bool) -> None:
        """Send an IKE message from 500, or from 4500 behind the non-ESP marker."""
        if nat_t:
            self.flush()  # datagrams on 4500 leave in the order they were handed over
            self._send(self._natt, NON_ESP_MARKER + message, peer)
        else:
            self._send(self._ike, message, peer)

    def send_esp(self, packet: bytes, peer: Address) -> None:
        """Queue an ESP packet; it leaves with this loop iteration's batch (see `flush`)."""
        loop = self._loop
        if loop is None:
            self._send(self._natt, packet, peer)
            return
        if peer != self._queued_peer or len(self._queued) >= MAX_QUEUED:
            self.flush()
            self._queued_peer = peer
        self._queued.append(packet)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self.flush)

    def send_keepalive(self, peer: Address) -> None:
        """A one-byte NAT keepalive from 4500 (RFC 3948 section 2.3)."""
        self.keepalives_sent += 1
        self.flush()
        self._send(self._natt, NAT_KEEPALIVE, peer)

    def flush(self) -> None:
        """Send every queued ESP packet: equal-sized runs as one GSO send each."""
        self._flush_scheduled = False
        packets, peer = self._queued, self._queued_peer
        if not packets or peer is None:
            return
        self._queued = []
        sock = self._natt
        if sock is None:
            self.send_errors += len(packets)
            return
        if len(packets) == 1 or not self.gso:
            for packet in packets:
                self._send(sock, packet, peer)
            return
        for start, end in gso_runs([len(p) for p in packets]):
            if end - start == 1:
                self._send(sock, packets[start], peer)
            else:
                self._send_gso(sock, packets[start:end], peer)

    def _send_gso(self, sock: socket.socket, run: list[bytes], peer: Address) -> None:
        segment = _SEGMENT_SIZE.pack(len(run[0]))
        try:
            sock.sendmsg([b"".join(run)], [(socket.SOL_UDP, UDP_SEGMENT, segment)], 0, peer)
            return
        except OSError as exc:
            if exc.errno in _GSO_UNSUPPORTED:
                log.info("UDP GSO unavailable (%s); sending ESP one packet at a time", exc)
                self.gso = False
            elif exc.errno != errno.EINVAL:  # EINVAL: e.g. a segment above the path MTU
                self.send_errors += len(run)  # full buffer: the whole batch is dropped
                return
        for packet in run:
            self._send(sock, packet, peer)

    def _send(self, sock: socket.socket | None, data: bytes, peer: Address) -> None:
        if sock is None:
            self.send_errors += 1
            return
        try:
            sock.sendto(data, peer)
        except OSError:  # full buffer (overload drops) or an unreachable peer
            self.send_errors += 1

    def close(self) -> None:
        self.flush()
        for sock in (self._ike, self._natt):
            if sock is None:
                continue
            if self._loop is not None:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(sock.fileno())
            sock.close()
        self._ike = self._natt = None
        self._loop = None


def _gro_size(ancillary: list[tuple[int, int, bytes]]) -> int:
    """The datagram size in a UDP_GRO control message (the whole read if there is none)."""
    for level, kind, value in ancillary:
        if level == socket.SOL_UDP and kind == UDP_GRO and len(value) >= _GRO_SIZE.size:
            size: int = _GRO_SIZE.unpack_from(value)[0]
            return max(1, size)
    return READ_SIZE


def _port(sock: socket.socket | None) -> int:
    return int(sock.getsockname()[1]) if sock is not None else 0
