"""The data channel of one key state: AEAD seal/open, packet ids, replay window, framing.

Packet format [src crypto.c openvpn_encrypt_aead/openvpn_decrypt_aead, ssl.c
tls_prepend_opcode_v1/_v2]::

    P_DATA_V2: op|kid peer-id(3) packet_id(4) tag(16) ciphertext
    P_DATA_V1: op|kid            packet_id(4) tag(16) ciphertext
    nonce = packet_id || implicit IV (8);  AAD = op|kid peer-id packet_id (V2) or packet_id (V1)

The plaintext is the compression framing (if the client has any configured) followed by an
IP packet, the 16-byte keepalive ping, or an OCC message [src comp.h, compstub.c, ping.h,
occ.h]. Packet ids start at 1 and never wrap: ``needs_rekey`` turns true at 0xFF000000 and
``seal`` refuses at 0xFFFFFFFF [src packet_id.h]. On receive the tag is checked first and
only an authentic id enters the replay window.

This is the hot path: AEAD objects are built once per key state, no logging, and failures
are ``DataDropped`` (a ``BufferReadError``) with a short stable ``reason``.
"""

from __future__ import annotations

import struct
from enum import Enum

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from sslvpn.net.buffer import BufferReadError
from sslvpn.net.replay import ReplayVerdict, ReplayWindow
from sslvpn.openvpn.constants import (
    AEAD_TAG_LEN,
    COMP_ALGV2_INDICATOR_BYTE,
    COMP_ALGV2_UNCOMPRESSED,
    LZ4_COMPRESS_BYTE,
    LZO_COMPRESS_BYTE,
    NO_COMPRESS_BYTE,
    NO_COMPRESS_BYTE_SWAP,
    OCC_MAGIC,
    P_KEY_ID_MASK,
    P_OPCODE_SHIFT,
    PACKET_ID_LEN,
    PACKET_ID_MAX,
    PACKET_ID_WRAP_TRIGGER,
    PEER_ID_UNDEF,
    PING_MAGIC,
    REPLAY_WINDOW,
    OccOpcode,
    Opcode,
)
from sslvpn.openvpn.keys import DataKeys

_U32 = struct.Struct("!I")
_V1 = int(Opcode.DATA_V1)
_V2 = int(Opcode.DATA_V2)
_MIN_BODY = PACKET_ID_LEN + AEAD_TAG_LEN
_HEADER_LEN = {_V2: 4, _V1: 1}  # opcode -> bytes before the packet id


