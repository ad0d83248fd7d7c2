"""Batched sends: one flush per TUN burst or loop round, GSO runs, the one-by-one fallback."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
from pathlib import Path
from typing import Any

import pytest

from sslvpn.runtime.gateway import Gateway, GatewayOptions
from sslvpn.runtime.openvpn_udp import OpenVpnUdpListener, _Peer, bind_udp
from sslvpn.runtime.tun import MemoryTun
from tests.runtime.fakes import MemoryPolicy, ipv4
from tests.runtime.loopback import (
    client_config,
    connected,
    issue,
    make_data_folder,
    running_service,
)

VPC_HOST = "10.10.0.10"


def _listener(sock: Any) -> OpenVpnUdpListener:
    gateway = Gateway(MemoryTun(), GatewayOptions(pool=ipaddress.IPv4Network("10.8.0.0/24"),
                                                  vpc_networks=()), MemoryPolicy())
    return OpenVpnUdpListener(sock, gateway, acceptor=None, session_factory=None)  # type: ignore[arg-type]


def _receiver() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    return sock


def _receive(sock: socket.socket, count: int) -> list[bytes]:
    return [sock.recv(65535) for _ in range(count)]


async def test_a_round_of_transmits_leaves_in_one_flush_as_separate_datagrams() -> None:
    receiver = _receiver()
    listener = _listener(bind_udp("127.0.0.1", 0))
    listener.start()
    peer = _Peer(receiver.getsockname(), None)  # type: ignore[arg-type]
    sent = [bytes([i]) * 1400 for i in range(50)] + [b"short tail", b"x" * 1400, b"y" * 60]
    try:
        for data in sent:
            listener._queue(peer, data)
        assert peer.pending == sent  # nothing left yet: the flush runs after this callback
        await asyncio.sleep(0)
        assert peer.pending == []
        got = await asyncio.to_thread(_receive, receiver, len(sent))
        assert got == sent
        assert listener.gso and not listener.drops
        assert listener.gateway.flushers == [listener._flush]
    finally:
        listener.close()
        receiver.close()


class _RefusingSocket:
    """A socket whose kernel refuses UDP_SEGMENT: sendmsg fails, sendto works."""

    family = socket.AF_INET

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.gso_tries = 0

    def sendmsg(self, *_args: object) -> int:
        self.gso_tries += 1
        raise OSError(errno.EIO, "Input/output error")

    def sendto(self, data: bytes, _address: object) -> int:
        self.sent.append(data)
        return len(data)


def test_refused_segmentation_falls_back_to_one_by_one_for_good() -> None:
    sock = _RefusingSocket()
    listener = _listener(sock)
    batch = [b"a" * 100] * 5 + [b"b" * 50]
    listener._send_segmented(batch, ("127.0.0.1", 9))
    listener._send_segmented(batch, ("127.0.0.1", 9))
    assert sock.sent == batch + batch
    assert sock.gso_tries == 1 and not listener.gso and not listener.drops


def test_empty_datagrams_never_form_a_segmented_run() -> None:
    sock = _RefusingSocket()
    listener = _listener(sock)
    listener._send_segmented([b"", b"", b""], ("127.0.0.1", 9))
    assert sock.sent == [b"", b"", b""] and sock.gso_tries == 0 and listener.gso


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
async def test_a_tun_burst_leaves_in_one_write_per_client(tmp_path: Path, tcp: bool) -> None:
    paths, engine = make_data_folder(tmp_path)
    row = issue(paths, engine, "alice")
    async with running_service(paths, engine) as (service, tun):
        client = await connected(service, client_config(paths, row, v2=False, tcp=tcp))
        writes: list[int] = []
        if tcp:
            (connection,) = service.tcp[0].connections
            transport: Any = connection.transport
            real_write = transport.write

            def write(data: bytes) -> None:
                writes.append(len(data))
                real_write(data)

            transport.write = write
        else:
            listener: Any = service.udp[0]
            real_gso = listener._send_gso

            def send_gso(run: list[bytes], size: int, address: Any) -> None:
                writes.append(len(run))
                real_gso(run, size, address)

            listener._send_gso = send_gso
        burst = [ipv4(VPC_HOST, client.address, bytes([i]) * 1000) for i in range(20)]
        tun.inject(*burst)
        assert len(writes) == 1  # sent when the burst ended, not a loop round later
        got = [await client.wait_packet() for _ in burst]
        assert got == burst
        client.close_transport()
    engine.dispose()
