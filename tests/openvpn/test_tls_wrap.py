"""tls-crypt, tls-crypt-v2 and tls-auth against packets captured from OpenVPN 2.6.14."""

from __future__ import annotations

import hmac
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sslvpn.openvpn.constants import EARLY_NEG_START, Opcode
from sslvpn.openvpn.packet import ControlPacket
from sslvpn.openvpn.static_key import wrap_client_key
from sslvpn.openvpn.tls_wrap import (
    ControlCodec,
    ControlWrap,
    FirstPacket,
    FirstPacketDropped,
    HmacKey,
    PlainCodec,
    ServerWrapKeys,
    TlsAuthCodec,
    TlsCryptCodec,
    UnwrapError,
    check_first_packet,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "openvpn"


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return data


TC = load("udp-tls-crypt.json")
TC2 = load("udp-tls-crypt-v2.json")
TC_KEY = bytes.fromhex(TC["tls_crypt_key"])


def control(fixture: dict[str, Any], index: int) -> bytes:
    return bytes.fromhex(fixture["control"][index]["hex"])


def v2_server_key() -> bytes:
    key = bytearray(128)
    key[0:32] = bytes.fromhex(TC2["server_key_ke"])
    key[64:96] = bytes.fromhex(TC2["server_key_ka"])
    return bytes(key)


def test_captured_client_reset_unwraps_on_the_server() -> None:
    result = check_first_packet(ServerWrapKeys.tls_crypt(TC_KEY), control(TC, 0))
    assert isinstance(result, FirstPacket)
    pkt = result.packet
    assert pkt.opcode is Opcode.CONTROL_HARD_RESET_CLIENT_V2
    assert (pkt.key_id, pkt.acks, pkt.message_id, pkt.payload) == (0, (), 0, b"")
    assert pkt.session_id == bytes.fromhex("1943f4359ac23bbb")
    assert result.opened.packet_id == 1
    assert result.early_negotiation is False


def test_captured_server_reset_unwraps_on_the_client_and_acks_zero() -> None:
    client = TlsCryptCodec(TC_KEY, server=False)
    opened = client.open(control(TC, 1))
    pkt = opened.packet
    assert pkt.opcode is Opcode.CONTROL_HARD_RESET_SERVER_V2
    assert pkt.acks == (0,) and pkt.message_id == 0
    assert pkt.remote_session_id == bytes.fromhex("1943f4359ac23bbb")
    assert opened.packet_id == 1


def test_captured_handshake_unwraps_and_rewraps_bit_exact() -> None:
    server = TlsCryptCodec(TC_KEY, server=True)
    client = TlsCryptCodec(TC_KEY, server=False)
    for item in TC["control"]:
        wire = bytes.fromhex(item["hex"])
        opened = (server if item["dir"] == "c2s" else client).open(wire)
        sender = client if item["dir"] == "c2s" else server
        assert sender.seal(opened.packet, opened.packet_id, opened.timestamp) == wire
    first_tls = server.open(control(TC, 2)).packet
    assert first_tls.opcode is Opcode.CONTROL_V1 and first_tls.message_id == 1
    assert first_tls.payload[:1] == b"\x16"  # a TLS handshake record: the ClientHello


def test_captured_tls_crypt_v2_reset_and_wkc_packet() -> None:
    keys = ServerWrapKeys.tls_crypt_v2(v2_server_key())
    result = check_first_packet(keys, control(TC2, 0))
    assert isinstance(result, FirstPacket)
    assert result.packet.opcode is Opcode.CONTROL_HARD_RESET_CLIENT_V3
    assert result.opened.packet_id == EARLY_NEG_START + 1
    assert result.early_negotiation is True
    assert result.metadata is not None and result.metadata[0] == 0x01  # timestamp metadata
    assert result.packet.wkc == bytes.fromhex(TC2["wkc"])
    # the server's reset carries the early-negotiation TLV asking for RESEND_WKC
    client = TlsCryptCodec(bytes.fromhex(TC2["client_key"]), server=False)
    reset = client.open(control(TC2, 1)).packet
    assert reset.payload == bytes.fromhex("000100020001")
    again = check_first_packet(keys, control(TC2, 2))
    assert isinstance(again, FirstPacket)
    assert again.packet.opcode is Opcode.CONTROL_WKC_V1
    assert again.packet.message_id == 1 and again.packet.acks == (0,)
    # later packets of the session open with the per-client codec, no WKc needed
    assert again.codec.open(control(TC2, 5)).packet.opcode is Opcode.ACK_V1


def test_tls_crypt_v2_refusals() -> None:
    keys = ServerWrapKeys.tls_crypt_v2(v2_server_key())
    wire = bytearray(control(TC2, 0))
    assert check_first_packet(keys, control(TC2, 5)) == FirstPacketDropped("wkc-missing")
    wire[-100] ^= 1  # inside WKc
    assert check_first_packet(keys, bytes(wire)) == FirstPacketDropped("wkc-invalid")
    wire = bytearray(control(TC2, 0))
    wire[30] ^= 1  # inside the tls-crypt tag (the reset is 54 bytes + WKc)
    assert check_first_packet(keys, bytes(wire)) == FirstPacketDropped("auth")
    wrong = ServerWrapKeys.tls_crypt_v2(bytes(128))
    assert check_first_packet(wrong, control(TC2, 0)) == FirstPacketDropped("wkc-invalid")
    assert check_first_packet(keys, control(TC2, 0)[:-1]) == FirstPacketDropped("wkc-invalid")


def test_first_packet_refusals() -> None:
    keys = ServerWrapKeys.tls_crypt(TC_KEY)
    reset = control(TC, 0)
    assert check_first_packet(keys, b"") == FirstPacketDropped("short")
    assert check_first_packet(keys, control(TC, 1)) == FirstPacketDropped("bad-opcode")
    assert check_first_packet(keys, b"\x48" + reset[1:]) == FirstPacketDropped("bad-opcode")
    assert check_first_packet(keys, reset[:40]) == FirstPacketDropped("short")
    assert check_first_packet(keys, reset[:-1]) == FirstPacketDropped("auth")
    flipped = bytearray(reset)
    flipped[20] ^= 0x80
    assert check_first_packet(keys, bytes(flipped)) == FirstPacketDropped("auth")
    other = bytes(reversed(TC_KEY))
    assert check_first_packet(ServerWrapKeys.tls_crypt(other), reset) == FirstPacketDropped("auth")
    # a client-role key (direction swapped) must not verify the client's own packet
    client = TlsCryptCodec(TC_KEY, server=False)
    assert isinstance(client.open(control(TC, 1)).packet, ControlPacket)
    with pytest.raises(UnwrapError):
        TlsCryptCodec(TC_KEY, server=False).open(reset)


def test_control_wrap_replay_protection() -> None:
    server = ControlWrap(TlsCryptCodec(TC_KEY, server=True), timestamp=1000)
    client = ControlWrap(TlsCryptCodec(TC_KEY, server=False), timestamp=2000)
    sid = bytes.fromhex("0102030405060708")
    pkts = [ControlPacket(Opcode.CONTROL_V1, 0, sid, message_id=i, payload=b"x") for i in range(3)]
    wires = [client.wrap(p) for p in pkts]
    assert server.unwrap(wires[1]) == pkts[1]
    assert server.unwrap(wires[0]) == pkts[0]  # reordering inside the window is fine
    with pytest.raises(UnwrapError) as err:
        server.unwrap(wires[0])
    assert err.value.reason == "replay"
    # an older sender time is a replay, a newer one restarts the window
    server.accept_replay_id(5, 2001)
    with pytest.raises(UnwrapError):
        server.unwrap(wires[2])
    stale = ControlWrap(TlsCryptCodec(TC_KEY, server=True), timestamp=0)
    stale.accept_replay_id(1, 5)
    with pytest.raises(UnwrapError):
        stale.accept_replay_id(0, 6)  # replay id 0 is never valid


def test_control_wrap_continues_after_a_stateless_reply() -> None:
    wrap = ControlWrap(TlsCryptCodec(TC_KEY, server=True), timestamp=7, last_packet_id=1)
    sid = bytes.fromhex("0102030405060708")
    wire = wrap.wrap(ControlPacket(Opcode.ACK_V1, 0, sid, (1,), sid))
    opened = TlsCryptCodec(TC_KEY, server=False).open(wire)
    assert (opened.packet_id, opened.timestamp) == (2, 7)


VECTORS = load("openvpn-test-pkt-vectors.json")
VKEY = bytes.fromhex(VECTORS["static_key"])


def vector(name: str) -> bytes:
    return bytes.fromhex(VECTORS[name])


def test_openvpn_unit_test_tls_auth_vectors() -> None:
    """test_pkt.c test_tls_decrypt_lite_auth: NORMAL verifies, INVERSE does not."""
    keys = ServerWrapKeys.tls_auth(VKEY, direction=0)
    reset = check_first_packet(keys, vector("client_reset_v2_tls_auth"))
    assert isinstance(reset, FirstPacket)
    assert reset.packet.opcode is Opcode.CONTROL_HARD_RESET_CLIENT_V2
    assert (reset.opened.packet_id, reset.packet.message_id) == (1, 0)
    hello = check_first_packet(keys, vector("client_ack_tls_auth_randomid"))
    assert isinstance(hello, FirstPacket)
    assert hello.packet.opcode is Opcode.CONTROL_V1 and hello.packet.message_id == 1
    assert hello.packet.payload[:3] == bytes.fromhex("160301")
    flipped = bytearray(vector("client_ack_tls_auth_randomid"))
    flipped[20] = 0x23
    assert check_first_packet(keys, bytes(flipped)) == FirstPacketDropped("auth")
    inverse = ServerWrapKeys.tls_auth(VKEY, direction=1)
    dropped = check_first_packet(inverse, vector("client_reset_v2_tls_auth"))
    assert dropped == FirstPacketDropped("auth")
    assert check_first_packet(keys, vector("client_reset_v2_none")) == FirstPacketDropped("short")
    # re-signing the decoded packet with the client direction gives the same bytes
    client = TlsAuthCodec(VKEY, direction=1)
    opened = reset.opened
    assert client.seal(opened.packet, opened.packet_id, opened.timestamp) == vector(
        "client_reset_v2_tls_auth"
    )


def test_openvpn_unit_test_tls_crypt_vector() -> None:
    """test_pkt.c test_tls_decrypt_lite_crypt: valid, and any byte set to 0x23 invalidates."""
    keys = ServerWrapKeys.tls_crypt(VKEY)
    wire = vector("client_reset_v2_tls_crypt")
    assert isinstance(check_first_packet(keys, wire), FirstPacket)
    tls_auth_reset = vector("client_reset_v2_tls_auth")
    assert isinstance(check_first_packet(keys, tls_auth_reset), FirstPacketDropped)
    for i in range(len(wire)):
        broken = bytearray(wire)
        broken[i] = 0x23
        assert isinstance(check_first_packet(keys, bytes(broken)), FirstPacketDropped), i
    plain = check_first_packet(ServerWrapKeys.none(), vector("client_reset_v2_none"))
    assert isinstance(plain, FirstPacket) and plain.packet.message_id == 0


def test_plain_mode() -> None:
    sid = bytes.fromhex("1122334455667788")
    pkt = ControlPacket(Opcode.CONTROL_HARD_RESET_CLIENT_V2, 0, sid, message_id=0)
    wire = PlainCodec().seal(pkt, 1, 1)
    result = check_first_packet(ServerWrapKeys.none(), wire)
    assert isinstance(result, FirstPacket) and result.packet == pkt
    assert ControlWrap(PlainCodec(), timestamp=0).unwrap(wire) == pkt


def test_wrapped_client_key_round_trip() -> None:
    server_key = bytes(range(128))
    kc = bytes(range(255, -1, -1))
    wkc = wrap_client_key(server_key, kc, b"\x00user")
    sid = bytes.fromhex("1122334455667788")
    pkt = ControlPacket(Opcode.CONTROL_HARD_RESET_CLIENT_V3, 0, sid, message_id=0, wkc=wkc)
    wire = TlsCryptCodec(kc, server=False).seal(pkt, EARLY_NEG_START + 1, 99)
    result = check_first_packet(ServerWrapKeys.tls_crypt_v2(server_key), wire)
    assert isinstance(result, FirstPacket)
    assert result.packet == pkt and result.metadata == b"\x00user"
    assert "keys hidden" in repr(result.codec) and kc.hex()[:16] not in repr(result)


ALL_KEYS = [
    ServerWrapKeys.none(),
    ServerWrapKeys.tls_crypt(TC_KEY),
    ServerWrapKeys.tls_crypt_v2(bytes(range(128))),
    ServerWrapKeys.tls_auth(TC_KEY),
]


@given(st.binary(max_size=400), st.sampled_from(ALL_KEYS))
def test_random_bytes_only_ever_drop(data: bytes, keys: ServerWrapKeys) -> None:
    result = check_first_packet(keys, data)
    assert isinstance(result, FirstPacket | FirstPacketDropped)


@given(st.binary(max_size=300), st.integers(1, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_wrap_unwrap_round_trip(payload: bytes, packet_id: int, timestamp: int) -> None:
    sid = bytes.fromhex("1122334455667788")
    pkt = ControlPacket(Opcode.CONTROL_V1, 3, sid, (1, 2), sid[::-1], 7, payload)
    pairs: list[tuple[ControlCodec, ControlCodec]] = [
        (TlsCryptCodec(TC_KEY, server=False), TlsCryptCodec(TC_KEY, server=True)),
        (TlsAuthCodec(TC_KEY, direction=1), TlsAuthCodec(TC_KEY, direction=0)),
    ]
    for sender, receiver in pairs:
        opened = receiver.open(sender.seal(pkt, packet_id, timestamp))
        assert (opened.packet, opened.packet_id, opened.timestamp) == (pkt, packet_id, timestamp)


def test_codec_restarts_its_keystream_for_every_packet() -> None:
    """One codec seals packet after packet (odd sizes leave partial blocks behind)."""
    sid = bytes.fromhex("1122334455667788")
    packets = [ControlPacket(Opcode.CONTROL_V1, 0, sid, message_id=i, payload=b"x" * size)
               for i, size in enumerate((1, 17, 250, 3, 1200))]
    reused, opener = TlsCryptCodec(TC_KEY, server=False), TlsCryptCodec(TC_KEY, server=True)
    for index, pkt in enumerate(packets):
        wire = reused.seal(pkt, index + 1, 7)
        assert wire == TlsCryptCodec(TC_KEY, server=False).seal(pkt, index + 1, 7)
        assert opener.open(wire).packet == pkt
        if index == 2:
            reused.trim()  # an idle session gives its contexts back; they come again
            opener.trim()


@given(st.binary(max_size=200), st.lists(st.binary(max_size=90), max_size=3),
       st.sampled_from(["sha1", "sha256", "sha512"]))
def test_precomputed_hmac_matches_the_standard_library(
    key: bytes, parts: list[bytes], digest: str
) -> None:
    assert HmacKey(key, digest).digest(*parts) == hmac.digest(key, b"".join(parts), digest)


@given(st.binary(max_size=300))
def test_session_unwrap_only_raises_unwrap_errors(data: bytes) -> None:
    wrap = ControlWrap(TlsCryptCodec(TC_KEY, server=True), timestamp=0)
    try:
        wrap.unwrap(data)
    except UnwrapError as exc:
        assert exc.reason in {"short", "auth", "malformed", "wkc-malformed", "replay"}
