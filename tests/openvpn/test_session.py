"""Server session against the client-role session: handshake, data, renegotiation, refusal."""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Sequence

import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from OpenSSL import SSL

from sslvpn.openvpn.endpoint import LocalProtocolError, Timing
from sslvpn.openvpn.events import (
    ExitRequested,
    KeysRenegotiated,
    PeerRefused,
    PeerVerified,
    SessionClosed,
    SessionEstablished,
    TunnelPacket,
)
from sslvpn.openvpn.key_method import IvProto
from sslvpn.openvpn.session import NO_SHARED_CIPHER, ServerSession
from sslvpn.openvpn.tls import TlsContext, TlsCredentials
from sslvpn.openvpn.tls_wrap import TlsCryptCodec
from tests.openvpn.conftest import Pki, issue
from tests.openvpn.pair import PUSH, Pair
from tests.openvpn.test_key_method import OCC_24_TCP, OCC_24_UDP, OCC_25_TCP, OCC_25_UDP

IP_PACKET = bytes.fromhex("4500001c000100004001f7ac0a0800020a0a000a") + b"\x08\x00\xf7\xff\0\0\0\0"
PRF_ONLY = (
    "IV_VER=2.6.14\nIV_PLAT=linux\nIV_NCP=2\nIV_PROTO=982\n"
    "IV_CIPHERS=AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305\n"
)


def _tunnel(events: Sequence[object]) -> list[bytes]:
    return [e.ip_packet for e in events if isinstance(e, TunnelPacket)]


def _exchange(pair: Pair, count: int, tag: bytes = b"") -> None:
    """Send ``count`` packets each way and check all arrive, in order."""
    server = pair.server
    assert server is not None
    before_s, before_c = len(_tunnel(pair.server_events)), len(_tunnel(pair.client_events))
    sent = [IP_PACKET + tag + bytes([i % 256]) for i in range(count)]
    for packet in sent:
        pair.client.send_packet(packet, pair.now)
        server.send_packet(packet, pair.now)
    pair.run()
    assert _tunnel(pair.server_events)[before_s:] == sent
    assert _tunnel(pair.client_events)[before_c:] == sent


@pytest.mark.parametrize("wrap", ["tls-crypt", "tls-crypt-v2"])
@pytest.mark.parametrize("cipher", ["AES-256-GCM", "AES-128-GCM", "CHACHA20-POLY1305"])
@pytest.mark.parametrize("peer_info", [None, PRF_ONLY], ids=["ekm", "prf"])
def test_handshake_and_data_matrix(pki: Pki, wrap: str, cipher: str, peer_info: str | None) -> None:
    pair = Pair(pki, wrap=wrap, data_ciphers=(cipher,), peer_info=peer_info)
    server = pair.connect()
    established = [e for e in pair.server_events if isinstance(e, SessionEstablished)]
    assert len(established) == 1 and established[0].cipher == cipher
    assert established[0].key_derivation == ("tls-ekm" if peer_info is None else "prf")
    verified = [e for e in pair.server_events if isinstance(e, PeerVerified)]
    assert verified[0].certificate == pki.client.certificate
    assert verified[0].peer_info.version == "2.6.14"
    assert pair.client.cipher == cipher and pair.client.data_peer_id == 5
    assert server.established and pair.client.established
    assert ("protocol-flags cc-exit tls-ekm" in pair.client.pushed_options) == (peer_info is None)
    if wrap == "tls-crypt-v2":
        assert server.metadata is not None and server.metadata[0] == 1
    _exchange(pair, 20)
    assert not server.drops and not pair.client.drops


@pytest.mark.parametrize("wrap", ["tls-auth", "none"])
def test_other_control_channel_protections(pki: Pki, wrap: str) -> None:
    pair = Pair(pki, wrap=wrap)
    pair.connect()
    _exchange(pair, 3)


def test_tcp_mode_without_cookie(pki: Pki) -> None:
    pair = Pair(pki, tcp=True)
    pair.connect()
    _exchange(pair, 5)


