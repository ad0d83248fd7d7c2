"""OpenVPN over UDP: one socket per address family, datagrams routed to session drivers.

A datagram from a known peer address goes straight to its session driver (the hot path: one
dict lookup). From an unknown address it goes to the stateless ``ServerAcceptor``, which
answers, drops, or says "create a session": only then is per-client state allocated.
A P_DATA_V2 packet from an unknown address whose peer-id belongs to a session is offered to
that session; if it authenticates (the core heard from its peer), the session floats to the
new address, as OpenVPN 2.6 does for clients behind NAT rebinding or changing networks.
Reads are batched per readiness callback, except that a socket woken after an idle spell
reads one datagram only: a lone packet (a ping through an idle tunnel) then costs no
failing second read, and if more are waiting the loop calls again at once, in batch mode.
Sends are batched too: what the sessions transmit
during a burst of reads (from this socket, or from the TUN) is queued per peer and flushed
once when the burst ends, and anything transmitted elsewhere (a timer) at the end of that
round of loop callbacks; a flush uses UDP generic segmentation offload (``UDP_SEGMENT``,
Linux 4.18+): one ``sendmsg`` carries a run of equal-sized datagrams (the last may be
shorter) and the kernel cuts them apart, instead of one ``sendto`` per datagram. A kernel or
path that refuses GSO turns it off for the socket and the same datagrams go out one by one.
Sends never block (a full socket drops, the protocols above recover). Socket buffers are
enlarged to absorb bursts.

A worker of `serve --workers` reads its socket of the port's reuseport group, which the
supervisor made and steers (`sslvpn.runtime.steering`): a P_DATA_V2 packet reaches the worker
of its peer-id from any address, the rest stays with one worker per 4-tuple. A session that
floats is pinned at its new address with a socket of its own, ``connect()``ed to the client
and bound beside the port with ``SO_REUSEADDR`` only, so that its control packets (a
renegotiation) reach this worker too: an exact 4-tuple match beats the group in the kernel's
lookup, and a socket outside the group never changes how the group spreads new clients
(measured: a connected socket inside the group drew other clients' datagrams after a
restart). Pins stay few: a datagram that matches none walks all of them in the kernel.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
import socket
import struct
import time
from collections.abc import Callable
from typing import Protocol

from sslvpn.openvpn.constants import DATA_V2_HEADER_LEN, Opcode
from sslvpn.openvpn.server import NO_COOKIE_SUPPORT, CreateSession, Decision, Dropped, Reply
from sslvpn.runtime.admission import source_of
from sslvpn.runtime.driver import SessionCore
from sslvpn.runtime.gateway import ClientSession, Gateway

log = logging.getLogger(__name__)

SOCKET_BUFFER = 4 * 1024 * 1024
READ_BATCH = 64
IDLE_GAP = 0.001  # seconds between readiness callbacks after which one datagram is read
MAX_DATAGRAM = 65535
UDP_SEGMENT = getattr(socket, "UDP_SEGMENT", 103)  # linux/udp.h
GSO_MAX_SEGMENTS = 64  # linux/udp.h UDP_MAX_SEGMENTS (older kernels)
GSO_MAX_BYTES = 65000  # one GSO send must fit one (unfragmented-size) IP datagram
_GSO_REFUSED = frozenset((errno.EINVAL, errno.EIO, errno.ENOPROTOOPT, errno.EOPNOTSUPP))
_GSO_SIZE = struct.Struct("=H")

#: Acceptor drops that refuse a client that proved its key (counted by admission too).
REFUSALS = frozenset({"rate-limited", NO_COOKIE_SUPPORT})
SessionFactory = Callable[[CreateSession, float], SessionCore]
PeerAddress = tuple[str, int] | tuple[str, int, int, int]


class Acceptor(Protocol):
    """The stateless first-packet gate (``ServerAcceptor`` or a dispatcher over several)."""

    def receive(self, data: bytes, address: object, now: float) -> Decision: ...


def format_peer(address: PeerAddress) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def enlarge_buffers(sock: socket.socket, size: int = SOCKET_BUFFER) -> None:
    """Ask for big socket buffers (the FORCE variants pass the sysctl cap when root)."""
    for force, plain in ((getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF),
                         (getattr(socket, "SO_SNDBUFFORCE", None), socket.SO_SNDBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force if force is not None else plain, size)
        except OSError:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, plain, size)


def bind_udp(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A non-blocking UDP socket bound to ``host:port`` (IPv6 sockets are IPv6-only);
    ``reuse_port`` puts it in the port's ``SO_REUSEPORT`` group with the other workers' (and
    lets the sockets that pin floated sessions bind beside it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.setblocking(False)
        enlarge_buffers(sock)
    except OSError:
        sock.close()
        raise
    return sock


def pin_socket(local: tuple[str, int], peer: PeerAddress, family: int) -> socket.socket:
    """A socket receiving only ``peer``'s datagrams to ``local`` (outside the reuseport
    group, which it therefore never reshuffles)."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(local)
        sock.connect(peer)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class _Peer:
    """Where a UDP session's client currently is (it may float), what awaits sending, and
    the socket pinning it to this worker (None: not floated, not a worker, or no
    descriptor left)."""

    __slots__ = ("address", "client", "pending", "pin")

    def __init__(self, address: PeerAddress, client: ClientSession) -> None:
        self.address = address
        self.client = client
        self.pending: list[bytes] = []
        self.pin: socket.socket | None = None


