import pytest
from hypothesis import given
from hypothesis import strategies as st

from sslvpn.net.buffer import Buffer, BufferReadError


def test_round_trip_of_every_width() -> None:
    out = Buffer()
    out.push_uint8(0xAB)
    out.push_uint16(0xBEEF)
    out.push_uint24(0x123456)
    out.push_uint32(0xDEADBEEF)
    out.push_uint64(0x0102030405060708)
    out.push_bytes(b"tail")
    data = out.getvalue()
    assert data.hex() == "abbeef123456deadbeef0102030405060708" + b"tail".hex()
    buf = Buffer(data)
    assert buf.pull_uint8() == 0xAB
    assert buf.pull_uint16() == 0xBEEF
    assert buf.pull_uint24() == 0x123456
    assert buf.pull_uint32() == 0xDEADBEEF
    assert buf.pull_uint64() == 0x0102030405060708
    assert buf.pull_rest() == b"tail"
    assert buf.eof()


def test_short_read_raises_buffer_error_and_does_not_advance() -> None:
    buf = Buffer(b"\x01\x02")
    with pytest.raises(BufferReadError):
        buf.pull_uint32()
    assert buf.tell() == 0
    with pytest.raises(BufferReadError):
        buf.pull_bytes(-1)


@given(st.binary(max_size=64), st.integers(min_value=0, max_value=80))
def test_pull_bytes_never_raises_anything_else(data: bytes, n: int) -> None:
    buf = Buffer(data)
    try:
        assert buf.pull_bytes(n) == data[:n]
    except BufferReadError:
        assert n > len(data)
