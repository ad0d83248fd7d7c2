"""Data channel: real 2.6.14 packets, the issue #612 nonce/AAD layout, replay, framing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given
from hypothesis import strategies as st

from sslvpn.openvpn.constants import PACKET_ID_WRAP_TRIGGER, PING_MAGIC, OccOpcode
from sslvpn.openvpn.data_channel import (
    OCC_EXIT_PAYLOAD,
    Compression,
    DataChannelKey,
    DataDropped,
    PacketIdExhausted,
    is_ping,
    occ_opcode,
)
from sslvpn.openvpn.keys import DataKeys, DirectionKey

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "openvpn"


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return data


def server_keys(fixture: dict[str, Any]) -> DataKeys:
    keys = fixture["data_keys"]
    c2s = DirectionKey(bytes.fromhex(keys["c2s_key"]), bytes.fromhex(keys["c2s_implicit_iv"]))
    s2c = DirectionKey(bytes.fromhex(keys["s2c_key"]), bytes.fromhex(keys["s2c_implicit_iv"]))
    return DataKeys("AES-256-GCM", encrypt=s2c, decrypt=c2s)


def mirror(keys: DataKeys) -> DataKeys:
    return DataKeys(keys.cipher, encrypt=keys.decrypt, decrypt=keys.encrypt)


@pytest.mark.parametrize("name", ["udp-tls-crypt.json", "udp-tls-crypt-v2.json"])
def test_open_captured_packets_and_reseal_bit_exact(name: str) -> None:
    fixture = load(name)
    keys = server_keys(fixture)
    server = DataChannelKey(keys, 0, peer_id=0)
    client = DataChannelKey(mirror(keys), 0, peer_id=0)
    c2s = [bytes.fromhex(p["hex"]) for p in fixture["data"] if p["dir"] == "c2s"]
    s2c = [bytes.fromhex(p["hex"]) for p in fixture["data"] if p["dir"] == "s2c"]
    for wire in c2s:
        ip = server.open(wire)
        assert ip[0] == 0x45 and ip[9] == 1  # IPv4 ICMP: the lab's ping through the tunnel
        assert ip[12:16] == bytes([10, 8, 0, 2])
    for wire in s2c:
        ip = client.open(wire)
        assert ip[0] == 0x45 and ip[16:20] == bytes([10, 8, 0, 2])
        # same key, same packet id, same plaintext: AEAD is deterministic
        assert server.seal(ip) == wire
    with pytest.raises(DataDropped) as err:
        server.open(c2s[0])
    assert err.value.reason == "replay"


def test_issue_612_nonce_and_aad_layout() -> None:
    key, iv = bytes(range(32)), bytes.fromhex("0102030405060708")
    keys = DataKeys("AES-256-GCM", DirectionKey(key, iv), DirectionKey(key, iv))
    wire = DataChannelKey(keys, 0, peer_id=5).seal(b"hello")
    assert wire[:8] == bytes.fromhex("48000005" "00000001")
    tag, ct = wire[8:24], wire[24:]
    nonce = bytes.fromhex("00000001") + iv
    assert AESGCM(key).decrypt(nonce, ct + tag, bytes.fromhex("4800000500000001")) == b"hello"
    v1 = DataChannelKey(keys, 2, peer_id=None).seal(b"hello")
    assert v1[:5] == bytes.fromhex("32" "00000001")
    assert AESGCM(key).decrypt(nonce, v1[21:] + v1[5:21], bytes.fromhex("00000001")) == b"hello"


@pytest.mark.parametrize("cipher", ["AES-128-GCM", "AES-256-GCM", "CHACHA20-POLY1305"])
def test_round_trip_every_cipher(cipher: str) -> None:
    keys = DataKeys.from_key2(bytes(range(256)), cipher, server=True)
    peer = DataKeys.from_key2(bytes(range(256)), cipher, server=False)
    server = DataChannelKey(keys, 1, peer_id=7)
    client = DataChannelKey(peer, 1, peer_id=7)
    assert client.open(server.seal(b"\x45abc")) == b"\x45abc"
    assert server.open(client.seal(b"\x60xyz")) == b"\x60xyz"
    assert server.bytes_in == 4 and server.bytes_out == 4
    assert "keys hidden" in repr(server)


def pair(compression: Compression = Compression.NONE) -> tuple[DataChannelKey, DataChannelKey]:
    keys = DataKeys.from_key2(bytes(range(256)), "AES-256-GCM", server=True)
    peer = DataKeys.from_key2(bytes(range(256)), "AES-256-GCM", server=False)
    return (
        DataChannelKey(keys, 0, peer_id=3, compression=compression),
        DataChannelKey(peer, 0, peer_id=3, compression=compression),
    )


def drop_reason(key: DataChannelKey, wire: bytes) -> str:
    with pytest.raises(DataDropped) as err:
        key.open(wire)
    return err.value.reason


def test_drops() -> None:
    server, client = pair()
    wires = [client.seal(bytes([0x45, i])) for i in range(70)]
    assert server.open(wires[69]) == b"\x45\x45"
    assert drop_reason(server, wires[69]) == "replay"
    assert drop_reason(server, wires[1]) == "too-old"
    assert server.open(wires[30]) == b"\x45\x1e"  # reordered inside the window
    flipped = bytearray(wires[40])
    flipped[-1] ^= 1
    assert drop_reason(server, bytes(flipped)) == "auth"
    assert server.open(wires[40]) == b"\x45\x28"  # the forged copy did not burn the id
    header = bytearray(wires[41])
    header[3] ^= 1  # peer-id is authenticated data
    assert drop_reason(server, bytes(header)) == "auth"
    assert drop_reason(server, wires[42][:20]) == "short"
    assert drop_reason(server, b"") == "short"
    assert drop_reason(server, b"\x49" + wires[42][1:]) == "key-id"
    assert drop_reason(server, b"\x20" + wires[42][1:]) == "not-data"


def test_packet_id_exhaustion() -> None:
    server, _ = pair()
    server._send_pid = PACKET_ID_WRAP_TRIGGER - 1
    assert not server.needs_rekey
    server.seal(b"x")
    assert server.needs_rekey
    server._send_pid = 0xFFFFFFFF
    with pytest.raises(PacketIdExhausted):
        server.seal(b"x")


@pytest.mark.parametrize(
    ("mode", "packet", "framed"),
    [
        (Compression.LZO_STUB, b"\x45abc", b"\xfa\x45abc"),
        (Compression.SWAP_STUB, b"\x45abc", b"\xfbabc\x45"),
        (Compression.STUB_V2, b"\x45abc", b"\x45abc"),
        (Compression.STUB_V2, b"\x50abc", b"\x50\x00\x50abc"),
    ],
)
def test_compression_framing(mode: Compression, packet: bytes, framed: bytes) -> None:
    server, client = pair(mode)
    wire = server.seal(packet)
    sent = DataKeys.from_key2(bytes(range(256)), "AES-256-GCM", server=True).encrypt
    nonce = wire[4:8] + sent.implicit_iv
    assert AESGCM(sent.key).decrypt(nonce, wire[24:] + wire[8:24], wire[:8]) == framed
    assert client.open(wire) == packet


def test_compressed_data_is_refused_and_stray_stub_byte_stripped() -> None:
    server, client = pair(Compression.LZO_STUB)
    plain_server, plain_client = pair()
    assert drop_reason(server, plain_client.seal(b"\x66lzo")) == "compressed"
    assert drop_reason(server, plain_client.seal(b"\x45raw")) == "bad-framing"
    assert plain_server.open(client.seal(b"\x45ip")) == b"\x45ip"
    v2_server, _ = pair(Compression.STUB_V2)
    assert drop_reason(v2_server, plain_client.seal(b"\x50\x01lz4")) == "compressed"


def test_ping_and_occ_recognition() -> None:
    server, client = pair(Compression.LZO_STUB)
    assert is_ping(client.open(server.seal(PING_MAGIC)))
    assert not is_ping(PING_MAGIC + b"\x00")
    assert occ_opcode(client.open(server.seal(OCC_EXIT_PAYLOAD))) is OccOpcode.EXIT
    assert occ_opcode(OCC_EXIT_PAYLOAD[:16]) is None
    assert occ_opcode(OCC_EXIT_PAYLOAD[:16] + b"\x99") is None
    assert occ_opcode(b"\x45" * 20) is None


@given(st.binary(max_size=120))
def test_random_bytes_only_ever_drop(data: bytes) -> None:
    server, _ = pair(Compression.STUB_V2)
    with pytest.raises(DataDropped):
        server.open(data)


@given(st.binary(max_size=1500), st.sampled_from(list(Compression)))
def test_seal_open_round_trip(packet: bytes, mode: Compression) -> None:
    if mode is Compression.NONE and packet[:1] == b"\xfa":
        packet = b"\x45" + packet
    server, client = pair(mode)
    assert client.open(server.seal(packet)) == packet