@pytest.mark.parametrize(
    ("strings", "tcp"),
    [(OCC_24_TCP, True), (OCC_24_UDP, False), (OCC_25_TCP, True), (OCC_25_UDP, False)],
    ids=["2.4-tcp", "2.4-udp", "2.5-tcp", "2.5-udp"],
)
def test_server_sends_the_options_string_the_client_expects(
    pki: Pki, strings: tuple[str, str], tcp: bool
) -> None:
    local, expected_remote = strings
    pair = Pair(pki, tcp=tcp, options=local)
    pair.connect()
    assert pair.client.established
    assert pair.client.server_options == expected_remote


def test_push_waits_for_push_request_without_request_push_bit(pki: Pki) -> None:
    info = "IV_VER=2.4.12\nIV_NCP=2\nIV_PROTO=2\n"
    pair = Pair(pki, peer_info=info)
    pair.connect()
    assert any(isinstance(e, SessionEstablished) for e in pair.client_events)
    assert "protocol-flags cc-exit" not in pair.client.pushed_options
    assert pair.client.derivation.value == "prf"
    _exchange(pair, 3)


def test_client_without_data_v2_gets_p_data_v1(pki: Pki) -> None:
    pair = Pair(pki, peer_info="IV_VER=2.3.18\nIV_NCP=2\n")
    server = pair.connect()
    assert not any(o.startswith("peer-id") for o in pair.client.pushed_options)
    server.send_packet(IP_PACKET, pair.now)
    wire = server.datagrams_to_send(pair.now)
    assert [d[0] >> 3 for d in wire] == [6]  # P_DATA_V1
    pair.client.receive_datagram(wire[0], pair.now)
    pair.drain_events()
    assert _tunnel(pair.client_events) == [IP_PACKET]
    _exchange(pair, 3)


def test_long_push_reply_uses_continuation(pki: Pki) -> None:
    routes = tuple(ipaddress.IPv4Network(f"10.{i}.0.0/16") for i in range(120))
    push = dataclasses.replace(PUSH, routes=routes)
    pair = Pair(pki, decide=lambda s, e: s.accept(push))
    pair.connect()
    pushed = pair.client.pushed_options
    assert sum(o.startswith("route ") for o in pushed) == 120
    assert not any("continuation" in o for o in pushed)
    _exchange(pair, 2)


def _lossy(pattern: str) -> object:
    """Drop, duplicate and reorder datagrams deterministically."""
    counter = {"n": 0}

    def filt(direction: str, datagrams: list[bytes]) -> list[bytes]:
        out: list[bytes] = []
        for data in datagrams:
            counter["n"] += 1
            n = counter["n"]
            if pattern == "loss" and n % 3 == 0:
                continue
            out.append(data)
            if pattern == "dup" and n % 2 == 0:
                out.append(data)
        if pattern == "reorder":
            out.reverse()
        return out

    return filt


@pytest.mark.parametrize("pattern", ["loss", "dup", "reorder"])
def test_handshake_survives_loss_duplication_reordering(pki: Pki, pattern: str) -> None:
    pair = Pair(pki)
    pair.filter = _lossy(pattern)  # type: ignore[assignment]
    for _ in range(40):
        pair.advance(2.0)
        if any(isinstance(e, SessionEstablished) for e in pair.client_events):
            break
    assert any(isinstance(e, SessionEstablished) for e in pair.client_events)
    pair.filter = None
    pair.advance(1.0)
    _exchange(pair, 5)


def _renegotiated(events: Sequence[object]) -> list[int]:
    return [e.key_id for e in events if isinstance(e, KeysRenegotiated)]


def test_server_initiated_renegotiation_loses_nothing(pki: Pki) -> None:
    pair = Pair(pki, server_timing=Timing(reneg_seconds=100.0))
    server = pair.connect()
    _exchange(pair, 5, b"a")
    pair.advance(101.0)
    assert _renegotiated(pair.server_events) == [1]
    assert _renegotiated(pair.client_events) == [1]
    _exchange(pair, 5, b"b")
    pair.advance(100.0)
    assert _renegotiated(pair.server_events) == [1, 2]
    _exchange(pair, 5, b"c")
    assert not server.drops and not pair.client.drops
    assert not any(isinstance(e, SessionClosed) for e in pair.server_events)


