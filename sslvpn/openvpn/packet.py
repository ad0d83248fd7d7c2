"""Codec for the unwrapped OpenVPN packet: control packets and data-packet headers.

A control packet on the wire (without tls-auth/tls-crypt) is
``op|kid, own session id, ack count, acks (u32 each), peer session id (iff acks),
message id (absent in P_ACK_V1), payload`` and, for the tls-crypt-v2 opcodes, a wrapped
client key (WKc) at the tail whose trailing u16 length counts itself (reliable.c
reliable_ack_parse/reliable_ack_write, ssl_pkt.c write_control_auth, tls_crypt.c). With
tls-crypt everything after the session id is encrypted, so the encoder is split in header
(``encode_control_header``) and body (``encode_control_body``) for ``tls_wrap`` to reuse;
``decode_control`` reads both in one pass over plain slices (every handshake datagram goes
through it, so it avoids per-field calls). Data packets only get their header parsed here (ssl.c
tls_prepend_opcode_v1/_v2); their crypto payload belongs to ``data_channel``.

Every decode failure is a ``BufferReadError`` (``MalformedPacket`` for bad values).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from sslvpn.net.buffer import Buffer, BufferReadError
from sslvpn.openvpn.constants import (
    CONTROL_OPCODES,
    DATA_OPCODES,
    MAX_ACKS_PER_PACKET,
    P_KEY_ID_MASK,
    P_OPCODE_SHIFT,
    PEER_ID_UNDEF,
    SESSION_ID_LEN,
    TLS_CRYPT_V2_LEN_FIELD,
    TLS_CRYPT_V2_MAX_WKC_LEN,
    TLS_CRYPT_V2_MIN_WKC_LEN,
    WKC_OPCODES,
    Opcode,
)

_ZERO_SID = bytes(SESSION_ID_LEN)
_U32 = struct.Struct("!I")


class MalformedPacket(BufferReadError):
    """The peer's bytes have the right length but a value the protocol forbids."""


@dataclass(frozen=True, slots=True)
class ControlPacket:
    """One control-channel packet, already unwrapped (no tls-auth/tls-crypt fields).

    ``message_id`` is None exactly for P_ACK_V1; ``remote_session_id`` is present exactly
    when ``acks`` is non-empty; ``wkc`` is present exactly for HARD_RESET_CLIENT_V3 and
    CONTROL_WKC_V1 (and then includes its trailing length field).
    """

    opcode: Opcode
    key_id: int
    session_id: bytes
    acks: tuple[int, ...] = ()
    remote_session_id: bytes | None = None
    message_id: int | None = None
    payload: bytes = b""
    wkc: bytes | None = None


@dataclass(frozen=True, slots=True)
class DataHeader:
    """P_DATA_V1/V2 header; ``peer_id`` is None for V1. ``length`` is its size in bytes."""

    opcode: Opcode
    key_id: int
    peer_id: int | None

    @property
    def length(self) -> int:
        return 4 if self.opcode is Opcode.DATA_V2 else 1


# -- first byte ----------------------------------------------------------------------------
def first_byte(opcode: Opcode, key_id: int) -> int:
    """``(opcode << 3) | key_id`` (ssl_pkt.h)."""
    if not 0 <= key_id <= P_KEY_ID_MASK:
        raise ValueError("key_id must fit in 3 bits")
    return (int(opcode) << P_OPCODE_SHIFT) | key_id


def split_first_byte(value: int) -> tuple[Opcode, int]:
    """Opcode and key_id of a first byte; unknown opcodes raise ``MalformedPacket``."""
    try:
        opcode = Opcode(value >> P_OPCODE_SHIFT)
    except ValueError:
        raise MalformedPacket(f"unknown opcode {value >> P_OPCODE_SHIFT}") from None
    return opcode, value & P_KEY_ID_MASK


