"""IKEv2 codec: strongSwan's own IKE_SA_INIT bytes round-trip, every payload round-trips,
and random bytes only ever raise MalformedMessage."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sslvpn.ipsec.ike import messages as m
from sslvpn.ipsec.ike.constants import (
    DhGroup,
    EncrId,
    ExchangeType,
    HeaderFlag,
    NotifyType,
    PayloadType,
    ProtocolId,
    TransformType,
)
from sslvpn.ipsec.ike.traffic_selectors import TrafficSelector

FIXTURE = json.loads(
    (Path(__file__).parent.parent / "fixtures/ipsec/strongswan_psk_modp2048.json").read_text()
)


@pytest.mark.parametrize("name", ["ike_sa_init_request", "ike_sa_init_response"])
def test_strongswan_ike_sa_init_round_trips(name: str) -> None:
    data = bytes.fromhex(FIXTURE[name])
    msg = m.pull_message(data)
    assert msg.header.exchange == ExchangeType.IKE_SA_INIT
    assert m.encode_message(msg.header, msg.payloads) == data


def test_strongswan_request_contents() -> None:
    msg = m.pull_message(bytes.fromhex(FIXTURE["ike_sa_init_request"]))
    assert msg.header.flags == HeaderFlag.INITIATOR
    (sa,) = m.find(msg.payloads, m.SaPayload)
    groups = [p.of_type(TransformType.DH)[0].id for p in sa.proposals]
    assert groups == [DhGroup.MODP_2048, DhGroup.ECP_256, DhGroup.CURVE25519]
    encr = sa.proposals[0].of_type(TransformType.ENCR)[0]
    assert (encr.id, encr.key_length) == (EncrId.AES_CBC, 256)
    (ke,) = m.find(msg.payloads, m.KePayload)
    assert (ke.group, len(ke.data)) == (DhGroup.MODP_2048, 256)
    (nonce,) = m.find(msg.payloads, m.NoncePayload)
    assert nonce.data.hex() == FIXTURE["nonce_i_from_octets"]
    assert NotifyType.NAT_DETECTION_SOURCE_IP in m.notifies(msg.payloads)


def _sample_payloads() -> list[m.Payload]:
    ts = TrafficSelector.from_network("10.1.0.0/24")
    ts6 = TrafficSelector(
        ipaddress.ip_address("2001:db8::1"), ipaddress.ip_address("2001:db8::ff"), 6, 80, 443
    )
    return [
        m.SaPayload([
            m.Proposal(1, ProtocolId.ESP, b"\x01\x02\x03\x04", [
                m.Transform(TransformType.ENCR, EncrId.AES_GCM_16, 256),
                m.Transform(TransformType.ESN, 0),
            ]),
            m.Proposal(2, ProtocolId.ESP, b"\x01\x02\x03\x04", [
                m.Transform(TransformType.ENCR, EncrId.AES_CBC, 256),
                m.Transform(TransformType.INTEG, 12),
                m.Transform(TransformType.ESN, 0),
            ]),
        ]),
        m.KePayload(DhGroup.CURVE25519, bytes(range(32))),
        m.NoncePayload(b"n" * 32),
        m.IdPayload(False, 2, b"siteA.lab"),
        m.IdPayload(True, 1, bytes([198, 18, 0, 2])),
        m.AuthPayload(2, b"a" * 32),
        m.NotifyPayload(NotifyType.REKEY_SA, b"", ProtocolId.ESP, b"\xaa\xbb\xcc\xdd"),
        m.DeletePayload(ProtocolId.ESP, [b"\x00\x00\x00\x01", b"\x00\x00\x00\x02"]),
        m.DeletePayload(ProtocolId.IKE, []),
        m.TsPayload(False, [ts, ts6]),
        m.TsPayload(True, [ts]),
        m.VendorPayload(b"vendor"),
        m.UnknownPayload(47, False, b"cp"),
    ]


def test_every_payload_round_trips() -> None:
    payloads = _sample_payloads()
    header = m.IkeHeader(b"i" * 8, b"r" * 8, 0, ExchangeType.IKE_AUTH, HeaderFlag.INITIATOR, 1)
    data = m.encode_message(header, payloads)
    again = m.pull_message(data)
    assert again.payloads == payloads
    assert again.header.next_payload == PayloadType.SA


def test_length_mismatch_is_malformed() -> None:
    data = bytes.fromhex(FIXTURE["ike_sa_init_request"])
    with pytest.raises(m.MalformedMessage):
        m.pull_message(data[:-1])
    with pytest.raises(m.MalformedMessage):
        m.pull_message(data + b"\x00")


def test_truncated_payload_chain_is_malformed() -> None:
    data = bytearray(bytes.fromhex(FIXTURE["ike_sa_init_request"]))
    data[28 + 2 : 28 + 4] = (2000).to_bytes(2, "big")  # SA payload claims too much
    with pytest.raises(m.MalformedMessage):
        m.pull_message(bytes(data))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_raise_anything_else(data: bytes) -> None:
    try:
        m.pull_message(data)
    except m.MalformedMessage:
        pass


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 551), st.integers(0, 255))
def test_mutated_strongswan_message_never_raises_anything_else(pos: int, value: int) -> None:
    data = bytearray(bytes.fromhex(FIXTURE["ike_sa_init_request"]))
    data[pos] = value
    try:
        m.pull_message(bytes(data))
    except m.MalformedMessage:
        pass


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 0xFF), st.binary(max_size=120))
def test_random_payload_chains_never_raise_anything_else(first: int, body: bytes) -> None:
    try:
        m.pull_payloads(body, first)
    except m.MalformedMessage:
        pass


_spi = st.sampled_from([b"", b"\x01\x02\x03\x04", b"12345678"])
_transform = st.builds(
    m.Transform, st.integers(1, 5), st.integers(0, 0xFFFF),
    st.one_of(st.none(), st.integers(0, 0xFFFF)),
)
_proposal = st.builds(m.Proposal, st.integers(1, 255), st.integers(1, 3), _spi,
                      st.lists(_transform, min_size=1, max_size=6))
_address = st.builds(ipaddress.IPv4Address, st.integers(0, 2**32 - 1))
_selector = st.builds(
    lambda a, b, proto, p1, p2: TrafficSelector(min(a, b), max(a, b), proto, min(p1, p2),
                                                max(p1, p2)),
    _address, _address, st.integers(0, 255), st.integers(0, 65535), st.integers(0, 65535),
)
_payload = st.one_of(
    st.builds(m.SaPayload, st.lists(_proposal, min_size=1, max_size=3)),
    st.builds(m.KePayload, st.integers(0, 0xFFFF), st.binary(max_size=64)),
    st.builds(m.NoncePayload, st.binary(min_size=16, max_size=64)),
    st.builds(m.IdPayload, st.booleans(), st.integers(0, 255), st.binary(max_size=32)),
    st.builds(m.AuthPayload, st.integers(0, 255), st.binary(max_size=64)),
    st.builds(m.NotifyPayload, st.integers(0, 0xFFFF), st.binary(max_size=32),
              st.integers(0, 3), st.sampled_from([b"", b"\x00\x00\x10\x01"])),
    st.builds(m.DeletePayload, st.just(3), st.lists(st.binary(min_size=4, max_size=4),
                                                    min_size=1, max_size=4)),
    st.builds(m.TsPayload, st.booleans(), st.lists(_selector, max_size=4)),
    st.builds(m.VendorPayload, st.binary(max_size=32)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_payload, min_size=1, max_size=8), st.integers(0, 2**32 - 1))
def test_generated_messages_round_trip(payloads: list[m.Payload], message_id: int) -> None:
    header = m.IkeHeader(b"i" * 8, b"r" * 8, 0, ExchangeType.INFORMATIONAL, 0x20, message_id)
    data = m.encode_message(header, payloads)
    again = m.pull_message(data)
    assert again.payloads == payloads
    assert again.header.message_id == message_id and again.header.length == len(data)
