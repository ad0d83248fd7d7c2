"""OpenVPN over UDP: one socket per address family, datagrams routed to session drivers.

A datagram from a known peer address goes straight to its session driver (the hot path: one
dict lookup). From an unknown address it goes to the stateless ``ServerAcceptor``, which
answers, drops, or says "create a session": only then is per-client state allocated.
Reads are batched per readiness callback; sends never block (a full socket drops, the
protocols above recover). Socket buffers are enlarged to absorb bursts.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
from collections.abc import Callable
from typing import Protocol

from sslvpn.openvpn.server import CreateSession, Decision, Dropped, Reply
from sslvpn.runtime.driver import SessionCore
from sslvpn.runtime.gateway import ClientSession, Gateway

log = logging.getLogger(__name__)

SOCKET_BUFFER = 4 * 1024 * 1024
READ_BATCH = 64
MAX_DATAGRAM = 65535

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


def bind_udp(host: str, port: int) -> socket.socket:
    """A non-blocking UDP socket bound to ``host:port`` (IPv6 sockets are IPv6-only)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.setblocking(False)
        enlarge_buffers(sock)
    except OSError:
        sock.close()
        raise
    return sock


class OpenVpnUdpListener:
    """Serves OpenVPN clients on one bound UDP socket."""

    def __init__(
        self,
        sock: socket.socket,
        gateway: Gateway,
        acceptor: Acceptor,
        session_factory: SessionFactory,
    ) -> None:
        self.sock = sock
        self.gateway = gateway
        self.acceptor = acceptor
        self.session_factory = session_factory
        self.drops: collections.Counter[str] = collections.Counter()
        self._clients: dict[PeerAddress, ClientSession] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return host, port

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock.fileno(), self._readable)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
            self._loop = None
        self.sock.close()

    def _readable(self) -> None:
        recvfrom = self.sock.recvfrom
        clients = self._clients
        for _ in range(READ_BATCH):
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

    def _unknown(self, data: bytes, address: PeerAddress) -> None:
        assert self._loop is not None  # noqa: S101 (reading implies started)
        now = self._loop.time()
        decision = self.acceptor.receive(data, address, now)
        if isinstance(decision, Reply):
            self._send(decision.data, address)
        elif isinstance(decision, Dropped):
            self.drops[decision.reason] += 1
        elif isinstance(decision, CreateSession):
            self._create(decision, address, now)

    def _create(self, decision: CreateSession, address: PeerAddress, now: float) -> None:
        try:
            core = self.session_factory(decision, now)
        except Exception:  # a broken first packet must not take the listener down
            log.exception("could not create a session for %s", format_peer(address))
            self.drops["session-create-failed"] += 1
            return
        clients = self._clients

        def transmit(data: bytes) -> None:
            self._send(data, address)

        def forget() -> None:
            if clients.get(address) is client:
                del clients[address]

        client = self.gateway.new_session(
            core, transmit=transmit, protocol="udp", real_address=format_peer(address),
            on_closed=forget,
        )
        clients[address] = client
        assert client.driver is not None  # noqa: S101 (set by new_session)
        client.driver.pump()
