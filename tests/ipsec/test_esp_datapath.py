"""The IPsec service's ESP data path on a MemoryTun and loopback UDP, with a hand-made SA.

No IKE here (the interop tests cover it): a CHILD_SA is installed as the IKE core would
announce it, and a test socket plays the peer's UDP 4500.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sslvpn.ipsec.esp.packet import DropReason, EspCipher, EspKeys, InboundSa, OutboundSa
from sslvpn.ipsec.ike import events as ev
from sslvpn.ipsec.ike.constants import EncrId
from sslvpn.ipsec.ike.proposals import Suite
from sslvpn.runtime.drop_ledger import MAX_SOURCES
from sslvpn.runtime.ipsec_service import IpsecService
from sslvpn.runtime.tun import MemoryTun
from sslvpn.store import ipsec_queries as q
from sslvpn.store.async_store import AsyncStore
from sslvpn.store.db import open_engine, session, upgrade

KEY_IN, KEY_OUT = b"\x11" * 36, b"\x22" * 36
SPI_IN, SPI_OUT = 0x1000_0001, 0x2000_0002


def ipv4(src: str, dst: str, payload: bytes = b"x" * 40) -> bytes:
    total = 20 + len(payload)
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 1, 0, 64, 17, 0,
                         ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed)
    return header + payload


class Harness:
    def __init__(self, service: IpsecService, tun: MemoryTun, peer: socket.socket) -> None:
        self.service = service
        self.tun = tun
        self.peer = peer
        self.to_us = OutboundSa(SPI_IN, EspCipher.AES_GCM16, EspKeys(KEY_IN))
        self.from_us = InboundSa(SPI_OUT, EspCipher.AES_GCM16, EspKeys(KEY_OUT))

    async def received(self) -> bytes:
        data = await asyncio.wait_for(asyncio.to_thread(self.peer.recv, 4096), 5)
        inner = self.from_us.open(data)
        assert not isinstance(inner, DropReason), inner
        return inner


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    engine = open_engine(f"sqlite:///{tmp_path / 'db'}")
    upgrade(engine)
    with session(engine) as s:
        q.create_vpn_gateway(s, name="vgw", public_address="127.0.0.1", bandwidth_bps=8_000_000)
        q.create_customer_gateway(s, name="dc1", address="127.0.0.2")
        q.create_tunnel(s, name="t1", gateway="vgw", customer_gateway="dc1",
                        psk="si-lab-psk-0123456789abcdef", ike_proposals="aes256-sha256-ecp256",
                        esp_proposals="aes256gcm16", start_action="wait")
        q.add_policy(s, tunnel="t1", local_cidr="10.2.0.0/24", peer_cidr="10.1.0.0/24")
    tun = MemoryTun()
    service = IpsecService(AsyncStore(engine), tun_factory=lambda: tun, ike_port=0, nat_t_port=0,
                           manage_routes=False, reload_interval=0.05)
    task = asyncio.create_task(service.run())
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    try:
        await asyncio.wait_for(service.ready.wait(), 5)
        tunnel = service.tunnel("t1")
        tunnel.peer_nat_t = peer.getsockname()
        tunnel._on_event(ev.ChildSaEstablished(  # as the IKE core announces a CHILD_SA
            spi_in=SPI_IN, spi_out=SPI_OUT, cipher=Suite(encr=EncrId.AES_GCM_16, key_bits=256),
            keys_in=ev.EspKeys(KEY_IN, b""), keys_out=ev.EspKeys(KEY_OUT, b""),
            local_ts=(), remote_ts=()), 0.0)
        yield Harness(service, tun, peer)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        peer.close()
        engine.dispose()


def _natt_port(service: IpsecService) -> int:
    return next(iter(service._gateways.values())).sockets.ports[1]


async def test_vpc_packets_go_out_sealed_and_peer_packets_come_in(harness: Harness) -> None:
    service, tun = harness.service, harness.tun
    outgoing = ipv4("10.2.0.10", "10.1.0.10")
    tun.inject(outgoing)
    assert await harness.received() == outgoing
    incoming = ipv4("10.1.0.10", "10.2.0.10")
    harness.peer.sendto(harness.to_us.seal(incoming), ("127.0.0.1", _natt_port(service)))
    assert await tun.wait_written(lambda p: p == incoming)
    status = service.tunnel_status()[0]
    assert (status.state, status.spi_in, status.spi_out) == ("up", "10000001", "20000002")
    assert (status.packets_in, status.packets_out) == (1, 1)
    assert (status.bytes_in, status.bytes_out) == (len(incoming), len(outgoing))


async def test_a_tun_burst_is_sealed_and_sent_when_the_burst_ends(harness: Harness) -> None:
    packets = [ipv4("10.2.0.10", "10.1.0.10", bytes([i]) * 100) for i in range(5)]
    harness.peer.setblocking(False)
    harness.tun.inject(*packets)  # one burst: its ESP is on the wire when inject returns
    sent = [harness.peer.recv(4096) for _ in packets]
    assert [harness.from_us.open(data) for data in sent] == packets


async def test_policy_replay_and_garbage_are_dropped_and_counted(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    service, tun = harness.service, harness.tun
    tun.inject(ipv4("10.2.0.10", "10.9.0.1"))  # no policy for this destination
    natt = ("127.0.0.1", _natt_port(service))
    spoofed = harness.to_us.seal(ipv4("10.5.0.1", "10.2.0.10"))  # not from the peer's range
    good_packet = ipv4("10.1.0.10", "10.2.0.10", b"ok" * 10)
    good = harness.to_us.seal(good_packet)
    for datagram in (spoofed, good, good, b"\x00\x00\x10\x00garbage!", bytes(3)):
        harness.peer.sendto(datagram, natt)
    await tun.wait_written(lambda p: p == good_packet)

    drops = service.drops.reasons

    def counted() -> bool:
        return drops["esp-replayed"] == 1 and drops["esp-unknown-spi"] == 1

    async with asyncio.timeout(5):
        while not counted():
            await asyncio.sleep(0.01)
    assert drops["no-policy"] == 1 and drops["no-sa"] == 0 and drops["esp-policy"] == 1
    assert drops["esp-truncated"] == 0  # 3 bytes are not ESP at all: the socket drops them
    assert tun.written == [good_packet]
    # by source: the peer's ip:port for ESP, the inner source address for what left the TUN
    peer = f"127.0.0.1:{harness.peer.getsockname()[1]}"
    assert service.drops.sources == {peer: 3, "10.2.0.10": 1}
    status = service.tunnel_status()[0]
    assert status.esp_drops == {"esp-policy": 1, "esp-replayed": 1}  # the unknown SPI is no
    assert status.esp_drop_sources == {peer: 2}  # tunnel's: only the gateway counts it
    assert status.gateway_drops == {"esp-policy": 1, "esp-replayed": 1, "esp-unknown-spi": 1,
                                    "no-policy": 1}
    assert status.gateway_drop_sources == {peer: 3, "10.2.0.10": 1}
    service._drops_logged = -1e9  # as if the last summary was long ago
    with caplog.at_level(logging.WARNING):
        service._log_drops()
    assert ("esp-policy 1, esp-replayed 1, esp-unknown-spi 1, no-policy 1; top sources: "
            f"{peer} (3), 10.2.0.10 (1)") in caplog.text


async def test_bandwidth_cap_drops_the_excess(harness: Harness) -> None:
    service = harness.service
    packet = ipv4("10.2.0.10", "10.1.0.10", b"z" * 1400)
    for _ in range(200):  # 290 kB at once against 1 MB/s with a 64 kB burst
        harness.tun.inject(packet)
    dropped = service.drops.reasons["bandwidth-out"]
    assert dropped > 100 and service.tunnel_status()[0].packets_out == 200 - dropped
    assert service.tunnel_status()[0].esp_drop_sources == {"10.2.0.10": dropped}


async def test_idle_tunnel_sends_nat_keepalives_and_ignores_the_peers(harness: Harness) -> None:
    service = harness.service
    harness.peer.sendto(b"\xff", ("127.0.0.1", _natt_port(service)))
    service._keepalive_interval = 0.1  # 20 s in production
    data = await asyncio.wait_for(asyncio.to_thread(harness.peer.recv, 64), 5)
    assert data == b"\xff"
    sockets = next(iter(service._gateways.values())).sockets
    assert sockets.keepalives_received == 1 and sockets.keepalives_sent >= 1
    assert harness.tun.written == []


async def test_a_gateway_without_tunnels_opens_no_tun(tmp_path: Path) -> None:
    engine = open_engine(f"sqlite:///{tmp_path / 'db'}")
    upgrade(engine)
    opened: list[MemoryTun] = []

    def factory() -> MemoryTun:
        opened.append(MemoryTun())
        return opened[-1]

    service = IpsecService(AsyncStore(engine), tun_factory=factory, manage_routes=False,
                           reload_interval=0.01)
    task = asyncio.create_task(service.run())
    try:
        await asyncio.wait_for(service.ready.wait(), 5)
        assert opened == [] and service.tunnel_status() == []
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        engine.dispose()


async def test_a_tunnel_without_policy_stays_down_with_a_reason(tmp_path: Path) -> None:
    engine = open_engine(f"sqlite:///{tmp_path / 'db'}")
    upgrade(engine)
    with session(engine) as s:
        q.create_vpn_gateway(s, name="vgw", public_address="127.0.0.1")
        q.create_customer_gateway(s, name="dc1", address="127.0.0.2")
        q.create_tunnel(s, name="t1", gateway="vgw", customer_gateway="dc1",
                        psk="si-lab-psk-0123456789abcdef", ike_proposals="aes256-sha256-ecp256",
                        esp_proposals="aes256gcm16")
    service = IpsecService(AsyncStore(engine), tun_factory=MemoryTun, ike_port=0, nat_t_port=0,
                           manage_routes=False, reload_interval=0.01)
    task = asyncio.create_task(service.run())
    try:
        await asyncio.wait_for(service.ready.wait(), 5)
        status = service.tunnel_status()[0]
        assert status.state == "down" and "no SPD policy" in (status.last_error or "")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        engine.dispose()


async def test_random_datagrams_never_raise_and_the_tunnel_keeps_working(
    harness: Harness,
) -> None:
    service = harness.service
    rng = random.Random(7)  # noqa: S311 - reproducible garbage, not keys
    for _ in range(500):
        data = rng.randbytes(rng.randrange(0, 200))
        service._from_esp("127.0.0.1", data, ("127.0.0.2", 4500))
        service._from_ike("127.0.0.1", data, ("127.0.0.2", rng.choice((500, 4500))), True)
        service._from_ike("127.0.0.1", data, ("127.0.0.2", 500), False)
        service._from_ike("127.0.0.1", data, ("127.0.0.9", 500), False)
    assert service.ike_drops.reasons["unknown-peer"] == 500
    packet = ipv4("10.2.0.10", "10.1.0.10")
    harness.tun.inject(packet)
    assert await harness.received() == packet
    assert service.tunnel_status()[0].state == "up"


async def test_changing_the_bandwidth_cap_keeps_the_tunnel(harness: Harness) -> None:
    service = harness.service
    tunnel = service.tunnel("t1")
    with session(service._store.engine) as s:
        q.set_vpn_gateway_bandwidth(s, name="vgw", bandwidth_bps=None)
    packet = ipv4("10.2.0.10", "10.1.0.10", b"z" * 1400)

    async def uncapped() -> None:
        while next(iter(service._gateways.values())).bucket_out is not None:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(uncapped(), 5)
    for _ in range(200):
        harness.tun.inject(packet)
    assert service.drops.reasons["bandwidth-out"] == 0
    assert service.tunnel("t1") is tunnel and tunnel.status(0.0).packets_out == 200


async def test_ike_drops_are_summarised_in_the_log_with_their_top_sources(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    service = harness.service
    for port in range(5):
        service._from_ike("127.0.0.1", b"junk", ("127.0.0.9", 7000 + port), False)
    for _ in range(3):
        service._from_ike("127.0.0.1", bytes(30), ("127.0.0.2", 500), False)
    service._drops_logged = service._now() - 61  # a minute since the last line
    with caplog.at_level(logging.WARNING):
        service._log_drops()
    assert "IKE drops in the last 61 s: malformed 3, unknown-peer 5" in caplog.text
    assert "top sources: 127.0.0.9 (5), 127.0.0.2 (3)" in caplog.text
    assert service.tunnel("t1").status(0.0).ike_drops == {"malformed": 3}
    caplog.clear()
    service._drops_logged = service._now() - 61
    service._log_drops()
    assert "IKE drops" not in caplog.text  # nothing new, no line


async def test_a_spoofed_source_flood_keeps_the_drop_tables_small_and_the_attacker_visible(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """100,000 ESP datagrams with unknown SPIs, each from another forged address, and in
    the second half every 10th from one heavy source: the per-source tables stay bounded,
    the heavy source shows on top in status and in the summary line, the tunnel works."""
    service = harness.service
    heavy = ("198.51.100.7", 4500)
    junk = struct.pack("!II", 0xDEAD_BEEF, 1) + bytes(40)
    for i in range(100_000):
        late = i >= 50_000 and i % 10 == 0  # it starts once the tables are long full
        source = heavy if late else (str(ipaddress.IPv4Address(0x0A000000 + i)), 4500)
        service._from_esp("127.0.0.1", junk, source)
    ledger = service.drops
    assert ledger.reasons["esp-unknown-spi"] == 100_000
    assert len(ledger.sources) <= MAX_SOURCES and len(ledger._recent_sources) <= MAX_SOURCES
    assert sum(ledger.sources.values()) == 100_000  # the folded ones are still counted
    top = list(service.tunnel_status()[0].gateway_drop_sources.items())
    assert top[0][0] == "other" and top[0][1] > 94_000  # but the latest forged ones
    assert top[1] == ("198.51.100.7:4500", 5_000)
    service._drops_logged = service._now() - 61
    with caplog.at_level(logging.WARNING):
        service._log_drops()
    assert "esp-unknown-spi 100000; top sources: other (" in caplog.text
    assert "198.51.100.7:4500 (5000)" in caplog.text
    packet = ipv4("10.2.0.10", "10.1.0.10")
    harness.tun.inject(packet)
    assert await harness.received() == packet
