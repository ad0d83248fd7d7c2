"""The IKE_SA_INIT gate: critical payloads, COOKIE, half-open SAs, authentication throttle.

Sans-I/O: messages come from our own initiator core, time is an argument, randomness seeded.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from sslvpn.ipsec.ike import constants as c
from sslvpn.ipsec.ike import messages
from sslvpn.ipsec.ike.admission import (
    Admission,
    AuthThrottle,
    HalfOpenTable,
    InitGate,
    is_initial_request,
)
from sslvpn.ipsec.ike.constants import ExchangeType, HeaderFlag, NotifyType, PayloadType
from sslvpn.ipsec.ike.cookies import stateless_answer
from sslvpn.ipsec.ike.messages import (
    IkeHeader,
    NotifyPayload,
    TooManyPayloads,
    UnknownPayload,
    encode_message,
    peek_header,
    pull_message,
)
from sslvpn.ipsec.ike.sa import IkeState

from .ike_pair import A_ADDR, B_ADDR, config, init_request, make_pair, seeded, with_payloads

PEER = (A_ADDR, 500)
IKE = "aes256-sha256-ecp256"


def admit(gate: InitGate, data: bytes, here: int = 0, now: float = 0.0,
          source: tuple[str, int] = PEER) -> Admission:
    return gate.admit(data, peek_header(data), source, here, now)


# -- UNSUPPORTED_CRITICAL_PAYLOAD (RFC 7296 §2.5) -------------------------------------------


def test_unknown_critical_payload_in_init_gets_unsupported_critical_payload() -> None:
    data = with_payloads(init_request(), UnknownPayload(200, True, b"x"))
    verdict = admit(InitGate(rand=seeded(3)), data)
    assert verdict.message is None and verdict.drop == "unsupported-critical"
    assert verdict.answer is not None
    answer = pull_message(verdict.answer)
    assert answer.header.is_response and answer.header.spi_i == data[:8]
    assert answer.header.spi_r == bytes(8)
    assert answer.payloads == [NotifyPayload(NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD, b"\xc8")]


def test_the_gate_refuses_an_overlong_chain_before_looking_at_anything_in_it() -> None:
    header = IkeHeader(b"i" * 8, bytes(8), 0, ExchangeType.IKE_SA_INIT, HeaderFlag.INITIATOR, 0)
    flood = encode_message(header, [UnknownPayload(200, True, b"")] * 40)
    with pytest.raises(TooManyPayloads):  # no answer, not even UNSUPPORTED_CRITICAL_PAYLOAD
        admit(InitGate(rand=seeded(3)), flood)


def test_the_gate_ignores_the_critical_bit_of_known_types() -> None:
    certreq = UnknownPayload(PayloadType.CERTREQ, True, b"\x04")  # defined by RFC 7296
    verdict = admit(InitGate(rand=seeded(3)), with_payloads(init_request(), certreq))
    assert verdict.message is not None and verdict.answer is None


def test_only_a_fresh_request_header_may_open_an_sa() -> None:
    data = init_request()
    assert is_initial_request(peek_header(data))
    header = pull_message(data).header
    for changed in ({"message_id": 1}, {"spi_r": b"r" * 8}, {"spi_i": bytes(8)},
                    {"flags": HeaderFlag.INITIATOR | HeaderFlag.RESPONSE}, {"flags": 0},
                    {"exchange": ExchangeType.IKE_AUTH}):
        assert not is_initial_request(replace(header, **changed)), changed


# -- COOKIE (RFC 7296 §2.6) ---------------------------------------------------------------


def test_cookies_start_at_the_per_address_threshold_and_our_initiator_answers_them() -> None:
    gate = InitGate(rand=seeded(3))
    for here in range(c.COOKIE_THRESHOLD_IP):
        assert admit(gate, init_request(here), here).message is not None
    pair = make_pair(config("A", ike=IKE), config("B", ike=IKE))
    pair.a.initiate(pair.now)
    ((first, _),) = pair.a.datagrams_to_send(pair.now)
    refused = admit(gate, first, c.COOKIE_THRESHOLD_IP, pair.now)
    assert refused.message is None and refused.drop == "cookie-required"
    assert refused.answer is not None
    assert admit(gate, first, c.COOKIE_THRESHOLD_IP, pair.now).answer == refused.answer
    pair.a.receive_datagram(refused.answer, (B_ADDR, 500), pair.now)
    ((second, _),) = pair.a.datagrams_to_send(pair.now)
    assert pull_message(second).payloads[0].notify_type == NotifyType.COOKIE  # type: ignore[union-attr]
    accepted = admit(gate, second, c.COOKIE_THRESHOLD_IP, pair.now)
    assert accepted.message is not None and accepted.answer is None
    elsewhere = admit(gate, second, c.COOKIE_THRESHOLD_IP, pair.now, ("198.18.0.66", 500))
    assert elsewhere.message is None, "a cookie is bound to the address it was sent to"
    pair.b.receive_message(accepted.message, second, PEER, pair.now, nat_t=False)
    pair.run()
    assert pair.a.state is IkeState.ESTABLISHED and pair.b.state is IkeState.ESTABLISHED


def test_cookies_stay_required_for_a_while_and_expire_with_two_rotations() -> None:
    gate = InitGate(rand=seeded(3))
    data = init_request(7)
    spi_i, nonce = data[:8], next(p.data for p in pull_message(data).payloads
                                  if isinstance(p, messages.NoncePayload))
    answer = admit(gate, data, c.COOKIE_THRESHOLD_IP, 100.0).answer
    assert answer is not None
    cookie = pull_message(answer).payloads[0]
    assert isinstance(cookie, NotifyPayload)
    message = pull_message(data)
    again = encode_message(message.header, [cookie, *message.payloads])
    calm = 100.0 + c.COOKIE_CALM_DOWN - 1
    assert admit(gate, init_request(8), 0, calm).drop == "cookie-required"  # calm-down
    assert admit(gate, again, 0, calm).message is not None
    assert admit(gate, init_request(9), 0, 100.0 + c.COOKIE_CALM_DOWN).message is not None
    jar = gate.jar
    after_one = 100.0 + c.COOKIE_SECRET_LIFETIME + 1
    assert jar.valid(cookie.data, spi_i, nonce, A_ADDR, after_one)  # the previous secret
    assert not jar.valid(cookie.data, spi_i, nonce, "198.18.0.66", after_one)
    after_two = after_one + c.COOKIE_SECRET_LIFETIME
    assert not jar.valid(cookie.data, spi_i, nonce, A_ADDR, after_two)


def test_cookies_for_everyone_once_all_peers_together_pass_the_threshold() -> None:
    gate = InitGate(rand=seeded(3), cookie_threshold=4)
    table: HalfOpenTable[str] = HalfOpenTable(gate)
    for n in range(4):
        table.add(bytes([n]) * 8, f"sa{n}", ("198.18.0.7", 500))
    assert gate.half_open == 4
    assert admit(gate, init_request(), 0, source=("198.18.0.99", 500)).drop == "cookie-required"
    table.clear()
    assert gate.half_open == 0


# -- the half-open table ------------------------------------------------------------------


def test_half_open_table_is_bounded_and_evicts_the_oldest() -> None:
    gate = InitGate(rand=seeded(3))
    table: HalfOpenTable[str] = HalfOpenTable(gate, limit=3)
    for n in range(3):
        assert table.add(bytes([n]) * 8, f"sa{n}", (A_ADDR, 500 + n)) is None
    evicted = table.add(b"\x09" * 8, "sa9", (A_ADDR, 509))
    assert evicted is not None and evicted.sa == "sa0" and evicted.source == (A_ADDR, 500)
    assert [e.sa for e in table] == ["sa1", "sa2", "sa9"] and len(table) == 3
    assert gate.half_open == 3 and table.peak == 3
    assert table.remove(b"\x01" * 8) is not None and table.get(b"\x01" * 8) is None
    assert gate.half_open == 2


# -- authentication failures per source ------------------------------------------------------


def test_a_source_that_keeps_failing_authentication_is_throttled_but_not_others() -> None:
    throttle = AuthThrottle(burst=3, interval=10.0)
    guesser, genuine = (A_ADDR, 40000), (A_ADDR, 500)
    for _ in range(3):
        assert not throttle.throttled(guesser, 0.0)
        throttle.failed(guesser, 0.0)
    assert throttle.throttled(guesser, 1.0) and not throttle.throttled(genuine, 1.0)
    gate = InitGate(rand=seeded(3), throttle=throttle)
    assert admit(gate, init_request(), source=guesser, now=1.0).drop == "auth-throttled"
    assert admit(gate, init_request(), source=genuine, now=1.0).message is not None
    assert not throttle.throttled(guesser, 11.0)  # one more attempt after the interval
    throttle.failed(guesser, 11.0)
    assert throttle.throttled(guesser, 12.0)


def test_the_packed_stateless_answer_is_what_the_codec_encodes() -> None:
    spi_i = b"initiatr"
    header = IkeHeader(spi_i, bytes(8), 0, ExchangeType.IKE_SA_INIT, HeaderFlag.RESPONSE, 0)
    for notify in (NotifyPayload(NotifyType.COOKIE, b"c" * 17),
                   NotifyPayload(NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD, b"\xc8")):
        assert stateless_answer(spi_i, notify.notify_type, notify.data) == encode_message(
            header, [notify])
