"""Listener edges: garbage and silence from unknown peers cost nothing and change nothing."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest

from sslvpn.runtime import openvpn_tcp
from sslvpn.runtime.service import GatewayService, ServeOptions
from sslvpn.runtime.tun import MemoryTun
from sslvpn.store.async_store import AsyncStore
from tests.runtime.loopback import issue, make_data_folder, running_service


async def test_udp_garbage_is_counted_not_answered(tmp_path: Path) -> None:
    paths, engine = make_data_folder(tmp_path)
    issue(paths, engine, "alice")
    async with running_service(paths, engine) as (service, _tun):
        loop = asyncio.get_running_loop()
        received: list[bytes] = []

        class Peer(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: object) -> None:
                received.append(data)

        transport, _ = await loop.create_datagram_endpoint(
            Peer, remote_addr=service.udp[0].address)
        for size in (0, 1, 14, 100, 1500):
            transport.sendto(os.urandom(size))
        transport.sendto(b"\x38" + os.urandom(60))  # a hard reset opcode with a bad tag
        listener = service.udp[0]
        async with asyncio.timeout(5):
            while sum(listener.drops.values()) < 5:
                await asyncio.sleep(0.01)
        transport.close()
        assert received == []
        assert service.gateway is not None and service.gateway.list_sessions() == []
    engine.dispose()


async def test_tcp_garbage_and_silence_are_hung_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(openvpn_tcp, "FIRST_PACKET_TIMEOUT", 0.2)
    paths, engine = make_data_folder(tmp_path)
    async with running_service(paths, engine) as (service, _tun):
        host, port = service.tcp[0].address
        for first in (b"\x00\x00", b"\x00\x10" + os.urandom(16), b""):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(first)
            async with asyncio.timeout(5):
                assert await reader.read() == b""  # closed by the gateway
            writer.close()
        drops = service.tcp[0].drops
        assert drops["bad-frame"] == 1
        assert drops["no-reset-in-time"] == 1
        assert sum(drops.values()) == 3
        assert not service.tcp[0].connections
    engine.dispose()


def _hold_udp_and_tcp_port() -> tuple[socket.socket, socket.socket]:
    """Bind one port number on loopback for both UDP and TCP (retrying if TCP's is taken)."""
    for _ in range(50):
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.bind(("127.0.0.1", 0))
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            udp.bind(("127.0.0.1", tcp.getsockname()[1]))
        except OSError:
            tcp.close()
            udp.close()
            continue
        tcp.listen()
        return udp, tcp
    raise AssertionError("no port free for both UDP and TCP")


async def test_a_taken_port_fails_the_start_and_leaves_nothing(tmp_path: Path) -> None:
    paths, engine = make_data_folder(tmp_path)
    udp, tcp = _hold_udp_and_tcp_port()
    with udp, tcp:
        port = udp.getsockname()[1]
        tun = MemoryTun()
        service = GatewayService(
            paths, AsyncStore(engine),
            ServeOptions(listen=("127.0.0.1",), port=port, configure_network=False),
            tun_factory=lambda _name: tun,
        )
        with pytest.raises(OSError, match=f"could not listen on port {port}"):
            await service.run()
        await service.store.close()
    assert tun.closed
    assert not paths.control_socket.exists()
    engine.dispose()
