"""UDP 500/4500 transport: non-ESP marker demultiplexing, keepalives, counted garbage."""

from __future__ import annotations

import asyncio
import socket

import pytest

from sslvpn.runtime.ike_udp import Datagram, IkeSockets, demux_nat_t

IKE = bytes(range(1, 29))  # a 28-byte "IKE message" (non-zero SPIi)
ESP = b"\x00\x00\x10\x00" + b"\x00\x00\x00\x01" + b"payload"


@pytest.mark.parametrize(
    ("datagram", "kind", "payload"),
    [
        (b"\xff", Datagram.KEEPALIVE, b""),
        (b"\x00\x00\x00\x00" + IKE, Datagram.IKE, IKE),
        (ESP, Datagram.ESP, ESP),
        (b"\x00\x00\x00", Datagram.MALFORMED, b""),
        (b"\x01\x02\x03\x04\x05", Datagram.MALFORMED, b""),
        (b"", Datagram.MALFORMED, b""),
    ],
)
def test_demux(datagram: bytes, kind: Datagram, payload: bytes) -> None:
    assert demux_nat_t(datagram) == (kind, payload)


async def test_sockets_route_each_kind_and_add_the_marker() -> None:
    got: list[tuple[str, bytes, bool]] = []
    arrived = asyncio.Event()

    def on_ike(data: bytes, peer: tuple[str, int], nat_t: bool) -> None:
        got.append(("ike", data, nat_t))
        arrived.set()

    def on_esp(data: bytes, peer: tuple[str, int]) -> None:
        got.append(("esp", data, True))
        arrived.set()

    sockets = IkeSockets(on_ike, on_esp)
    await sockets.open("127.0.0.1", 0, 0)
    ike_port, natt_port = sockets.ports
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.settimeout(5)
    try:
        for data, port in ((b"\xff", natt_port), (b"\x00\x01", natt_port), (IKE, ike_port),
                           (b"\x00" * 4 + IKE, natt_port), (ESP, natt_port)):
            peer.sendto(data, ("127.0.0.1", port))
        async with asyncio.timeout(5):
            while len(got) < 3:
                arrived.clear()
                await arrived.wait()
        assert sorted(got) == [("esp", ESP, True), ("ike", IKE, False), ("ike", IKE, True)]
        assert (sockets.keepalives_received, sockets.malformed) == (1, 1)

        here = peer.getsockname()
        sockets.send_ike(IKE, here, nat_t=True)
        sockets.send_ike(IKE, here, nat_t=False)
        sockets.send_esp(ESP, here)
        sockets.send_keepalive(here)
        received = [await asyncio.to_thread(peer.recvfrom, 2048) for _ in range(4)]
        assert [(data, port) for data, (_, port) in received] == [
            (b"\x00" * 4 + IKE, natt_port), (IKE, ike_port), (ESP, natt_port), (b"\xff", natt_port)
        ]
    finally:
        peer.close()
        sockets.close()
    sockets.send_esp(ESP, ("127.0.0.1", 9))
    assert sockets.send_errors == 1