def peek_opcode(data: bytes) -> tuple[Opcode, int]:
    """Opcode and key_id of a datagram without decoding the rest (for dispatch)."""
    if not data:
        raise BufferReadError("empty packet")
    return split_first_byte(data[0])


def is_data_opcode(opcode: Opcode) -> bool:
    return opcode in DATA_OPCODES


# -- control packets -----------------------------------------------------------------------
_CONTROL_BY_VALUE = {int(op): op for op in CONTROL_OPCODES}
_ACK_BLOCKS = [struct.Struct(f"!{n}I") for n in range(MAX_ACKS_PER_PACKET + 1)]
_HEADER_LEN = 1 + SESSION_ID_LEN


def _short(what: str) -> BufferReadError:
    return BufferReadError(f"control packet ends inside its {what}")


def decode_control(data: bytes) -> ControlPacket:
    """Decode an unwrapped control packet without WKc (header and body in one pass).

    Everything after the session id is what tls-crypt encrypts; ``tls_wrap`` calls this
    on the reassembled plaintext. Truncation is ``BufferReadError``, forbidden values
    (unknown or data opcode, zero session id, more than 8 ACKs, payload in P_ACK_V1)
    ``MalformedPacket``.
    """
    if not data:
        raise _short("opcode")
    opcode = _CONTROL_BY_VALUE.get(data[0] >> P_OPCODE_SHIFT)
    if opcode is None:
        raise MalformedPacket(f"not a control opcode: {data[0] >> P_OPCODE_SHIFT}")
    sid = data[1:_HEADER_LEN]
    if len(sid) != SESSION_ID_LEN:
        raise _short("session id")
    if sid == _ZERO_SID:
        raise MalformedPacket("zero session id")
    if len(data) <= _HEADER_LEN:
        raise _short("ACK count")
    count = data[_HEADER_LEN]
    if count > MAX_ACKS_PER_PACKET:
        raise MalformedPacket(f"{count} acks in one packet")
    pos = _HEADER_LEN + 1
    acks: tuple[int, ...] = ()
    remote = None
    if count:
        end = pos + 4 * count
        if len(data) < end + SESSION_ID_LEN:
            raise _short("ACK block")
        acks = _ACK_BLOCKS[count].unpack_from(data, pos)
        remote = data[end : end + SESSION_ID_LEN]
        if remote == _ZERO_SID:
            raise MalformedPacket("zero session id")
        pos = end + SESSION_ID_LEN
    key_id = data[0] & P_KEY_ID_MASK
    if opcode is Opcode.ACK_V1:
        if len(data) > pos:
            raise MalformedPacket("payload in P_ACK_V1")
        return ControlPacket(opcode, key_id, sid, acks, remote)
    if len(data) < pos + 4:
        raise _short("message id")
    (message_id,) = _U32.unpack_from(data, pos)
    return ControlPacket(opcode, key_id, sid, acks, remote, message_id, data[pos + 4 :])


def encode_control_header(packet: ControlPacket) -> bytes:
    """First byte and own session id: the part tls-crypt leaves in clear."""
    if packet.opcode not in CONTROL_OPCODES:
        raise ValueError(f"not a control opcode: {packet.opcode.name}")
    _check_sid(packet.session_id)
    return bytes((first_byte(packet.opcode, packet.key_id),)) + packet.session_id


def encode_control_body(packet: ControlPacket) -> bytes:
    """ACK block, message id and payload; validates the packet's invariants."""
    acks = packet.acks
    if len(acks) > MAX_ACKS_PER_PACKET:
        raise ValueError("more than 8 acks in one packet")
    if bool(acks) != (packet.remote_session_id is not None):
        raise ValueError("remote_session_id must be present exactly when acks are")
    if (packet.opcode is Opcode.ACK_V1) != (packet.message_id is None):
        raise ValueError("message_id must be absent exactly for P_ACK_V1")
    parts = [bytes((len(acks),))]
    if packet.remote_session_id is not None:
        _check_sid(packet.remote_session_id)
        parts += (_ACK_BLOCKS[len(acks)].pack(*acks), packet.remote_session_id)
    if packet.message_id is not None:
        parts.append(_U32.pack(packet.message_id))
    parts.append(packet.payload)
    return b"".join(parts)