def test_client_sending_on_old_key_through_two_renegotiations(pki: Pki) -> None:
    """OpenVPN Connect keeps sending on the previous key ~60 s (reference section 14);
    a server renegotiating twice in that window must still accept it."""
    pair = Pair(pki, server_timing=Timing(reneg_seconds=20.0))
    server = pair.connect()
    old_key = pair.client._keys[0].crypto  # a client that lags behind
    assert old_key is not None
    pair.advance(45.0)
    assert _renegotiated(pair.server_events) == [1, 2] and 0 in server.key_ids
    for i in range(3):
        server.receive_datagram(old_key.seal(IP_PACKET + bytes([i])), pair.now)
    pair.drain_events()
    assert _tunnel(pair.server_events)[-3:] == [IP_PACKET + bytes([i]) for i in range(3)]
    assert not server.drops


def test_key_ids_wrap_from_7_to_1_and_old_keys_expire(pki: Pki) -> None:
    pair = Pair(pki, server_timing=Timing(reneg_seconds=10.0, lame_duck_seconds=15.0))
    server = pair.connect()
    for round_ in range(9):
        pair.advance(10.5)
        _exchange(pair, 2, bytes([round_]))
    assert _renegotiated(pair.server_events) == [1, 2, 3, 4, 5, 6, 7, 1, 2]
    assert _renegotiated(pair.client_events) == [1, 2, 3, 4, 5, 6, 7, 1, 2]
    assert len(server.key_ids) <= 3 and server.key_ids[-1] == 2
    assert not server.drops and not pair.client.drops


def test_no_second_renegotiation_while_the_switch_is_pending(pki: Pki) -> None:
    pair = Pair(pki, server_timing=Timing(reneg_seconds=100.0))
    server = pair.connect()

    def hold_client_acks(direction: str, datagrams: list[bytes]) -> list[bytes]:
        pending = server.installed_key_ids == [0, 1]
        return [] if direction == "c2s" and pending else datagrams

    pair.filter = hold_client_acks
    pair.advance(101.0)
    assert server.installed_key_ids == [0, 1] and not _renegotiated(pair.server_events)
    pair.advance(20.0)  # timers fire in between: still only key 1 on the way
    assert server.key_ids == [0, 1]
    pair.filter = None
    pair.advance(60.0)  # the next retransmission of our key-method record gets its ACK
    assert _renegotiated(pair.server_events) == [1]
    _exchange(pair, 3)


def test_failed_renegotiation_keeps_the_current_key(pki: Pki) -> None:
    pair = Pair(pki, server_timing=Timing(reneg_seconds=None))
    server = pair.connect()
    assert pair.client.renegotiate(pair.now)
    pair.filter = lambda d, dg: [x for x in dg if x[0] >> 3 in (6, 9)]  # control is lost
    pair.advance(61.0)
    assert server.key_ids == [0] and pair.client.key_ids == [0]
    assert not server.closed and not pair.client.closed
    pair.filter = None
    _exchange(pair, 3)
    assert pair.client.renegotiate(pair.now)
    pair.run()
    assert _renegotiated(pair.server_events) == [1]


def test_simultaneous_soft_resets_agree_on_one_new_key(pki: Pki) -> None:
    pair = Pair(pki)
    server = pair.connect()
    assert server.renegotiate(pair.now) and pair.client.renegotiate(pair.now)
    pair.run()
    assert _renegotiated(pair.server_events) == [1] == _renegotiated(pair.client_events)
    _exchange(pair, 3)
    assert not server.drops and not pair.client.drops


