"""Client-role session: what it puts on the wire and how it reacts to the server."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sslvpn.openvpn.client import ClientConfig, ClientSession, _wants_wkc_resend
from sslvpn.openvpn.constants import EARLY_NEG_START, Opcode
from sslvpn.openvpn.events import PeerRefused, SessionClosed, SessionEstablished
from sslvpn.openvpn.packet import pull_control_packet
from sslvpn.openvpn.server import early_negotiation_tlvs
from sslvpn.openvpn.tls_wrap import TlsCryptCodec
from tests.openvpn.conftest import Pki
from tests.openvpn.pair import V2_CLIENT_KEY, Pair


def _opcodes(log: list[tuple[str, int, int]], direction: str) -> list[int]:
    return [op for d, op, _ in log if d == direction]


def _recording(pair: Pair, log: list[tuple[str, int, int]]) -> None:
    codec = TlsCryptCodec(V2_CLIENT_KEY, server=True)

    def record(direction: str, datagrams: list[bytes]) -> list[bytes]:
        for data in datagrams:
            pid = 0
            if direction == "c2s" and data[0] >> 3 not in (6, 9):
                pid = codec.open(data).packet_id
            log.append((direction, data[0] >> 3, pid))
        return datagrams

    pair.filter = record


def test_tls_crypt_v2_client_uses_early_negotiation_and_wkc_v1(pki: Pki) -> None:
    pair = Pair(pki, wrap="tls-crypt-v2")
    log: list[tuple[str, int, int]] = []
    _recording(pair, log)
    pair.connect()
    sent = _opcodes(log, "c2s")
    assert sent[0] == Opcode.CONTROL_HARD_RESET_CLIENT_V3
    assert log[0][2] == EARLY_NEG_START + 1
    assert sent[1] == Opcode.CONTROL_WKC_V1 and Opcode.CONTROL_WKC_V1 not in sent[2:]
    assert any(isinstance(e, SessionEstablished) for e in pair.client_events)


def _legacy_v2_pair(pki: Pki) -> Pair:
    """A tls-crypt-v2 client without early negotiation (OpenVPN 2.5), force-cookie off."""
    pair = Pair(pki, wrap="tls-crypt-v2", force_cookie=False)
    pair.client = ClientSession(
        ClientConfig(
            tls=pki.client_context(), codec=TlsCryptCodec(V2_CLIENT_KEY, server=False),
            wkc=pair.client.wkc, early_negotiation=False,
        ),
        pair.now,
    )
    return pair


def test_tls_crypt_v2_client_without_early_negotiation(pki: Pki) -> None:
    pair = _legacy_v2_pair(pki)
    log: list[tuple[str, int, int]] = []
    _recording(pair, log)
    pair.connect()
    assert log[0][2] == 1 and Opcode.CONTROL_WKC_V1 not in _opcodes(log, "c2s")
    assert any(isinstance(e, SessionEstablished) for e in pair.client_events)


@pytest.mark.parametrize(
    ("payload", "wanted"),
    [
        (early_negotiation_tlvs(), True),
        (b"", False),
        (bytes.fromhex("000100020000"), False),
        (bytes.fromhex("0009000178" "000100020001"), True),  # unknown TLV skipped
        (bytes.fromhex("00010002"), False),  # truncated
    ],
)
def test_early_negotiation_tlv_parsing(payload: bytes, wanted: bool) -> None:
    assert _wants_wkc_resend(payload) is wanted


def test_client_reports_auth_failed_and_closes(pki: Pki) -> None:
    pair = Pair(pki, decide=lambda s, e: s.reject("user disabled"))
    pair.connect()
    assert [e for e in pair.client_events if isinstance(e, PeerRefused)] == [
        PeerRefused("user disabled")
    ]
    closed = [e for e in pair.client_events if isinstance(e, SessionClosed)]
    assert closed and "user disabled" in closed[0].reason and pair.client.closed


def test_client_closes_on_server_restart(pki: Pki) -> None:
    pair = Pair(pki)
    server = pair.connect()
    server.close()
    pair.run()
    closed = [e for e in pair.client_events if isinstance(e, SessionClosed)]
    assert closed and "RESTART" in closed[0].reason


def test_client_ignores_packets_before_the_server_reset(pki: Pki) -> None:
    pair = Pair(pki)
    client = pair.client
    client.send_packet(b"\x45" + bytes(19), pair.now)
    assert client.drops["send-no-key"] == 1
    client.receive_datagram(b"\x48\x00\x00\x05" + bytes(30), pair.now)
    assert client.drops["data-no-key"] == 1
    assert client.get_timer() is not None  # reset retransmission and hand-window
    pair.connect()
    assert any(isinstance(e, SessionEstablished) for e in pair.client_events)


def test_client_reset_is_retransmitted_until_answered(pki: Pki) -> None:
    pair = Pair(pki)
    first = pair.client.datagrams_to_send(pair.now)
    assert len(first) == 1 and first[0][0] >> 3 == Opcode.CONTROL_HARD_RESET_CLIENT_V2
    timer = pair.client.get_timer()
    assert timer is not None and timer == pair.now + 2.0
    again = pair.client.datagrams_to_send(timer)
    assert len(again) == 1 and again[0] != first[0]  # re-wrapped with a new replay id
    pair.now = timer
    pair.advance(10.0)  # both copies were "lost": the next retransmission connects
    assert any(isinstance(e, SessionEstablished) for e in pair.client_events)


class _DropFirstAfterReset:
    """Loses the client's first datagram after its hard reset once; records the rest."""

    def __init__(self) -> None:
        self.c2s: list[bytes] = []
        self.dropped: bytes | None = None

    def __call__(self, direction: str, datagrams: list[bytes]) -> list[bytes]:
        if direction != "c2s":
            return datagrams
        kept = []
        for data in datagrams:
            self.c2s.append(data)
            if len(self.c2s) == 2 and self.dropped is None:
                self.dropped = data
            else:
                kept.append(data)
        return kept


