"""One byte buffer type for every codec: bounds-checked big-endian pulls and pushes.

Codecs in both protocol cores are written as ``pull_*``/``push_*`` functions over this
type, so a short or malformed packet always surfaces as ``BufferReadError`` (a counted
drop at the session boundary), never as ``IndexError`` or ``struct.error``.
"""

from __future__ import annotations

import struct

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")


class BufferReadError(ValueError):
    """The peer's bytes ended before the field being read."""


class Buffer:
    """A read cursor over immutable bytes, or an append-only writer."""

    __slots__ = ("_data", "_pos", "_out")

    def __init__(self, data: bytes = b"") -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._out = bytearray()

    # -- reading -------------------------------------------------------------------
    def tell(self) -> int:
        return self._pos

    def remaining(self) -> int:
        return len(self._data) - self._pos

    def eof(self) -> bool:
        return self._pos >= len(self._data)

    def _take(self, n: int) -> memoryview:
        end = self._pos + n
        if n < 0 or end > len(self._data):
            raise BufferReadError(f"need {n} bytes at offset {self._pos}, have {self.remaining()}")
        view = self._data[self._pos : end]
        self._pos = end
        return view

    def pull_bytes(self, n: int) -> bytes:
        return bytes(self._take(n))

    def pull_rest(self) -> bytes:
        return self.pull_bytes(self.remaining())

    def pull_uint8(self) -> int:
        return self._take(1)[0]

    def pull_uint16(self) -> int:
        return int(_U16.unpack(self._take(2))[0])

    def pull_uint24(self) -> int:
        return int.from_bytes(self._take(3), "big")

    def pull_uint32(self) -> int:
        return int(_U32.unpack(self._take(4))[0])

    def pull_uint64(self) -> int:
        return int(_U64.unpack(self._take(8))[0])

    # -- writing -------------------------------------------------------------------
    def push_bytes(self, data: bytes) -> None:
        self._out += data

    def push_uint8(self, value: int) -> None:
        self._out.append(value)

    def push_uint16(self, value: int) -> None:
        self._out += _U16.pack(value)

    def push_uint24(self, value: int) -> None:
        self._out += value.to_bytes(3, "big")

    def push_uint32(self, value: int) -> None:
        self._out += _U32.pack(value)

    def push_uint64(self, value: int) -> None:
        self._out += _U64.pack(value)

    def getvalue(self) -> bytes:
        """The bytes pushed so far."""
        return bytes(self._out)