def test_client_initiated_renegotiation_with_data_in_flight(pki: Pki) -> None:
    pair = Pair(pki)
    server = pair.connect()
    assert pair.client.renegotiate(pair.now)
    assert not pair.client.renegotiate(pair.now)  # one at a time
    # packets sealed on key 0 while the new key negotiates still arrive afterwards
    in_flight = [IP_PACKET + b"old" + bytes([i]) for i in range(5)]
    for packet in in_flight:
        pair.client.send_packet(packet, pair.now)
    held = pair.client.datagrams_to_send(pair.now)
    control = [d for d in held if d[0] >> 3 not in (6, 9)]
    data = [d for d in held if d[0] >> 3 in (6, 9)]
    for d in control:
        server.receive_datagram(d, pair.now)
    pair.run()
    assert _renegotiated(pair.server_events) == [1]
    for d in data:  # late key-0 packets after the switch: the lame duck still opens them
        server.receive_datagram(d, pair.now)
    pair.run()
    assert _tunnel(pair.server_events)[-5:] == in_flight
    _exchange(pair, 5)
    assert not server.drops


def test_lame_duck_key_accepted_for_60s_then_dropped(pki: Pki) -> None:
    pair = Pair(pki, server_timing=Timing(lame_duck_seconds=60.0))
    server = pair.connect()
    old_key_packets = []
    for i in range(3):
        pair.client.send_packet(IP_PACKET + bytes([i]), pair.now)
        old_key_packets += pair.client.datagrams_to_send(pair.now)
    assert pair.client.renegotiate(pair.now)
    pair.run()
    assert _renegotiated(pair.server_events) == [1]
    pair.advance(59.0)
    server.receive_datagram(old_key_packets[0], pair.now)
    server.receive_datagram(old_key_packets[1], pair.now)
    pair.drain_events()
    assert _tunnel(pair.server_events)[-2:] == [IP_PACKET + b"\0", IP_PACKET + b"\1"]
    pair.advance(2.0)
    before = len(_tunnel(pair.server_events))
    server.receive_datagram(old_key_packets[2], pair.now)
    pair.drain_events()
    assert len(_tunnel(pair.server_events)) == before
    assert server.drops["data-no-key"] == 1
    _exchange(pair, 3)


@pytest.mark.parametrize(
    ("who", "reason"),
    [
        ("foreign_client", "not issued by our CA"),
        ("expired_client", "expired"),
        ("server_eku_client", "clientAuth"),
    ],
)
def test_bad_certificates_get_auth_failed(pki: Pki, who: str, reason: str) -> None:
    pair = Pair(pki, client_cert=getattr(pki, who))
    server = pair.connect()
    refused = [e for e in pair.server_events if isinstance(e, PeerRefused)]
    assert len(refused) == 1 and reason in refused[0].reason
    assert not any(isinstance(e, PeerVerified | SessionEstablished) for e in pair.server_events)
    assert pair.client.auth_failed is not None and reason in pair.client.auth_failed
    pair.advance(6.0)
    closed = [e for e in pair.server_events if isinstance(e, SessionClosed)]
    assert len(closed) == 1 and "auth failed" in closed[0].reason
    assert server.closed and server.get_timer() is None


def test_renegotiation_with_another_certificate_is_refused(pki: Pki) -> None:
    pair = Pair(pki, server_timing=Timing(reneg_seconds=100.0))
    pair.connect()
    bob = issue(pki.ca, "bob", [ExtendedKeyUsageOID.CLIENT_AUTH])
    creds = TlsCredentials(bob.certificate, bob.key, (pki.ca.certificate,))
    pair.client._tls_context = TlsContext(creds, server=False)  # the next key state is bob's
    pair.advance(101.0)
    refused = [e for e in pair.server_events if isinstance(e, PeerRefused)]
    assert [e.reason for e in refused] == ["client certificate changed during renegotiation"]
    assert pair.client.auth_failed is not None


def test_idle_session_keeps_no_handshake_state(pki: Pki) -> None:
    pair = Pair(pki, peer_info=PRF_ONLY)  # PRF needs both records until the keys exist
    server = pair.connect()
    assert not hasattr(server, "__dict__")  # slots: thousands of these sit idle
    key_states = [server._keys[key_id] for key_id in server.key_ids]
    assert [(ks.local_km2, ks.peer_km2) for ks in key_states] == [(None, None)]
    assert server.peer_proto & IvProto.REQUEST_PUSH
    release = pki.server_context().context.set_mode(0) & SSL.MODE_RELEASE_BUFFERS
    assert release  # idle TLS sessions give their record buffers back