@pytest.mark.parametrize("wrap", ["tls-crypt", "tls-auth", "none", "tls-crypt-v2"])
def test_lost_first_control_packet_is_admitted_by_its_retransmission(
    pki: Pki, wrap: str
) -> None:
    """The retransmission repeats the ACK of the cookie reset (2.6 lru_acks), so the
    stateless acceptor can check its cookie and create the session."""
    pair = Pair(pki, wrap=wrap)
    lossy = _DropFirstAfterReset()
    pair.filter = lossy
    pair.run()
    assert lossy.dropped is not None and pair.server is None
    pair.advance(3.0)  # the client's retransmission timer (2 s) fires once
    assert pair.server is not None
    assert any(isinstance(e, SessionEstablished) for e in pair.client_events)
    assert pair.client.drops == {} and pair.server.drops == {}
    if wrap == "none":  # plaintext: the repeated ACK of message id 0 is on the wire
        first = pull_control_packet(lossy.dropped)
        later = [pull_control_packet(d) for d in lossy.c2s[2:]]
        again = next(p for p in later if p.message_id == first.message_id == 1)
        assert first.acks == again.acks == (0,)
        assert again.remote_session_id == first.remote_session_id


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sets(st.tuples(st.sampled_from(["c2s", "s2c"]), st.integers(0, 11)), max_size=4))
def test_handshake_survives_any_few_lost_datagrams(
    pki: Pki, lost: set[tuple[str, int]]
) -> None:
    """Lose up to 4 of the first 12 datagrams each way: retransmissions (with repeated
    ACKs for the stateless acceptor) still connect well inside the hand-window."""
    pair = Pair(pki)
    seen = {"c2s": 0, "s2c": 0}

    def lossy(direction: str, datagrams: list[bytes]) -> list[bytes]:
        kept = []
        for data in datagrams:
            if (direction, seen[direction]) not in lost:
                kept.append(data)
            seen[direction] += 1
        return kept

    pair.filter = lossy
    pair.run()
    pair.advance(40.0)
    assert pair.server is not None and pair.server.established and pair.client.established


def test_server_without_cookie_answers_only_until_the_address_answers(pki: Pki) -> None:
    """A reset without early negotiation (force-cookie off) may come from a forged
    address: the server sends its reset once and again only per repeated reset, never on
    its own timer, until the client has answered; then the handshake finishes as usual."""
    pair = _legacy_v2_pair(pki)
    reset = pair.client.datagrams_to_send(pair.now)
    pair._to_server(reset)
    server = pair.server
    assert server is not None
    assert len(server.datagrams_to_send(pair.now)) == 1  # the answer to the reset: lost
    sent = 0
    for second in range(1, 59):  # its hand-window: no retransmission to an unproven address
        server.handle_timer(pair.now + second)
        sent += len(server.datagrams_to_send(pair.now + second))
    assert sent == 0 and server.get_timer() == pair.now + 60.0
    pair.now += 30.0
    pair.client.handle_timer(pair.now)
    pair._to_server(pair.client.datagrams_to_send(pair.now))  # it repeats: one answer
    again = server.datagrams_to_send(pair.now)
    assert len(again) == 1
    for data in again:
        pair.client.receive_datagram(data, pair.now)
    pair.run()
    assert any(isinstance(e, SessionEstablished) for e in pair.client_events)
