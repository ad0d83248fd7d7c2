"""Hand-over between workers: peer-ids in each worker's lane, the message codec (garbage never
raises), and a datagram passed to the worker owning its peer-id over the unix socket."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import random
import stat
from pathlib import Path

from sslvpn.runtime.gateway import Gateway, GatewayOptions
from sslvpn.runtime.handover import Address, Handover, decode, encode, socket_path
from sslvpn.runtime.tun import MemoryTun
from tests.runtime.fakes import FakeCore, MemoryPolicy


async def test_a_workers_peer_ids_stay_in_its_lane() -> None:
    gateway = Gateway(MemoryTun(), GatewayOptions(
        pool=ipaddress.IPv4Network("10.8.0.0/24"), vpc_networks=(), peer_id_lane=(1, 3)),
        MemoryPolicy())
    peer_ids = [gateway.new_session(FakeCore(), transmit=lambda _d: None, protocol="udp",
                                    real_address="198.18.0.2:1", on_closed=lambda: None).peer_id
                for _ in range(5)]
    assert peer_ids == [1, 4, 7, 10, 13]


def test_messages_round_trip_and_garbage_is_refused_not_raised() -> None:
    for address in (("198.18.0.2", 40000), ("2001:db8::2", 1194, 0, 0)):
        message = encode("198.18.0.1", address, b"\x48\x00\x00\x03data")
        assert decode(message) == ("198.18.0.1", address, b"\x48\x00\x00\x03data")
    bad_headers = [b'[1, "h", 5]', b'["l", "h", 0]', b'["l", "h", 70000]', b'["l", "h", true]',
                   b'["l", "h"]', b"{}", b"\xff\xfe"]
    for header in bad_headers:
        assert decode(len(header).to_bytes(2, "big") + header + b"x") is None
    rng = random.Random(15)  # noqa: S311 (reproducible garbage, no secret)
    for _ in range(2000):
        decode(rng.randbytes(rng.randrange(0, 40)))  # never raises


async def test_a_datagram_reaches_the_worker_owning_its_peer_id(tmp_path: Path) -> None:
    workers = [Handover(tmp_path, index, 2) for index in range(2)]
    got: list[tuple[str, bytes, Address]] = []
    workers[0].start(lambda _local, data, address: got.append(("w0", data, address)))
    workers[1].start(lambda local, data, address: got.append((local, data, address)))
    assert stat.S_IMODE(os.stat(socket_path(tmp_path, 1)).st_mode) == 0o600
    try:
        assert workers[0].hand(2, "198.18.0.1", b"own", ("198.18.0.9", 5000)) is False
        assert workers[0].hand(7, "198.18.0.1", b"theirs", ("198.18.0.9", 5000)) is True
        async with asyncio.timeout(5):
            while not got:
                await asyncio.sleep(0.01)
        assert got == [("198.18.0.1", b"theirs", ("198.18.0.9", 5000))]
        workers[1].close()  # being restarted: the datagram is lost, counted, nothing raised
        assert workers[0].hand(9, "198.18.0.1", b"lost", ("198.18.0.9", 5000)) is True
        assert workers[0].counts == {"sent": 1, "lost": 1}
        assert not socket_path(tmp_path, 1).exists()
    finally:
        for worker in workers:
            worker.close()
