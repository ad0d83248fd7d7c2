"""A real gateway service on loopback (MemoryTun, port 0) and C2's client-role session.

Builds a data folder with the lifecycle functions the CLI uses, runs ``GatewayService``
without touching the host's network, and connects ``ClientSession`` cores over real UDP or
TCP sockets through the same ``SessionDriver`` the gateway uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from sqlalchemy import Engine

from client_profiles import lifecycle
from sslvpn.config import DataPaths
from sslvpn.openvpn.client import ClientConfig, ClientSession
from sslvpn.openvpn.events import Event, SessionClosed, SessionEstablished, TunnelPacket
from sslvpn.openvpn.framing import TcpFrameDecoder, frame
from sslvpn.openvpn.static_key import parse_static_key, parse_tls_crypt_v2_client_key
from sslvpn.openvpn.tls import TlsContext, TlsCredentials
from sslvpn.openvpn.tls_wrap import TlsCryptCodec
from sslvpn.runtime.driver import SessionDriver
from sslvpn.runtime.service import ExtraTask, GatewayService, ServeOptions
from sslvpn.runtime.tun import MemoryTun
from sslvpn.store import db, queries
from sslvpn.store.async_store import AsyncStore
from sslvpn.store.models import Certificate


def make_data_folder(tmp: Path) -> tuple[DataPaths, Engine]:
    paths = DataPaths(tmp / "data")
    paths.data_dir.mkdir()
    engine = db.open_engine(f"sqlite:///{paths.database}")
    db.upgrade(engine)
    lifecycle.initialise(paths, engine, public_addresses=["127.0.0.1"], port=1194, proto="both",
                         vpc=["10.10.0.0/24"])
    return paths, engine


def issue(paths: DataPaths, engine: Engine, user: str, device: str = "laptop") -> Certificate:
    with db.session(engine) as s:
        try:
            queries.get_user(s, name=user)
        except Exception:  # noqa: BLE001
            queries.create_user(s, name=user)
    return lifecycle.issue_client(engine, paths, user_name=user, device=device, days=30,
                                  actor="test")


@dataclass
class TestClient:
    """One client-role session over a real socket, with what it received."""

    session: ClientSession
    driver: SessionDriver | None = None
    established: asyncio.Event = field(default_factory=asyncio.Event)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    packets: list[bytes] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    transport: Any = None
    got_packet: asyncio.Event = field(default_factory=asyncio.Event)

    def on_event(self, _driver: SessionDriver, event: Event) -> None:
        self.events.append(event)
        if isinstance(event, SessionEstablished):
            self.established.set()
        elif isinstance(event, TunnelPacket):
            self.packets.append(event.ip_packet)
            self.got_packet.set()
        elif isinstance(event, SessionClosed):
            self.closed.set()

    @property
    def address(self) -> str:
        for option in self.session.pushed_options:
            if option.startswith("ifconfig "):
                return option.split()[1]
        raise AssertionError("no ifconfig pushed")

    def send(self, packet: bytes) -> None:
        assert self.driver is not None
        self.driver.send_packet(packet)

    async def wait_packet(self, timeout: float = 5) -> bytes:
        async with asyncio.timeout(timeout):
            while not self.packets:
                self.got_packet.clear()
                await self.got_packet.wait()
        return self.packets.pop(0)

    def close_transport(self) -> None:
        if self.transport is not None:
            self.transport.close()


def client_config(paths: DataPaths, row: Certificate, *, v2: bool, tcp: bool) -> ClientConfig:
    ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    assert row.key_pem is not None
    tls = TlsContext(
        TlsCredentials(certificate=x509.load_pem_x509_certificate(row.cert_pem.encode()),
                       private_key=load_pem_private_key(row.key_pem.encode(), None),  # type: ignore[arg-type]
                       trust=(ca,)),
        server=False,
    )
    if v2:
        assert row.tls_crypt_v2_key is not None
        key, wkc = parse_tls_crypt_v2_client_key(row.tls_crypt_v2_key)
        return ClientConfig(tls=tls, codec=TlsCryptCodec(key, server=False), wkc=wkc, tcp=tcp)
    key = parse_static_key(paths.tls_crypt_key.read_text())
    return ClientConfig(tls=tls, codec=TlsCryptCodec(key, server=False), tcp=tcp)


class UdpClientProtocol(asyncio.DatagramProtocol):
    def __init__(self, client: TestClient) -> None:
        self.client = client

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.client.driver is not None:
            self.client.driver.feed(data)


class TcpClientProtocol(asyncio.Protocol):
    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.decoder = TcpFrameDecoder()

    def data_received(self, data: bytes) -> None:
        for packet in self.decoder.feed(data):
            if self.client.driver is not None:
                self.client.driver.feed(packet)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.closed.set()


async def connect(service: GatewayService, config: ClientConfig) -> TestClient:
    """Start a client-role session against the service's first listener of that transport."""
    loop = asyncio.get_running_loop()
    client = TestClient(ClientSession(config, loop.time()))
    if config.tcp:
        host, port = service.tcp[0].address
        transport, _ = await loop.create_connection(lambda: TcpClientProtocol(client), host, port)

        def transmit(data: bytes) -> None:
            transport.write(frame(data))
    else:
        host, port = service.udp[0].address
        transport, _ = await loop.create_datagram_endpoint(
            lambda: UdpClientProtocol(client), remote_addr=(host, port))

        def transmit(data: bytes) -> None:
            transport.sendto(data)
    client.transport = transport
    client.driver = SessionDriver(client.session, transmit=transmit,  # type: ignore[arg-type]
                                  on_event=client.on_event)
    client.driver.pump()
    return client


async def connected(service: GatewayService, config: ClientConfig) -> TestClient:
    """``connect``, then wait (at most 10 s) until the session is established."""
    client = await connect(service, config)
    async with asyncio.timeout(10):
        await client.established.wait()
    return client


@contextlib.asynccontextmanager
async def running_service(paths: DataPaths, engine: Engine, listen: str = "127.0.0.1", *,
                          tun: MemoryTun | None = None, store: AsyncStore | None = None,
                          sweep_interval: float = 0.2, extra_tasks: Sequence[ExtraTask] = (),
                          **options: Any) -> AsyncIterator[tuple[GatewayService, MemoryTun]]:
    """The gateway service on ``tun`` (a new MemoryTun by default) until the block ends;
    ``options`` go to `ServeOptions` (e.g. ``node``)."""
    tun = tun or MemoryTun()
    service = GatewayService(
        paths, store or AsyncStore(engine),
        ServeOptions(listen=(listen,), port=0, configure_network=False,
                     sweep_interval=sweep_interval, extra_tasks=extra_tasks, **options),
        tun_factory=lambda _name: tun,
    )
    task = asyncio.create_task(service.run())
    async with asyncio.timeout(10):
        await service.ready.wait()
    try:
        yield service, tun
    finally:
        service.stop()
        async with asyncio.timeout(10):
            await task
        await service.store.close()


def vpn_address(client: TestClient) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(client.address)
