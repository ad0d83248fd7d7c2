"""The data fast path (``open_data``/``seal_data``) against the full input/output path."""

from __future__ import annotations

from sslvpn.openvpn.constants import PACKET_ID_WRAP_TRIGGER, PING_MAGIC
from sslvpn.openvpn.endpoint import Endpoint, Timing
from sslvpn.openvpn.events import Event, KeysRenegotiated, PacketDropped, TunnelPacket
from tests.openvpn.conftest import Pki
from tests.openvpn.pair import Pair

IP_PACKET = bytes.fromhex("4500001c000100004001f7ac0a0800020a0a000a") + b"\x08\x00\xf7\xff\0\0\0\0"


def _events(session: Endpoint) -> list[Event]:
    return list(iter(session.next_event, None))


def test_sealed_and_opened_packets_cross_without_events(pki: Pki) -> None:
    pair = Pair(pki)
    server = pair.connect()
    _events(server)
    for i in range(5):
        datagram = server.seal_data(IP_PACKET + bytes([i]), pair.now)
        assert datagram is not None
        pair.client.receive_datagram(datagram, pair.now)
        pair.client.send_packet(IP_PACKET + bytes([i]), pair.now)
        (sent,) = pair.client.datagrams_to_send(pair.now)
        assert server.open_data(sent, pair.now + 1) == IP_PACKET + bytes([i])
    assert [e.ip_packet for e in _events(pair.client) if isinstance(e, TunnelPacket)] == [
        IP_PACKET + bytes([i]) for i in range(5)]
    assert _events(server) == [] and server.datagrams_to_send(pair.now) == []
    assert server.last_received == pair.now + 1 and server.last_sent == pair.now
    assert not server.drops


def test_what_the_fast_path_declines_takes_the_full_path(pki: Pki) -> None:
    pair = Pair(pki)
    server = pair.connect()
    _events(server)
    pair.client.send_packet(IP_PACKET, pair.now)
    (sent,) = pair.client.datagrams_to_send(pair.now)
    assert server.open_data(sent, pair.now) == IP_PACKET
    assert server.open_data(sent, pair.now) is None  # a replay: dropped, counted, reported
    assert server.drops["data-replay"] == 1
    assert [type(e) for e in _events(server)] == [PacketDropped]
    pair.client._send_data_payload(PING_MAGIC)  # a keepalive is consumed, not delivered
    (ping,) = pair.client.datagrams_to_send(pair.now)
    assert server.open_data(ping, pair.now) is None and _events(server) == []
    before = sum(server.drops.values())
    assert server.open_data(b"\x38garbage", pair.now) is None  # a control opcode
    assert sum(server.drops.values()) == before + 1
    assert server.open_data(b"", pair.now) is None and server.drops["empty"] == 1


def test_a_packet_on_another_key_goes_through_the_full_path(pki: Pki) -> None:
    pair = Pair(pki, server_timing=Timing(reneg_seconds=100.0))
    server = pair.connect()
    pair.client.send_packet(IP_PACKET, pair.now)
    (old,) = pair.client.datagrams_to_send(pair.now)  # sealed with key 0, held back
    pair.advance(101.0)
    assert any(isinstance(e, KeysRenegotiated) for e in pair.server_events)
    _events(server)
    assert server.open_data(old, pair.now) is None  # the lame duck opens it the full way
    assert [e.ip_packet for e in _events(server) if isinstance(e, TunnelPacket)] == [IP_PACKET]


def test_seal_declines_without_changing_anything(pki: Pki) -> None:
    pair = Pair(pki)
    assert pair.client.seal_data(IP_PACKET, pair.now) is None  # no key yet
    server = pair.connect()
    key = server._send_key
    assert key is not None and key.crypto is not None
    key.crypto._send_pid = PACKET_ID_WRAP_TRIGGER  # due for a rekey: the full path starts it
    assert server.seal_data(IP_PACKET, pair.now) is None
    assert key.crypto.packets_sent == PACKET_ID_WRAP_TRIGGER
    server.send_packet(IP_PACKET, pair.now)
    assert len(server.datagrams_to_send(pair.now)) == 2  # the soft reset and the data packet
    server.close()
    assert server.seal_data(IP_PACKET, pair.now) is None