def split_wkc(data: bytes) -> tuple[bytes, bytes]:
    """Split a tls-crypt-v2 datagram into (packet, WKc) by WKc's trailing u16 length."""
    if len(data) < TLS_CRYPT_V2_LEN_FIELD:
        raise BufferReadError("no room for a WKc length")
    wkc_len = int.from_bytes(data[-TLS_CRYPT_V2_LEN_FIELD:], "big")
    if not TLS_CRYPT_V2_MIN_WKC_LEN <= wkc_len <= TLS_CRYPT_V2_MAX_WKC_LEN:
        raise MalformedPacket(f"WKc length {wkc_len} out of range")
    if wkc_len > len(data) - 1 - SESSION_ID_LEN:
        raise BufferReadError("WKc longer than the packet")
    return data[:-wkc_len], data[-wkc_len:]


def pull_control_packet(data: bytes) -> ControlPacket:
    """Decode an unwrapped control packet (no tls-auth/tls-crypt), WKc included."""
    wkc = None
    if data and (data[0] >> P_OPCODE_SHIFT) in WKC_OPCODES:
        data, wkc = split_wkc(data)
    packet = decode_control(data)
    if wkc is None:
        return packet
    return ControlPacket(
        packet.opcode, packet.key_id, packet.session_id, packet.acks,
        packet.remote_session_id, packet.message_id, packet.payload, wkc,
    )


def push_control_packet(packet: ControlPacket) -> bytes:
    """Encode a control packet without wrapping (also the plaintext layout tls-auth signs)."""
    if (packet.opcode in WKC_OPCODES) != (packet.wkc is not None):
        raise ValueError("wkc must be present exactly for HARD_RESET_CLIENT_V3/CONTROL_WKC_V1")
    return encode_control_header(packet) + encode_control_body(packet) + (packet.wkc or b"")


def _check_sid(sid: bytes) -> None:
    if len(sid) != SESSION_ID_LEN or sid == _ZERO_SID:
        raise ValueError("session id must be 8 non-zero bytes")


# -- data packet headers -------------------------------------------------------------------
def pull_data_header(buf: Buffer) -> DataHeader:
    """P_DATA_V1 (1 byte) or P_DATA_V2 (opcode byte + 24-bit peer-id) header."""
    opcode, key_id = split_first_byte(buf.pull_uint8())
    if opcode is Opcode.DATA_V2:
        return DataHeader(opcode, key_id, buf.pull_uint24())
    if opcode is Opcode.DATA_V1:
        return DataHeader(opcode, key_id, None)
    raise MalformedPacket(f"not a data opcode: {opcode.name}")


def push_data_header(buf: Buffer, header: DataHeader) -> None:
    buf.push_uint8(first_byte(header.opcode, header.key_id))
    if header.opcode is Opcode.DATA_V2:
        peer_id = PEER_ID_UNDEF if header.peer_id is None else header.peer_id
        if not 0 <= peer_id <= PEER_ID_UNDEF:
            raise ValueError("peer_id must fit in 24 bits")
        buf.push_uint24(peer_id)
    elif header.opcode is not Opcode.DATA_V1:
        raise ValueError(f"not a data opcode: {header.opcode.name}")


def data_v2_header(key_id: int, peer_id: int) -> bytes:
    """The 4-byte P_DATA_V2 header as bytes (ssl.c tls_prepend_opcode_v2)."""
    if not 0 <= peer_id <= PEER_ID_UNDEF:
        raise ValueError("peer_id must fit in 24 bits")
    return ((first_byte(Opcode.DATA_V2, key_id) << 24) | peer_id).to_bytes(4, "big")