def test_idle_tls_crypt_v2_session_trims_its_codec_and_still_renegotiates(pki: Pki) -> None:
    pair = Pair(pki, wrap="tls-crypt-v2", server_timing=Timing(reneg_seconds=100.0))
    server = pair.connect()
    codec = server.wrap.codec
    assert isinstance(codec, TlsCryptCodec) and codec._out._ctr is not None
    pair.advance(11.0)  # a keepalive tick of an established session
    assert codec._out._ctr is None and codec._in._hmac is None
    pair.advance(90.0)
    assert _renegotiated(pair.server_events) == [1]
    _exchange(pair, 3, b"v2")
    assert not server.drops and not pair.client.drops


def test_auth_failed_is_retransmitted_while_lingering(pki: Pki) -> None:
    pair = Pair(pki, client_cert=pki.expired_client)
    dropped: list[int] = []

    def lose_first_auth_failed(direction: str, datagrams: list[bytes]) -> list[bytes]:
        refused = any(isinstance(e, PeerRefused) for e in pair.server_events)
        if direction == "s2c" and refused and not dropped:
            dropped.append(len(datagrams))
            return []
        return datagrams

    pair.filter = lose_first_auth_failed
    pair.run()
    assert dropped and pair.client.auth_failed is None
    timer = pair.server.get_timer() if pair.server else None
    assert timer is not None and timer < pair.now + 5.0  # the retransmit, before the close
    pair.advance(4.0)
    assert pair.client.auth_failed is not None and "expired" in pair.client.auth_failed


def test_caller_rejects_with_reason(pki: Pki) -> None:
    pair = Pair(pki, decide=lambda s, e: s.reject("certificate revoked"))
    server = pair.connect()
    assert not server.established and not pair.client.established
    assert pair.client.auth_failed == "certificate revoked"
    with pytest.raises(LocalProtocolError):
        server.accept(PUSH)
    pair.advance(6.0)
    assert server.closed


def test_a_late_temporary_refusal_tells_the_client_to_retry(pki: Pki) -> None:
    """The store answered late: AUTH_FAILED,TEMP in the format openvpn 2.6 and 3 parse, and
    the linger runs from the decision, not from the last packet before it."""
    held: list[ServerSession] = []
    pair = Pair(pki, decide=lambda s, e: held.append(s))
    server = pair.connect()
    pair.now += 4.9  # no input meanwhile: the store took its time
    server.reject("store unavailable", pair.now, retry_after=5)
    timer = server.get_timer()
    assert timer is not None and timer > pair.now + 1.0  # retransmits before the close
    pair.run()
    assert pair.client.auth_failed == "TEMP[backoff 5]:store unavailable"
    pair.advance(6.0)
    assert server.closed


def test_a_client_that_cannot_parse_temp_is_told_nothing(pki: Pki) -> None:
    """Without IV_PROTO_AUTH_FAIL_TEMP an AUTH_FAILED would stop the client for good; the
    session ends silently instead and the client starts over after its handshake window."""
    proto = 990 & ~IvProto.AUTH_FAIL_TEMP
    info = f"IV_VER=2.5.9\nIV_PROTO={proto}\nIV_CIPHERS=AES-256-GCM\n"
    pair = Pair(pki, peer_info=info,
                decide=lambda s, e: s.reject("store unavailable", retry_after=5))
    server = pair.connect()
    assert server.closed and pair.client.auth_failed is None
    closed = [e for e in pair.server_events if isinstance(e, SessionClosed)]
    assert closed and "store unavailable" in closed[0].reason


def test_no_shared_cipher_is_refused(pki: Pki) -> None:
    info = "IV_VER=2.6.14\nIV_PROTO=990\nIV_CIPHERS=AES-256-CBC\n"
    pair = Pair(pki, peer_info=info)
    pair.connect()
    assert pair.client.auth_failed == NO_SHARED_CIPHER