class DataDropped(BufferReadError):
    """A data packet was refused; ``reason`` is a stable counter token."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PacketIdExhausted(RuntimeError):
    """The send counter reached 2**32 - 1; the key state must be renegotiated first."""


class Compression(Enum):
    """Compression framing a client has configured; we never compress, only frame.

    NONE: raw packets (2.6 default). LZO_STUB: ``comp-lzo [no]`` - 0xFA before every
    packet. SWAP_STUB: ``compress``/``compress stub`` - 0xFB in front, first byte moved to
    the end. STUB_V2: ``compress stub-v2`` - raw, escaped with 0x50 0x00 only when the
    packet starts with 0x50 [src comp.h, compstub.c]. In NONE mode a leading 0xFA is
    still stripped on receive (no IP packet starts with it; ``comp-lzo`` profiles send it).
    """

    NONE = "none"
    LZO_STUB = "comp-lzo"
    SWAP_STUB = "compress-stub"
    STUB_V2 = "stub-v2"


def _aead(cipher: str, key: bytes) -> AESGCM | ChaCha20Poly1305:
    if cipher == "CHACHA20-POLY1305":
        return ChaCha20Poly1305(key)
    return AESGCM(key)


class DataChannelKey:
    """Seal and open data packets with the keys of one key state.

    ``peer_id`` None means we send P_DATA_V1 (clients without IV_PROTO DATA_V2); otherwise
    P_DATA_V2 with that peer-id. Both formats are accepted on receive.
    """

    __slots__ = (
        "key_id",
        "cipher",
        "compression",
        "_encrypt",
        "_decrypt",
        "_enc_iv",
        "_dec_iv",
        "_header",
        "_v2",
        "_send_pid",
        "_replay",
        "bytes_in",
        "bytes_out",
    )

    def __init__(
        self,
        keys: DataKeys,
        key_id: int,
        *,
        peer_id: int | None,
        compression: Compression = Compression.NONE,
        replay_window: int = REPLAY_WINDOW,
    ) -> None:
        if not 0 <= key_id <= P_KEY_ID_MASK:
            raise ValueError("key_id must fit in 3 bits")
        self.key_id = key_id
        self.cipher = keys.cipher
        self.compression = compression
        self._encrypt = _aead(keys.cipher, keys.encrypt.key).encrypt  # bound once: hot path
        self._decrypt = _aead(keys.cipher, keys.decrypt.key).decrypt
        self._enc_iv = keys.encrypt.implicit_iv
        self._dec_iv = keys.decrypt.implicit_iv
        self._v2 = peer_id is not None
        if peer_id is None:
            self._header = bytes([_V1 << P_OPCODE_SHIFT | key_id])
        else:
            if not 0 <= peer_id <= PEER_ID_UNDEF:
                raise ValueError("peer_id must fit in 24 bits")
            self._header = _U32.pack((_V2 << P_OPCODE_SHIFT | key_id) << 24 | peer_id)
        self._send_pid = 0
        self._replay = ReplayWindow(replay_window)
        self.bytes_in = 0
        self.bytes_out = 0

    def __repr__(self) -> str:
        return f"DataChannelKey(key_id={self.key_id}, cipher={self.cipher}, <keys hidden>)"

    @property
    def needs_rekey(self) -> bool:
        """The send counter passed 0xFF000000: renegotiate before it runs out."""
        return self._send_pid >= PACKET_ID_WRAP_TRIGGER

    @property
    def packets_sent(self) -> int:
        return self._send_pid

    def seal(self, packet: bytes) -> bytes:
        """Frame and encrypt one IP packet (or ping/OCC payload) into a data packet."""
        pid = self._send_pid + 1
        if pid > PACKET_ID_MAX:
            raise PacketIdExhausted("data-channel packet id exhausted; renegotiate")
        self._send_pid = pid
        pid_bytes = _U32.pack(pid)
        aad = self._header + pid_bytes if self._v2 else pid_bytes
        plain = packet if self.compression is Compression.NONE else self._frame(packet)
        sealed = self._encrypt(pid_bytes + self._enc_iv, plain, aad)
        self.bytes_out += len(packet)
        return b"".join((self._header, pid_bytes, sealed[-AEAD_TAG_LEN:], sealed[:-AEAD_TAG_LEN]))

    def open(self, data: bytes) -> bytes:
        """Authenticate, replay-check and unframe one data packet; returns the plaintext.

        Written for the cold single packet (a ping through an idle tunnel) as much as for
        bursts: few attribute lookups, and a packet id above the window's top (the normal
        case) is known fresh without asking the window.
        """
        if not data:
            raise DataDropped("short")
        first = data[0]
        if first & P_KEY_ID_MASK != self.key_id:
            raise DataDropped("key-id")
        hlen = _HEADER_LEN.get(first >> P_OPCODE_SHIFT)
        if hlen is None:
            raise DataDropped("not-data")
        if len(data) < hlen + _MIN_BODY:
            raise DataDropped("short")
        body = hlen + PACKET_ID_LEN
        pid_bytes = data[hlen:body]
        pid = int.from_bytes(pid_bytes, "big")
        replay = self._replay
        if pid <= replay.top:
            verdict = replay.check(pid)
            if verdict is not ReplayVerdict.FRESH:
                raise DataDropped("replay" if verdict is ReplayVerdict.REPLAYED else "too-old")
        tag_end = body + AEAD_TAG_LEN
        try:
            plain = self._decrypt(
                pid_bytes + self._dec_iv, data[tag_end:] + data[body:tag_end],
                data[:body] if hlen == 4 else pid_bytes,
            )
        except InvalidTag:
            raise DataDropped("auth") from None
        replay.update(pid)
        if self.compression is not Compression.NONE or (plain and plain[0] == NO_COMPRESS_BYTE):
            plain = self._unframe(plain)
        self.bytes_in += len(plain)
        return plain

    # -- compression framing ---------------------------------------------------------------
    def _frame(self, packet: bytes) -> bytes:
        mode = self.compression
        if mode is Compression.LZO_STUB:
            return bytes((NO_COMPRESS_BYTE,)) + packet
        if mode is Compression.SWAP_STUB:
            if not packet:
                return bytes((NO_COMPRESS_BYTE_SWAP,))
            return bytes((NO_COMPRESS_BYTE_SWAP,)) + packet[1:] + packet[:1]
        if packet[:1] == bytes((COMP_ALGV2_INDICATOR_BYTE,)):
            return bytes((COMP_ALGV2_INDICATOR_BYTE, COMP_ALGV2_UNCOMPRESSED)) + packet
        return packet

    def _unframe(self, plain: bytes) -> bytes:
        """Undo stub framing; real compressed data is refused (we never negotiate it)."""
        if not plain:
            return plain
        head = plain[0]
        if self.compression is Compression.STUB_V2:
            # v2 framing escapes only a leading 0x50; every other first byte is data [compstub.c]
            if head != COMP_ALGV2_INDICATOR_BYTE:
                return plain
            if plain[1:2] == bytes((COMP_ALGV2_UNCOMPRESSED,)):
                return plain[2:]
            raise DataDropped("compressed")
        if head == NO_COMPRESS_BYTE:
            return plain[1:]
        if head == NO_COMPRESS_BYTE_SWAP:
            return plain[-1:] + plain[1:-1] if len(plain) > 1 else b""
        if head in (LZO_COMPRESS_BYTE, LZ4_COMPRESS_BYTE) and self.compression in (
            Compression.LZO_STUB,
            Compression.SWAP_STUB,
        ):
            raise DataDropped("compressed")
        if self.compression in (Compression.LZO_STUB, Compression.SWAP_STUB):
            raise DataDropped("bad-framing")
        return plain


# -- payload recognition -------------------------------------------------------------------
def is_ping(plain: bytes) -> bool:
    """The keepalive ping (ping.c): exactly the 16 magic bytes; never goes to the TUN."""
    return len(plain) == len(PING_MAGIC) and plain == PING_MAGIC


def occ_opcode(plain: bytes) -> OccOpcode | None:
    """The OCC message type if ``plain`` is an OCC message (occ.c), else None."""
    if len(plain) <= len(OCC_MAGIC) or not plain.startswith(OCC_MAGIC):
        return None
    try:
        return OccOpcode(plain[len(OCC_MAGIC)])
    except ValueError:
        return None


#: Plaintext of an OCC EXIT message (occ.c OCC_EXIT): "I am leaving", sent by clients
#: without cc-exit and by us on shutdown to such clients.
OCC_EXIT_PAYLOAD = OCC_MAGIC + bytes((OccOpcode.EXIT,))
