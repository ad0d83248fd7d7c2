"""Control packet and data header codec: byte tables, invariants, garbage and round trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sslvpn.net.buffer import Buffer, BufferReadError
from sslvpn.openvpn.constants import CONTROL_OPCODES, WKC_OPCODES, Opcode
from sslvpn.openvpn.packet import (
    ControlPacket,
    DataHeader,
    MalformedPacket,
    data_v2_header,
    first_byte,
    peek_opcode,
    pull_control_packet,
    pull_data_header,
    push_control_packet,
    push_data_header,
    split_wkc,
)

CSID = bytes.fromhex("1122334455667788")
SSID = bytes.fromhex("a1a2a3a4a5a6a7a8")


def test_client_hard_reset_bytes() -> None:
    wire = bytes.fromhex("38" "1122334455667788" "00" "00000000")
    pkt = pull_control_packet(wire)
    assert pkt == ControlPacket(Opcode.CONTROL_HARD_RESET_CLIENT_V2, 0, CSID, message_id=0)
    assert push_control_packet(pkt) == wire


def test_server_reset_acks_client_reset() -> None:
    pkt = ControlPacket(
        Opcode.CONTROL_HARD_RESET_SERVER_V2, 0, SSID, (0,), CSID, message_id=0
    )
    wire = push_control_packet(pkt)
    assert wire == bytes.fromhex(
        "40" "a1a2a3a4a5a6a7a8" "01" "00000000" "1122334455667788" "00000000"
    )
    assert pull_control_packet(wire) == pkt


def test_ack_v1_has_no_message_id() -> None:
    wire = bytes.fromhex("2a" "1122334455667788" "02" "00000001" "00000002" "a1a2a3a4a5a6a7a8")
    pkt = pull_control_packet(wire)
    assert (pkt.opcode, pkt.key_id, pkt.acks, pkt.message_id) == (Opcode.ACK_V1, 2, (1, 2), None)
    assert pkt.remote_session_id == SSID
    assert push_control_packet(pkt) == wire


def test_control_v1_payload() -> None:
    wire = bytes.fromhex("20" "1122334455667788" "00" "00000003") + b"\x16\x03\x01tls"
    pkt = pull_control_packet(wire)
    assert pkt.message_id == 3 and pkt.payload == b"\x16\x03\x01tls" and pkt.acks == ()


def test_wkc_is_split_by_its_trailing_length() -> None:
    wkc_body = bytes(range(256)) * 2
    wkc = wkc_body[: 300 - 2] + (300).to_bytes(2, "big")
    pkt = ControlPacket(Opcode.CONTROL_WKC_V1, 0, CSID, (0,), SSID, 1, b"hello", wkc)
    wire = push_control_packet(pkt)
    assert split_wkc(wire)[1] == wkc
    assert pull_control_packet(wire) == pkt


@pytest.mark.parametrize(
    "wire",
    [
        b"",
        bytes.fromhex("08" "1122334455667788" "00" "00000000"),  # key-method 1 reset
        bytes.fromhex("30" "1122334455667788"),  # data opcode as control
        bytes.fromhex("f8" "1122334455667788" "00" "00000000"),  # opcode 31
        bytes.fromhex("38" "0000000000000000" "00" "00000000"),  # zero session id
        bytes.fromhex("38" "1122334455667788" "09") + bytes(44),  # 9 acks
        bytes.fromhex("38" "1122334455667788" "01" "00000000"),  # ack without peer sid
        bytes.fromhex("38" "1122334455667788" "00" "000000"),  # short message id
        bytes.fromhex("28" "1122334455667788" "00" "00"),  # payload in P_ACK_V1
        bytes.fromhex("50" "1122334455667788" "00" "00000000" "0010"),  # WKc too short
    ],
)
def test_garbage_is_a_buffer_read_error(wire: bytes) -> None:
    with pytest.raises(BufferReadError):
        pull_control_packet(wire)


def test_encoder_refuses_inconsistent_packets() -> None:
    with pytest.raises(ValueError):
        push_control_packet(ControlPacket(Opcode.CONTROL_V1, 0, CSID, (1,), None, 1))
    with pytest.raises(ValueError):
        push_control_packet(ControlPacket(Opcode.ACK_V1, 0, CSID, (1,), SSID, 1))
    with pytest.raises(ValueError):
        push_control_packet(ControlPacket(Opcode.CONTROL_V1, 0, CSID, tuple(range(9)), SSID, 1))
    with pytest.raises(ValueError):
        push_control_packet(ControlPacket(Opcode.DATA_V2, 0, CSID, message_id=1))
    with pytest.raises(ValueError):
        first_byte(Opcode.CONTROL_V1, 8)


def test_data_headers() -> None:
    assert data_v2_header(0, 5) == bytes.fromhex("48000005")
    assert data_v2_header(3, 0xFFFFFF) == bytes.fromhex("4bffffff")
    hdr = pull_data_header(Buffer(bytes.fromhex("4a000102") + b"x"))
    assert hdr == DataHeader(Opcode.DATA_V2, 2, 0x102) and hdr.length == 4
    v1 = pull_data_header(Buffer(b"\x31rest"))
    assert v1 == DataHeader(Opcode.DATA_V1, 1, None) and v1.length == 1
    out = Buffer()
    push_data_header(out, hdr)
    assert out.getvalue() == bytes.fromhex("4a000102")
    assert peek_opcode(b"\x4a") == (Opcode.DATA_V2, 2)
    with pytest.raises(MalformedPacket):
        pull_data_header(Buffer(b"\x20"))
    with pytest.raises(BufferReadError):
        pull_data_header(Buffer(b"\x48\x00"))


session_ids = st.binary(min_size=8, max_size=8).filter(lambda b: any(b))


@st.composite
def control_packets(draw: st.DrawFn) -> ControlPacket:
    opcode = draw(st.sampled_from(sorted(CONTROL_OPCODES)))
    acks = tuple(draw(st.lists(st.integers(0, 2**32 - 1), max_size=8)))
    is_ack = opcode is Opcode.ACK_V1
    wkc = None
    if opcode in WKC_OPCODES:
        n = draw(st.integers(290, 1024))
        wkc = draw(st.binary(min_size=n - 2, max_size=n - 2)) + n.to_bytes(2, "big")
    return ControlPacket(
        opcode,
        draw(st.integers(0, 7)),
        draw(session_ids),
        acks,
        draw(session_ids) if acks else None,
        None if is_ack else draw(st.integers(0, 2**32 - 1)),
        b"" if is_ack else draw(st.binary(max_size=64)),
        wkc,
    )


@given(control_packets())
def test_round_trip(pkt: ControlPacket) -> None:
    assert pull_control_packet(push_control_packet(pkt)) == pkt


@given(st.binary(max_size=200))
def test_random_bytes_never_raise_anything_else(data: bytes) -> None:
    try:
        pull_control_packet(data)
    except BufferReadError:
        pass
    try:
        pull_data_header(Buffer(data))
    except BufferReadError:
        pass
