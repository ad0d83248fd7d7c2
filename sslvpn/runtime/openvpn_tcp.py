"""OpenVPN over TCP: one connection per client, packets framed with a 2-byte length.

The listener accepts connections itself, so that admission (``sslvpn.runtime.admission``:
max-clients, a budget per source address and a global cap on connections that have not
authenticated) refuses a connection before anything is built for it, and so that running
out of file descriptors is noticed: accepting then pauses for ``ACCEPT_PAUSE`` and the
limit and its fix are logged once (the kernel keeps the waiting clients in the backlog).
Each connection's first frame goes to the stateless ``ServerAcceptor`` (TCP mode: the
transport already proved the address); a session is created only when it says so. Every
later frame feeds that session's driver. Outgoing packets are framed and written without
waiting; when the peer stops reading and the buffered output passes a high-water mark,
further packets are dropped (tunnelled TCP retransmits; the control channel has its own
reliability layer), so one slow client never holds unbounded memory. Frames sent during a
burst of reads (the connection's own input, or a TUN read burst) are joined and written
once when it ends, anything else at the end of that round of loop callbacks, instead of one
socket write per packet.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
import socket
from typing import cast

from sslvpn.openvpn.framing import FramingError, TcpFrameDecoder, frame
from sslvpn.openvpn.server import CreateSession, Dropped, Reply
from sslvpn.runtime.admission import Slot, source_of
from sslvpn.runtime.gateway import ClientSession, Gateway
from sslvpn.runtime.openvpn_udp import Acceptor, SessionFactory, enlarge_buffers, format_peer

log = logging.getLogger(__name__)

WRITE_HIGH_WATER = 4 * 1024 * 1024
FIRST_PACKET_TIMEOUT = 10.0  # a connection that sends no valid reset by then is closed
BACKLOG = 1024  # connections the kernel completes while the loop is busy (capped by somaxconn)
ACCEPT_BATCH = 64  # connections accepted per readiness callback
ACCEPT_PAUSE = 1.0  # seconds accepting pauses when no descriptor is left (as asyncio's)
_OUT_OF_DESCRIPTORS = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))


class _Connection(asyncio.Protocol):
    """One TCP client: de-frames input, frames output."""

    def __init__(self, listener: OpenVpnTcpListener) -> None:
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.peer_address: object = None
        self.client: ClientSession | None = None
        self.slot: Slot | None = None  # set by the listener before the transport exists
        self._decoder = TcpFrameDecoder()
        self._pending: list[bytes] = []
        self._reading = False  # in data_received: its end flushes, no callback needed
        self.listed = False  # in the listener's list of connections to flush

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream server's transport (uvloop's does not subclass asyncio.Transport)
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            enlarge_buffers(sock)
        self.peer_address = transport.get_extra_info("peername")
        address = self.peer_address
        self.peer = format_peer(address) if isinstance(address, tuple) else str(address)
        self.listener.connections.add(self)
        self._deadline = asyncio.get_running_loop().call_later(
            FIRST_PACKET_TIMEOUT, self._no_session_in_time
        )
        if self.slot is not None and self.slot.released:  # evicted while being set up
            self._abort("evicted")

    def evict(self) -> None:
        """Admission needs this connection's place (it has not authenticated)."""
        if self.transport is not None:
            self._abort("evicted")

    def _no_session_in_time(self) -> None:
        if self.client is None and self.transport is not None:
            self._abort("no-reset-in-time")

    def data_received(self, data: bytes) -> None:
        try:
            frames = self._decoder.feed(data)
        except FramingError:
            self._abort("bad-frame")
            return
        tun = self.listener.gateway.tun
        tun.hold()
        self._reading = True
        try:
            for packet in frames:
                self._frame(packet)
                if self.transport is None:
                    break
        finally:
            self._reading = False
            self.flush()
            tun.flush()

    def _frame(self, packet: bytes) -> None:
        client = self.client
        if client is not None and client.driver is not None:
            client.driver.feed(packet)
            return
        listener = self.listener
        now = asyncio.get_running_loop().time()
        decision = listener.acceptor.receive(packet, self.peer_address, now)
        if isinstance(decision, CreateSession):
            try:
                core = listener.session_factory(decision, now)
            except Exception:  # a bad first packet must not take the listener down
                log.exception("could not create a session for %s", self.peer)
                self._abort("session-create-failed")
                return
            self._deadline.cancel()
            self.client = listener.gateway.new_session(
                core, transmit=self.send, protocol="tcp", real_address=self.peer,
                on_closed=self._session_closed, slot=self.slot,
            )
            assert self.client.driver is not None  # noqa: S101 (set by new_session)
            self.client.driver.pump()
        elif isinstance(decision, Reply):
            self.send(decision.data)
        elif isinstance(decision, Dropped):
            self._abort(decision.reason)

    def send(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if transport.get_write_buffer_size() > WRITE_HIGH_WATER:
            self.listener.drops["send-full"] += 1
            return
        pending = self._pending
        if not pending:
            if not self._reading and not self.listener.gateway.tun.bursting:
                asyncio.get_running_loop().call_soon(self.flush)
            if not self.listed:
                self.listed = True
                self.listener.dirty.append(self)
        pending.append(frame(data))

    def flush(self) -> None:
        frames, self._pending = self._pending, []
        transport = self.transport
        if frames and transport is not None and not transport.is_closing():
            transport.write(b"".join(frames))

    def _abort(self, reason: str) -> None:
        """Bad input before a session exists: count it and hang up."""
        self.listener.drops[reason] += 1
        if self.transport is not None:
            self.transport.abort()
            self.transport = None

    def _session_closed(self) -> None:
        """The session ended (kick, exit, revocation): flush what it sent, then close."""
        self.client = None
        self.flush()
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline.cancel()
        self.transport = None
        if self.slot is not None:
            self.slot.release()
        self.listener.connections.discard(self)
        client, self.client = self.client, None
        if client is not None:
            self.listener.gateway.transport_lost(client, "connection closed by peer")


class OpenVpnTcpListener:
    """Serves OpenVPN clients on one listening TCP socket."""

    def __init__(
        self,
        gateway: Gateway,
        acceptor: Acceptor,
        session_factory: SessionFactory,
    ) -> None:
        self.gateway = gateway
        self.acceptor = acceptor
        self.session_factory = session_factory
        self.drops: collections.Counter[str] = collections.Counter()
        self.connections: set[_Connection] = set()
        self.dirty: list[_Connection] = []  # connections with frames waiting for a flush
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._starting: set[asyncio.Task[None]] = set()  # transports being made

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> None:
        """Listen; ``reuse_port`` shares the port with the other workers of this node (the
        kernel spreads new connections, an accepted one stays with its worker)."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family, backlog=BACKLOG,
                                    reuse_port=reuse_port)
        sock.setblocking(False)
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._accept)
        self.gateway.flushers.append(self.flush)

    def _accept(self) -> None:
        """Accept what waits (a batch), admitting each connection by its source."""
        assert self._sock is not None and self._loop is not None  # noqa: S101 (started)
        for _ in range(ACCEPT_BATCH):
            try:
                conn, address = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_DESCRIPTORS:
                    self._out_of_descriptors()
                    return
                self.drops["accept-error"] += 1  # e.g. ECONNABORTED: the client gave up
                continue
            self._admit(conn, address)

    def _admit(self, conn: socket.socket, address: tuple[str, int]) -> None:
        assert self._loop is not None  # noqa: S101 (started)
        connection = _Connection(self)
        slot = self.gateway.admission.take(source_of(address[0]), "tcp", connection.evict)
        if slot is None:
            conn.close()
            return
        connection.slot = slot
        conn.setblocking(False)
        task = self._loop.create_task(self._serve(conn, connection))
        self._starting.add(task)
        task.add_done_callback(self._starting.discard)

    async def _serve(self, conn: socket.socket, connection: _Connection) -> None:
        assert self._loop is not None  # noqa: S101 (started)
        try:
            await self._loop.connect_accepted_socket(lambda: connection, conn)
        except (OSError, asyncio.CancelledError) as exc:  # reset at once, or shutting down
            conn.close()
            if connection.slot is not None:
                connection.slot.release()
            if isinstance(exc, asyncio.CancelledError):
                raise

    def _out_of_descriptors(self) -> None:
        """No descriptor for a new connection: say so once, retry after a pause."""
        assert self._sock is not None and self._loop is not None  # noqa: S101 (started)
        self.gateway.admission.out_of_descriptors()
        self._loop.remove_reader(self._sock.fileno())
        self._loop.call_later(ACCEPT_PAUSE, self._resume_accepting)

    def _resume_accepting(self) -> None:
        if self._sock is not None and self._loop is not None:
            self._loop.add_reader(self._sock.fileno(), self._accept)

    def flush(self) -> None:
        """Write every connection's queued frames (after a TUN burst)."""
        dirty, self.dirty = self.dirty, []
        for connection in dirty:
            connection.listed = False
            connection.flush()

    @property
    def address(self) -> tuple[str, int]:
        assert self._sock is not None  # noqa: S101 (after start)
        host, port = self._sock.getsockname()[:2]
        return host, port

    async def close(self) -> None:
        with contextlib.suppress(ValueError):
            self.gateway.flushers.remove(self.flush)
        sock, self._sock = self._sock, None
        if sock is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(sock.fileno())
        sock.close()
        for task in list(self._starting):
            task.cancel()
        for connection in list(self.connections):
            connection.flush()
            if connection.transport is not None:
                connection.transport.close()