class OpenVpnUdpListener:
    """Serves OpenVPN clients on one bound UDP socket."""

    def __init__(
        self,
        sock: socket.socket,
        gateway: Gateway,
        acceptor: Acceptor,
        session_factory: SessionFactory,
        *,
        pin: bool = False,
    ) -> None:
        self.sock = sock
        self.pin = pin  # a worker sharing the port: pin a session that floats
        self.gateway = gateway
        self.acceptor = acceptor
        self.session_factory = session_factory
        self.drops: collections.Counter[str] = collections.Counter()
        self._clients: dict[PeerAddress, ClientSession] = {}
        self._by_peer_id: dict[int, _Peer] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dirty: list[_Peer] = []  # peers with pending datagrams, flush scheduled
        self._reading = False  # in a read burst: its end flushes, no callback needed
        self._last_read = 0.0  # time.monotonic() of the last readiness callback
        self.gso = sock.family in (socket.AF_INET, socket.AF_INET6)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return host, port

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock.fileno(), self._readable)
        self.gateway.flushers.append(self._flush)

    def close(self) -> None:
        self._flush()  # goodbyes queued by a shutdown leave before the socket goes
        with contextlib.suppress(ValueError):
            self.gateway.flushers.remove(self._flush)
        for peer in self._by_peer_id.values():
            self._unpin(peer)
        if self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
            self._loop = None
        self.sock.close()

    def _readable(self, sock: socket.socket | None = None) -> None:
        """Read a burst (from the listening socket, or a session's pin), then send what it
        produced at once (replies and TUN packets)."""
        tun = self.gateway.tun
        tun.hold()
        self._reading = True
        try:
            self._read_burst(sock)
        finally:
            self._reading = False
            self._flush()
            tun.flush()

    def _read_burst(self, sock: socket.socket | None = None) -> None:
        now = time.monotonic()
        busy = now - self._last_read < IDLE_GAP
        self._last_read = now
        recvfrom = (sock or self.sock).recvfrom
        clients = self._clients
        for _ in range(READ_BATCH if busy else 1):
            try:
                data, address = recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # ICMP errors surface here on Linux; the peer is gone
                self.drops["socket-error"] += 1
                continue
            client = clients.get(address)
            if client is not None and client.driver is not None:
                client.driver.feed(data)
            else:
                self._unknown(data, address)

    def _send(self, data: bytes, address: PeerAddress) -> None:
        try:
            self.sock.sendto(data, address)
        except (BlockingIOError, InterruptedError):
            self.drops["send-full"] += 1
        except OSError:
            self.drops["send-error"] += 1

    def _queue(self, peer: _Peer, data: bytes) -> None:
        """Hold a session's datagram until the burst, or this round of callbacks, is over."""
        if not peer.pending:
            if (not self._dirty and not self._reading and not self.gateway.tun.bursting
                    and self._loop is not None):
                self._loop.call_soon(self._flush)
            self._dirty.append(peer)
        peer.pending.append(data)

    def _flush(self) -> None:
        dirty, self._dirty = self._dirty, []
        for peer in dirty:
            datagrams, peer.pending = peer.pending, []
            if len(datagrams) == 1 or not self.gso:
                for data in datagrams:
                    self._send(data, peer.address)
            else:
                self._send_segmented(datagrams, peer.address)

    def _send_segmented(self, datagrams: list[bytes], address: PeerAddress) -> None:
        """Runs of equal-sized datagrams (plus one shorter tail) as one GSO send each."""
        count, start = len(datagrams), 0
        while start < count:
            size = len(datagrams[start])
            limit = min(count, start + min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // max(size, 1)))
            end = start + 1
            while end < limit and len(datagrams[end]) == size:
                end += 1
            if end < limit and len(datagrams[end]) < size:
                end += 1  # GSO allows a shorter last segment
            if end - start == 1 or not self.gso or not size:
                for data in datagrams[start:end]:
                    self._send(data, address)
            else:
                self._send_gso(datagrams[start:end], size, address)
            start = end

    def _send_gso(self, run: list[bytes], size: int, address: PeerAddress) -> None:
        try:
            self.sock.sendmsg([b"".join(run)], [(socket.SOL_UDP, UDP_SEGMENT,
                                                 _GSO_SIZE.pack(size))], 0, address)
        except (BlockingIOError, InterruptedError):
            self.drops["send-full"] += len(run)
        except OSError as exc:
            if exc.errno not in _GSO_REFUSED:
                self.drops["send-error"] += len(run)
                return
            self.gso = False
            log.info("UDP segmentation offload refused (%s); sending datagrams one by one",
                     exc.strerror or exc)
            for data in run:
                self._send(data, address)

    def _unknown(self, data: bytes, address: PeerAddress) -> None:
        assert self._loop is not None  # noqa: S101 (reading implies started)
        if len(data) >= DATA_V2_HEADER_LEN and data[0] >> 3 == Opcode.DATA_V2:
            peer_id = int.from_bytes(data[1:4], "big")
            peer = self._by_peer_id.get(peer_id)
            if peer is not None:
                self._float(peer, data, address)
                return
        now = self._loop.time()
        decision = self.acceptor.receive(data, address, now)
        if isinstance(decision, Reply):
            self._send(decision.data, address)
        elif isinstance(decision, Dropped):
            self.drops[decision.reason] += 1
            if decision.reason in REFUSALS:
                self.gateway.admission.refuse(decision.reason, source_of(address[0]))
        elif isinstance(decision, CreateSession):
            self._create(decision, address, now)

    def _float(self, peer: _Peer, data: bytes, address: PeerAddress) -> None:
        """Offer a data packet to the peer-id's session; move it here if it authenticates."""
        driver = peer.client.driver
        if driver is None:
            return
        before = driver.core.last_received
        driver.feed(data)
        if driver.closed or driver.core.last_received == before:
            self.drops["float-unauthenticated"] += 1
            return
        old = peer.address
        if self._clients.get(old) is peer.client:
            del self._clients[old]
        peer.address = address
        self._clients[address] = peer.client
        peer.client.real_address = format_peer(address)
        log.info("session %s floated from %s to %s", peer.client.session_id, format_peer(old),
                 peer.client.real_address)
        self._unpin(peer)
        self._pin(peer)

    def _pin(self, peer: _Peer) -> None:
        """Give a floated session its own connected socket (a worker only; never fatal)."""
        if not self.pin or self._loop is None:
            return
        try:
            pin = pin_socket(self.sock.getsockname(), peer.address, self.sock.family)
        except OSError as exc:  # out of descriptors: its data still comes by peer-id
            self.drops["pin-failed"] += 1
            log.warning("could not pin session %s to this worker: %s", peer.client.session_id,
                        exc.strerror or exc)
            return
        peer.pin = pin
        self._loop.add_reader(pin.fileno(), self._readable, pin)

    def _unpin(self, peer: _Peer) -> None:
        pin, peer.pin = peer.pin, None
        if pin is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(pin.fileno())
        pin.close()

    def _create(self, decision: CreateSession, address: PeerAddress, now: float) -> None:
        slot = self.gateway.admission.take(source_of(address[0]), "udp", lambda: evict())
        if slot is None:
            return
        try:
            core = self.session_factory(decision, now)
        except Exception:  # a broken first packet must not take the listener down
            log.exception("could not create a session for %s", format_peer(address))
            self.drops["session-create-failed"] += 1
            slot.release()
            return
        clients = self._clients
        by_peer_id = self._by_peer_id

        def transmit(data: bytes) -> None:
            self._queue(peer, data)

        def forget() -> None:
            if clients.get(peer.address) is peer.client:
                del clients[peer.address]
            if by_peer_id.get(peer.client.peer_id) is peer:
                del by_peer_id[peer.client.peer_id]
            self._unpin(peer)

        def evict() -> None:
            self.gateway.transport_lost(peer.client, "evicted: too many clients that have "
                                                     "not authenticated")

        client = self.gateway.new_session(
            core, transmit=transmit, protocol="udp", real_address=format_peer(address),
            on_closed=forget, slot=slot,
        )
        peer = _Peer(address, client)
        clients[address] = client
        by_peer_id[client.peer_id] = peer
        assert client.driver is not None  # noqa: S101 (set by new_session)
        client.driver.pump()
