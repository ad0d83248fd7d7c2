"""UDP 500/4500 transport: marker demultiplexing, keepalives, counted garbage, ESP batching."""

from __future__ import annotations

import asyncio
import errno
import os
import socket

import pytest

from sslvpn.runtime.ike_udp import Datagram, IkeSockets, demux_nat_t, gso_runs

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


@pytest.mark.parametrize(
    ("sizes", "runs"),
    [
        ([100], [(0, 1)]),
        ([100, 100, 100], [(0, 3)]),
        ([100, 100, 60, 100], [(0, 3), (3, 4)]),  # a shorter packet may end a run
        ([100, 120, 120], [(0, 1), (1, 3)]),  # a longer one may not
        ([1000] * 70, [(0, 64), (64, 70)]),  # at most GSO_MAX_SEGMENTS per send
        ([1500] * 50, [(0, 43), (43, 50)]),  # and at most GSO_MAX_BYTES
        ([], []),
        ([0, 0], [(0, 2)]),  # never raises, even for empty datagrams
    ],
)
def test_gso_runs(sizes: list[int], runs: list[tuple[int, int]]) -> None:
    assert gso_runs(sizes) == runs


async def _open_pair() -> tuple[IkeSockets, socket.socket]:
    sockets = IkeSockets(lambda *_: None, lambda *_: None)
    await sockets.open("127.0.0.1", 0, 0)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.settimeout(5)
    return sockets, peer


async def test_a_burst_of_esp_leaves_as_separate_datagrams_in_order() -> None:
    sockets, peer = await _open_pair()
    try:
        here = peer.getsockname()
        burst = [ESP[:4] + i.to_bytes(4, "big") + bytes([i]) * 1400 for i in range(1, 71)]
        burst += [ESP, ESP + b"longer than the one before"]
        for packet in burst:
            sockets.send_esp(packet, here)
        sockets.send_keepalive(here)  # sent after the queued ESP, not before it
        received = [await asyncio.to_thread(peer.recv, 4096) for _ in range(len(burst) + 1)]
        assert received == [*burst, b"\xff"]
        assert sockets.gso and sockets.send_errors == 0
    finally:
        peer.close()
        sockets.close()


class RefusingSocket:
    """A socket whose kernel refuses UDP_SEGMENT with ``error``; plain sends work."""

    def __init__(self, error: int) -> None:
        self.error = error
        self.sent: list[bytes] = []

    def sendmsg(self, *args: object) -> int:
        raise OSError(self.error, os.strerror(self.error))

    def sendto(self, data: bytes, peer: tuple[str, int]) -> int:
        self.sent.append(data)
        return len(data)


@pytest.mark.parametrize(("error", "gso_after"), [(errno.EIO, False), (errno.EINVAL, True)])
async def test_without_gso_packets_go_one_by_one(error: int, gso_after: bool) -> None:
    sockets, peer = await _open_pair()
    real = sockets._natt
    fake = RefusingSocket(error)
    sockets._natt = fake  # type: ignore[assignment]
    try:
        for _ in range(3):
            sockets.send_esp(ESP, ("127.0.0.1", 9))
        sockets.flush()
        assert fake.sent == [ESP] * 3
        assert sockets.gso is gso_after and sockets.send_errors == 0
    finally:
        sockets._natt = real
        peer.close()
        sockets.close()


async def test_a_full_buffer_drops_the_batch_and_counts_it() -> None:
    sockets, peer = await _open_pair()
    real = sockets._natt
    sockets._natt = RefusingSocket(errno.EAGAIN)  # type: ignore[assignment]
    try:
        for _ in range(5):
            sockets.send_esp(ESP, ("127.0.0.1", 9))
        sockets.flush()
        assert sockets.send_errors == 5 and sockets.gso
    finally:
        sockets._natt = real
        peer.close()
        sockets.close()


async def test_coalesced_reads_are_split_back_into_datagrams() -> None:
    """Our GSO burst reaches a UDP_GRO socket whole on loopback; each ESP packet comes out."""
    got: list[bytes] = []
    arrived = asyncio.Event()

    def on_esp(data: bytes, peer: tuple[str, int]) -> None:
        got.append(data)
        arrived.set()

    receiver = IkeSockets(lambda *_: None, on_esp)
    sender = IkeSockets(lambda *_: None, lambda *_: None)
    await receiver.open("127.0.0.1", 0, 0)
    await sender.open("127.0.0.1", 0, 0)
    try:
        burst = [ESP[:4] + i.to_bytes(4, "big") + bytes([i]) * 1200 for i in range(1, 41)]
        burst.append(ESP)  # a shorter last one rides in the same batch
        for packet in burst:
            sender.send_esp(packet, ("127.0.0.1", receiver.ports[1]))
        async with asyncio.timeout(5):
            while len(got) < len(burst):
                arrived.clear()
                await arrived.wait()
        assert got == burst
        assert receiver.coalesced_reads >= 1
    finally:
        sender.close()
        receiver.close()


async def test_the_end_of_each_read_burst_is_announced_after_its_datagrams() -> None:
    events: list[str] = []
    done = asyncio.Event()

    def batch_end() -> None:
        events.append("end")
        if events.count("esp") == 3:
            done.set()

    sockets = IkeSockets(lambda *_: None, lambda d, p: events.append("esp"), batch_end)
    await sockets.open("127.0.0.1", 0, 0)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _ in range(3):
            peer.sendto(ESP, ("127.0.0.1", sockets.ports[1]))
        await asyncio.wait_for(done.wait(), 5)
        assert events[-1] == "end" and events.count("esp") == 3
        assert events.index("end") > events.index("esp")  # never before the first datagram
    finally:
        peer.close()
        sockets.close()
