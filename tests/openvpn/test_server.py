"""Stateless acceptor: HMAC cookie, tls-crypt(-v2) first-packet checks, TCP, rate limit."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sslvpn.openvpn.constants import Opcode
from sslvpn.openvpn.packet import ControlPacket
from sslvpn.openvpn.server import (
    NO_COOKIE_SUPPORT,
    AcceptorConfig,
    CreateSession,
    Dropped,
    Reply,
    ServerAcceptor,
    early_negotiation_tlvs,
    starts_new_session,
)
from sslvpn.openvpn.static_key import timestamp_metadata, wrap_client_key
from sslvpn.openvpn.tls_wrap import ServerWrapKeys, TlsCryptCodec

KEY = bytes(range(256))
V2_SERVER_KEY = bytes(range(128, 256))
CLIENT_SID = bytes.fromhex("1122334455667788")
ADDR = ("198.18.0.2", 50164)


def _acceptor(**kw: object) -> ServerAcceptor:
    wrap = kw.pop("wrap", ServerWrapKeys.tls_crypt(KEY))
    config = AcceptorConfig(wrap=wrap, **kw)  # type: ignore[arg-type]
    return ServerAcceptor(config, rand=lambda n: b"\x42" * n)


def _reset(codec: TlsCryptCodec, pid: int = 1, opcode: Opcode = Opcode.CONTROL_HARD_RESET_CLIENT_V2,
           wkc: bytes | None = None) -> bytes:
    return codec.seal(ControlPacket(opcode, 0, CLIENT_SID, message_id=0, wkc=wkc), pid, 1000)


def test_reset_gets_stateless_reply_with_cookie() -> None:
    acceptor, client = _acceptor(), TlsCryptCodec(KEY, server=False)
    decision = acceptor.receive(_reset(client), ADDR, 100.0)
    assert isinstance(decision, Reply)
    opened = client.open(decision.data)
    reply = opened.packet
    assert reply.opcode is Opcode.CONTROL_HARD_RESET_SERVER_V2 and reply.message_id == 0
    assert reply.acks == (0,) and reply.remote_session_id == CLIENT_SID and reply.payload == b""
    assert opened.packet_id == 1
    assert reply.session_id == acceptor.cookie(ADDR, CLIENT_SID, 100.0)
    # a retransmitted reset in the same slot gets the same session id
    again = acceptor.receive(_reset(client, pid=2), ADDR, 101.0)
    assert isinstance(again, Reply)
    assert client.open(again.data).packet.session_id == reply.session_id


def test_cookie_ack_creates_session_and_wrong_cookie_does_not() -> None:
    acceptor, client = _acceptor(), TlsCryptCodec(KEY, server=False)
    cookie = acceptor.cookie(ADDR, CLIENT_SID, 100.0)
    hello = ControlPacket(Opcode.CONTROL_V1, 0, CLIENT_SID, (0,), cookie, 1, b"\x16\x03hello")
    decision = acceptor.receive(client.seal(hello, 2, 1000), ADDR, 130.0)
    assert isinstance(decision, CreateSession)
    assert decision.reset_done and decision.server_session_id == cookie
    assert decision.first.payload == b"\x16\x03hello" and decision.first_replay_id == (2, 1000)
    assert decision.last_packet_id == 1
    # another address, a forged cookie, or a cookie from long ago: no state
    assert acceptor.receive(client.seal(hello, 3, 1000), ("198.18.0.9", 1), 130.0) == Dropped(
        "bad-cookie"
    )
    assert acceptor.receive(client.seal(hello, 4, 1000), ADDR, 300.0) == Dropped("bad-cookie")
    bare = ControlPacket(Opcode.CONTROL_V1, 0, CLIENT_SID, message_id=1, payload=b"x")
    assert acceptor.receive(client.seal(bare, 5, 1000), ADDR, 130.0) == Dropped("no-session")
    ack = ControlPacket(Opcode.ACK_V1, 0, CLIENT_SID, (0,), cookie)
    assert isinstance(acceptor.receive(client.seal(ack, 6, 1000), ADDR, 101.0), CreateSession)


def test_wrong_key_and_bad_resets_are_dropped() -> None:
    acceptor = _acceptor()
    wrong = TlsCryptCodec(bytes(256), server=False)
    assert acceptor.receive(_reset(wrong), ADDR, 1.0) == Dropped("auth")
    client = TlsCryptCodec(KEY, server=False)
    bad_id = ControlPacket(Opcode.CONTROL_HARD_RESET_CLIENT_V2, 0, CLIENT_SID, message_id=1)
    assert acceptor.receive(client.seal(bad_id, 1, 1), ADDR, 1.0) == Dropped("bad-reset")
    server_reset = ControlPacket(Opcode.CONTROL_HARD_RESET_SERVER_V2, 0, CLIENT_SID, message_id=0)
    assert isinstance(acceptor.receive(client.seal(server_reset, 1, 1), ADDR, 1.0), Dropped)
    other_kid = ControlPacket(Opcode.CONTROL_HARD_RESET_CLIENT_V2, 1, CLIENT_SID, message_id=0)
    assert acceptor.receive(client.seal(other_kid, 1, 1), ADDR, 1.0) == Dropped("bad-key-id")


def test_oversized_first_packets_are_dropped_unread() -> None:
    acceptor, client = _acceptor(), TlsCryptCodec(KEY, server=False)
    big = ControlPacket(Opcode.CONTROL_HARD_RESET_CLIENT_V2, 0, CLIENT_SID, message_id=0,
                        payload=bytes(2400))
    assert acceptor.receive(client.seal(big, 1, 1), ADDR, 1.0) == Dropped("too-big")


def test_reset_replies_are_rate_limited() -> None:
    acceptor, client = _acceptor(reset_rate=5, reset_period=10.0), TlsCryptCodec(KEY, server=False)
    results = [acceptor.receive(_reset(client), ADDR, 50.0) for _ in range(7)]
    assert [isinstance(r, Reply) for r in results] == [True] * 5 + [False] * 2
    assert results[-1] == Dropped("rate-limited")
    assert isinstance(acceptor.receive(_reset(client), ADDR, 52.5), Reply)  # refilled


def test_tcp_resets_are_not_rate_limited() -> None:
    """TCP proved the address; the UDP limiter would abort legitimate connections."""
    acceptor = _acceptor(tcp=True, reset_rate=2, reset_period=10.0)
    client = TlsCryptCodec(KEY, server=False)
    results = [acceptor.receive(_reset(client), ADDR, 50.0) for _ in range(5)]
    assert all(isinstance(r, CreateSession) for r in results)


def test_tcp_creates_session_from_reset() -> None:
    acceptor, client = _acceptor(tcp=True), TlsCryptCodec(KEY, server=False)
    decision = acceptor.receive(_reset(client), ADDR, 5.0)
    assert isinstance(decision, CreateSession) and not decision.reset_done
    assert decision.server_session_id == b"\x42" * 8 and decision.first.message_id == 0
    hello = ControlPacket(Opcode.CONTROL_V1, 0, CLIENT_SID, message_id=1, payload=b"x")
    assert acceptor.receive(client.seal(hello, 2, 1000), ADDR, 5.0) == Dropped("no-session")


def test_tls_crypt_v2_early_negotiation_and_wkc_packet() -> None:
    kc = bytes(reversed(range(256)))
    wkc = wrap_client_key(V2_SERVER_KEY, kc, timestamp_metadata(1_700_000_000))
    acceptor = _acceptor(wrap=ServerWrapKeys.tls_crypt_v2(V2_SERVER_KEY))
    client = TlsCryptCodec(kc, server=False)
    v3 = _reset(client, pid=0x0F000001, opcode=Opcode.CONTROL_HARD_RESET_CLIENT_V3, wkc=wkc)
    decision = acceptor.receive(v3, ADDR, 10.0)
    assert isinstance(decision, Reply)
    reply = client.open(decision.data).packet
    assert reply.payload == early_negotiation_tlvs() == bytes.fromhex("000100020001")
    cookie = reply.session_id
    wkc_packet = ControlPacket(Opcode.CONTROL_WKC_V1, 0, CLIENT_SID, (0,), cookie, 1, b"hi", wkc)
    created = acceptor.receive(client.seal(wkc_packet, 0x0F000002, 1000), ADDR, 11.0)
    assert isinstance(created, CreateSession) and created.metadata is not None
    assert created.metadata[0] == 1 and created.reset_done
    # a plain CONTROL_V1 cannot create a tls-crypt-v2 session (no client key)
    plain = ControlPacket(Opcode.CONTROL_V1, 0, CLIENT_SID, (0,), cookie, 1, b"hi")
    assert acceptor.receive(client.seal(plain, 3, 1000), ADDR, 11.0) == Dropped("wkc-missing")
    # an old client without the early-negotiation marker cannot do the cookie: refused
    # unless force-cookie is off, then it gets state right away
    legacy = _reset(client, pid=1, opcode=Opcode.CONTROL_HARD_RESET_CLIENT_V3, wkc=wkc)
    assert acceptor.receive(legacy, ADDR, 12.0) == Dropped(NO_COOKIE_SUPPORT)
    lenient = _acceptor(wrap=ServerWrapKeys.tls_crypt_v2(V2_SERVER_KEY), force_cookie=False)
    made = lenient.receive(legacy, ADDR, 12.0)
    assert isinstance(made, CreateSession) and not made.reset_done
    # over TCP the transport proved the address: no cookie needed
    over_tcp = _acceptor(wrap=ServerWrapKeys.tls_crypt_v2(V2_SERVER_KEY), tcp=True)
    assert isinstance(over_tcp.receive(legacy, ADDR, 12.0), CreateSession)


@settings(max_examples=300)
@given(st.binary(max_size=400), st.booleans())
def test_random_bytes_never_raise(data: bytes, tcp: bool) -> None:
    decision = _acceptor(tcp=tcp).receive(data, ADDR, 1.0)
    assert isinstance(decision, (Dropped, Reply, CreateSession))


def test_starts_new_session_spots_reconnecting_clients() -> None:
    client = TlsCryptCodec(KEY, server=False)
    reset = _reset(client)
    assert starts_new_session(reset, b"\x99" * 8)
    assert not starts_new_session(reset, CLIENT_SID)  # a retransmission of the same reset
    hello = ControlPacket(Opcode.CONTROL_V1, 0, CLIENT_SID, message_id=1, payload=b"x")
    assert not starts_new_session(client.seal(hello, 2, 1), b"\x99" * 8)
    assert not starts_new_session(b"\x38", b"\x99" * 8)
