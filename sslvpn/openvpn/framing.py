"""OpenVPN over TCP: every packet is preceded by a u16 length of the bytes that follow.

The decoder is incremental: feed whatever the socket returned, get back the whole packets
it completed, keep the rest for the next read [src socket.c stream_buf_added/
stream_buf_get_next, ssl.c]. A zero or oversized length cannot be resynchronised from, so
it raises ``FramingError`` (a ``BufferReadError``) and the connection must be closed.
"""

from __future__ import annotations

import struct

from sslvpn.net.buffer import BufferReadError
from sslvpn.openvpn.constants import TCP_MAX_PACKET

_U16 = struct.Struct("!H")
_LEN = _U16.size


class FramingError(BufferReadError):
    """The stream announced an impossible packet length; close the connection."""


def frame(packet: bytes) -> bytes:
    """Prefix one packet with its u16 length for sending over TCP."""
    if not 0 < len(packet) <= 0xFFFF:
        raise ValueError("a TCP-framed packet must be 1..65535 bytes")
    return _U16.pack(len(packet)) + packet


class TcpFrameDecoder:
    """Reassembles length-prefixed packets from arbitrary chunks of a TCP stream."""

    __slots__ = ("_buf", "_max", "_failed")

    def __init__(self, max_packet: int = TCP_MAX_PACKET) -> None:
        self._buf = bytearray()
        self._max = max_packet
        self._failed = False

    def pending(self) -> int:
        """Bytes received but not yet part of a whole packet."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return every packet completed by them, in order."""
        if self._failed:
            raise FramingError("stream already failed framing")
        buf = self._buf
        buf += data
        packets: list[bytes] = []
        pos = 0
        end = len(buf)
        while end - pos >= _LEN:
            (length,) = _U16.unpack_from(buf, pos)
            if length == 0 or length > self._max:
                self._failed = True
                raise FramingError(f"bogus TCP packet length {length}")
            if end - pos - _LEN < length:
                break
            start = pos + _LEN
            packets.append(bytes(buf[start : start + length]))
            pos = start + length
        if pos:
            del buf[:pos]
        return packets