def test_decision_can_wait_and_misuse_raises(pki: Pki) -> None:
    held: list[ServerSession] = []
    pair = Pair(pki, decide=lambda s, e: held.append(s))
    server = pair.connect()
    assert held == [server] and not pair.client_events
    pair.advance(3.0)
    server.accept(PUSH)
    with pytest.raises(LocalProtocolError):
        server.accept(PUSH)
    with pytest.raises(LocalProtocolError):
        server.reject("late")
    pair.run()
    assert any(isinstance(e, SessionEstablished) for e in pair.client_events)


def test_undecided_peer_times_out_in_hand_window(pki: Pki) -> None:
    pair = Pair(pki, decide=lambda s, e: None)
    server = pair.connect()
    pair.advance(61.0)
    assert server.closed
    closed = [e for e in pair.server_events if isinstance(e, SessionClosed)]
    assert "hand-window" in closed[0].reason


def test_keepalive_pings_and_ping_restart(pki: Pki) -> None:
    pair = Pair(pki)
    server = pair.connect()
    pair.advance(300.0)  # both sides ping each other: nobody times out
    assert not server.closed and not pair.client.closed
    assert not _tunnel(pair.server_events)
    pair.client.close = lambda: None  # type: ignore[method-assign]
    silent_since = pair.now
    pair.filter = lambda d, dg: [] if d == "c2s" else dg  # client goes silent
    pair.advance(200.0)
    closed = [e for e in pair.server_events if isinstance(e, SessionClosed)]
    assert closed and "ping-restart" in closed[0].reason
    assert server.closed and pair.now - silent_since >= 120.0


@pytest.mark.parametrize("cc_exit", [True, False])
def test_client_exit_closes_server_session(pki: Pki, cc_exit: bool) -> None:
    info = None if cc_exit else "IV_VER=2.5.0\nIV_NCP=2\nIV_PROTO=30\n"
    pair = Pair(pki, peer_info=info)
    server = pair.connect()
    pair.client.close()
    pair.run()
    exits = [e for e in pair.server_events if isinstance(e, ExitRequested)]
    assert exits and exits[0].via == ("control" if cc_exit else "occ-exit")
    assert server.closed


def test_server_close_tells_client(pki: Pki) -> None:
    pair = Pair(pki)
    server = pair.connect()
    server.close()
    pair.run()
    assert pair.client.closed
    assert isinstance(server.next_event(), SessionClosed) or server.closed


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.binary(max_size=300), max_size=8))
def test_random_bytes_never_raise(pki: Pki, garbage: list[bytes]) -> None:
    pair = Pair(pki)
    server = pair.connect()
    for data in garbage:
        server.receive_datagram(data, pair.now)
        pair.client.receive_datagram(data, pair.now)
        for prefix in (b"\x48", b"\x20", b"\x28"):
            server.receive_datagram(prefix + data, pair.now)
    _exchange(pair, 2)


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(
            st.sampled_from([3, 4, 5, 7, 8, 10, 11]),
            st.integers(0, 7),
            st.lists(st.integers(0, 20), max_size=3),
            st.integers(0, 20),
            st.binary(max_size=200),
        ),
        max_size=10,
    )
)
def test_unprotected_control_garbage_never_raises(
    pki: Pki, packets: list[tuple[int, int, list[int], int, bytes]]
) -> None:
    """Without tls-crypt, forged but well-formed control packets reach TLS and KM2 code."""
    from sslvpn.openvpn.constants import Opcode
    from sslvpn.openvpn.packet import ControlPacket, push_control_packet

    pair = Pair(pki, wrap="none")
    server = pair.connect()
    client_sid, server_sid = server.identity.peer, server.identity.own
    assert client_sid is not None
    for opcode, key_id, acks, message_id, payload in packets:
        op = Opcode(opcode)
        packet = ControlPacket(
            op, key_id, client_sid, tuple(acks), server_sid if acks else None,
            None if op is Opcode.ACK_V1 else message_id,
            b"" if op is Opcode.ACK_V1 else payload,
            payload[:300].ljust(300, b"\0")[:-2] + b"\x01\x2c" if op in (10, 11) else None,
        )
        server.receive_datagram(push_control_packet(packet), pair.now)
        pair.run()
    pair.advance(1.0)
    assert isinstance(server.closed, bool)
