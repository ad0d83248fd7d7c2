"""TCP length framing: the captured 2.6.14 stream, arbitrary chunking, bogus lengths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sslvpn.net.buffer import BufferReadError
from sslvpn.openvpn.constants import Opcode
from sslvpn.openvpn.framing import FramingError, TcpFrameDecoder, frame
from sslvpn.openvpn.packet import peek_opcode
from sslvpn.openvpn.tls_wrap import FirstPacket, ServerWrapKeys, check_first_packet

FIXTURE = json.loads(
    (Path(__file__).resolve().parent.parent / "fixtures" / "openvpn" / "tcp-tls-crypt.json")
    .read_text()
)
SEGMENTS = [bytes.fromhex(s) for s in FIXTURE["c2s_segments"]]


def test_captured_client_stream() -> None:
    decoder = TcpFrameDecoder()
    packets = [p for seg in SEGMENTS for p in decoder.feed(seg)]
    assert decoder.pending() == 0
    opcodes = [peek_opcode(p)[0] for p in packets]
    assert opcodes[0] is Opcode.CONTROL_HARD_RESET_CLIENT_V2
    assert Opcode.DATA_V2 in opcodes
    keys = ServerWrapKeys.tls_crypt(bytes.fromhex(FIXTURE["tls_crypt_key"]))
    first = check_first_packet(keys, packets[0])
    assert isinstance(first, FirstPacket) and first.packet.message_id == 0
    assert b"".join(frame(p) for p in packets) == b"".join(SEGMENTS)


@given(st.lists(st.integers(1, 64), min_size=1, max_size=200))
def test_any_chunking_gives_the_same_packets(cuts: list[int]) -> None:
    stream = b"".join(SEGMENTS)
    expected = TcpFrameDecoder().feed(stream)
    decoder = TcpFrameDecoder()
    got: list[bytes] = []
    pos = 0
    for size in cuts:
        got += decoder.feed(stream[pos : pos + size])
        pos += size
    got += decoder.feed(stream[pos:])
    assert got == expected and decoder.pending() == 0


def test_partial_then_complete() -> None:
    decoder = TcpFrameDecoder()
    assert decoder.feed(b"\x00") == []
    assert decoder.feed(b"\x03ab") == [] and decoder.pending() == 4
    assert decoder.feed(b"c\x00\x01") == [b"abc"]
    assert decoder.feed(b"z") == [b"z"]


@pytest.mark.parametrize("stream", [b"\x00\x00", b"\x10\x01" + bytes(10), b"\xff\xff"])
def test_bogus_lengths_fail_the_stream(stream: bytes) -> None:
    decoder = TcpFrameDecoder()
    with pytest.raises(FramingError):
        decoder.feed(b"\x00\x01x" + stream)
    with pytest.raises(BufferReadError):
        decoder.feed(b"\x00\x01x")


def test_frame_limits() -> None:
    assert frame(b"ab") == b"\x00\x02ab"
    with pytest.raises(ValueError):
        frame(b"")
    with pytest.raises(ValueError):
        frame(bytes(65536))


@given(st.binary(max_size=300))
def test_random_bytes_only_raise_framing_errors(data: bytes) -> None:
    try:
        TcpFrameDecoder().feed(data)
    except FramingError:
        pass
