"""Bounded parsing (RFC 7296 §3) and critical payloads (§2.5) in the IKE core.

A datagram is refused on its header (size, version, length) before any payload is looked
at, a payload chain longer than ``MAX_PAYLOADS`` is refused before its bodies are decoded,
and an unknown payload marked critical gets ``UNSUPPORTED_CRITICAL_PAYLOAD``.
"""

from __future__ import annotations

import os

import pytest

from sslvpn.ipsec.ike import constants as c
from sslvpn.ipsec.ike import events as ev
from sslvpn.ipsec.ike import messages as m
from sslvpn.ipsec.ike import payloads
from sslvpn.ipsec.ike.constants import ExchangeType, HeaderFlag, NotifyType, PayloadType
from sslvpn.ipsec.ike.sa import IkeSa, IkeState
from sslvpn.net.buffer import Buffer

from .ike_pair import A_ADDR, B_ADDR, config, init_request, seeded, with_payloads

PEER = (A_ADDR, 500)


def responder_answer(data: bytes) -> tuple[IkeSa, list[m.Payload]]:
    sa = IkeSa(config("B", ike="aes256-sha256-ecp256"), (B_ADDR, 500), PEER, initiator=False,
               rand=seeded(9))
    sa.receive_datagram(data, PEER, 0.0)
    ((answer, to),) = sa.datagrams_to_send(0.0)
    assert to == PEER
    return sa, m.pull_message(answer).payloads


def test_the_header_check_refuses_oversized_and_misframed_datagrams() -> None:
    data = init_request()
    assert m.peek_header(data).exchange == ExchangeType.IKE_SA_INIT
    with pytest.raises(m.MalformedMessage):
        m.peek_header(data[:-1])  # the length field covers the whole message
    with pytest.raises(m.MalformedMessage):
        m.peek_header(data[:20])
    header = m.IkeHeader(os.urandom(8), bytes(8), 0, ExchangeType.IKE_SA_INIT,
                       HeaderFlag.INITIATOR, 0)
    big = m.encode_message(header, [m.UnknownPayload(200, False, b"x" * c.MAX_MESSAGE_LENGTH)])
    with pytest.raises(m.OversizeMessage) as refused:
        m.peek_header(big)
    assert refused.value.reason == "oversize"


def test_hundreds_of_empty_payloads_are_refused_at_the_limit_without_decoding_any(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    header = m.IkeHeader(os.urandom(8), bytes(8), 0, ExchangeType.IKE_SA_INIT,
                       HeaderFlag.INITIATOR, 0)
    flood = m.encode_message(header, [m.UnknownPayload(200, False, b"")] * 340)  # ~1.4 KB
    assert len(flood) < 1500
    decoded: list[int] = []

    def counting(ptype: int, critical: bool, body: Buffer) -> m.Payload:
        decoded.append(ptype)
        return payloads.pull_body(ptype, critical, body)

    monkeypatch.setattr(m, "pull_body", counting)
    with pytest.raises(m.TooManyPayloads) as refused:
        m.pull_message(flood)
    assert refused.value.reason == "too-many-payloads" and not decoded
    cut = bytearray(flood)
    cut[28 + 4 * (c.MAX_PAYLOADS + 1):] = b"\xff" * (len(flood) - 28 - 4 * (c.MAX_PAYLOADS + 1))
    with pytest.raises(m.TooManyPayloads):  # what lies beyond the limit is never read
        m.pull_message(bytes(cut))
    at_limit = m.encode_message(header, [m.UnknownPayload(200, False, b"")] * c.MAX_PAYLOADS)
    assert len(m.pull_message(at_limit).payloads) == c.MAX_PAYLOADS


def test_responder_core_refuses_a_critical_unknown_payload_and_keeps_no_state() -> None:
    sa, answer = responder_answer(with_payloads(init_request(), m.UnknownPayload(200, True, b"x")))
    assert answer == [m.NotifyPayload(NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD, b"\xc8")]
    assert sa.state is IkeState.INITIAL and sa.get_timer() is None
    assert sa.next_event() == ev.MessageDropped("unsupported critical payload 200",
                                                "unsupported-critical")


def test_known_payload_types_ignore_the_critical_bit_and_unknown_uncritical_are_skipped() -> None:
    certreq = m.UnknownPayload(PayloadType.CERTREQ, True, b"\x04")  # defined by RFC 7296
    skipped = m.UnknownPayload(201, False, b"whatever")
    sa, answer = responder_answer(with_payloads(init_request(), certreq, skipped))
    assert sa.state is IkeState.AUTH_WAIT and any(isinstance(p, m.KePayload)
                                                  for p in answer)
