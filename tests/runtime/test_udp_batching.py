"""Batched UDP sends: one flush per loop round, GSO runs, and the one-by-one fallback."""

from __future__ import annotations

import asyncio
import errno
import socket
from typing import Any

from sslvpn.runtime.openvpn_udp import OpenVpnUdpListener, _Peer, bind_udp


def _listener(sock: Any) -> OpenVpnUdpListener:
    return OpenVpnUdpListener(sock, gateway=None, acceptor=None, session_factory=None)  # type: ignore[arg-type]


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
