"""IKEv2 wire codec: the 28-byte header, payload chains and whole messages (RFC 7296 §3).

Payload bodies live in ``payloads.py`` and are re-exported here. ``pull_*`` functions read
from a ``Buffer`` and raise ``MalformedMessage`` (a ValueError) on any inconsistency, so a
session turns peer garbage into one counted drop; ``push_*`` functions append to a
``Buffer``. Whole messages are built with ``encode_message``; the SK payload (§3.14) is
sealed/opened through the small ``SkProtector`` protocol that ``crypto.py`` implements, so
this module holds no key material.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, TypeVar

from sslvpn.net.buffer import Buffer, BufferReadError

from .constants import (
    GENERIC_PAYLOAD_HEADER_LENGTH,
    IKE_HEADER_LENGTH,
    IKE_VERSION,
    HeaderFlag,
    PayloadType,
)
from .payloads import (
    AuthPayload,
    DeletePayload,
    IdPayload,
    KePayload,
    MalformedMessage,
    NoncePayload,
    NotifyPayload,
    Payload,
    Proposal,
    SaPayload,
    SkPayload,
    Transform,
    TsPayload,
    UnknownPayload,
    VendorPayload,
    payload_type,
    pull_body,
    push_body,
)

# -- header -------------------------------------------------------------------------------


@dataclass
class IkeHeader:
    """RFC 7296 §3.1. ``length`` is filled in by ``encode_message``."""

    spi_i: bytes
    spi_r: bytes
    next_payload: int
    exchange: int
    flags: int
    message_id: int
    length: int = 0

    @property
    def is_response(self) -> bool:
        return bool(self.flags & HeaderFlag.RESPONSE)

    @property
    def from_initiator(self) -> bool:
        return bool(self.flags & HeaderFlag.INITIATOR)


def pull_header(buf: Buffer) -> IkeHeader:
    spi_i = buf.pull_bytes(8)
    spi_r = buf.pull_bytes(8)
    next_payload = buf.pull_uint8()
    version = buf.pull_uint8()
    exchange = buf.pull_uint8()
    flags = buf.pull_uint8()
    message_id = buf.pull_uint32()
    length = buf.pull_uint32()
    if version >> 4 != IKE_VERSION >> 4:
        raise MalformedMessage(f"IKE major version {version >> 4}")
    if length < IKE_HEADER_LENGTH:
        raise MalformedMessage("IKE length shorter than the header")
    return IkeHeader(spi_i, spi_r, next_payload, exchange, flags, message_id, length)


def push_header(buf: Buffer, header: IkeHeader) -> None:
    buf.push_bytes(header.spi_i)
    buf.push_bytes(header.spi_r)
    buf.push_uint8(header.next_payload)
    buf.push_uint8(IKE_VERSION)
    buf.push_uint8(header.exchange)
    buf.push_uint8(header.flags)
    buf.push_uint32(header.message_id)
    buf.push_uint32(header.length)


# -- payload chains ---------------------------------------------------------------------------


def pull_payloads(buf: Buffer, first: int, base_offset: int = 0) -> list[Payload]:
    """Walk a chain of generic headers; an SK payload must be last and is left sealed."""
    payloads: list[Payload] = []
    ptype = first
    try:
        while ptype != PayloadType.NONE:
            offset = base_offset + buf.tell()
            next_type = buf.pull_uint8()
            critical = bool(buf.pull_uint8() & 0x80)
            length = buf.pull_uint16()
            if length < GENERIC_PAYLOAD_HEADER_LENGTH:
                raise MalformedMessage("payload length below header size")
            if ptype == PayloadType.SK:
                payloads.append(SkPayload(next_type, offset))
                buf.pull_bytes(length - 4)
                if not buf.eof():
                    raise MalformedMessage("SK payload is not the last payload")
                return payloads
            body = Buffer(buf.pull_bytes(length - 4))
            payloads.append(pull_body(ptype, critical, body))
            ptype = next_type
    except MalformedMessage:
        raise
    except ValueError as exc:  # BufferReadError and ipaddress errors
        raise MalformedMessage(str(exc)) from exc
    if not buf.eof():
        raise MalformedMessage("bytes after the last payload")
    return payloads


def push_payloads(payloads: list[Payload]) -> tuple[int, bytes]:
    """Encode a chain; returns (type of the first payload, bytes)."""
    bodies: list[bytes] = []
    for payload in payloads:
        writer = Buffer()
        push_body(writer, payload)
        bodies.append(writer.getvalue())
    out = Buffer()
    for i, body in enumerate(bodies):
        out.push_uint8(payload_type(payloads[i + 1]) if i + 1 < len(payloads) else 0)
        payload = payloads[i]
        critical = isinstance(payload, UnknownPayload) and payload.critical
        out.push_uint8(0x80 if critical else 0)
        out.push_uint16(len(body) + 4)
        out.push_bytes(body)
    first = payload_type(payloads[0]) if payloads else PayloadType.NONE
    return first, out.getvalue()


# -- whole messages ---------------------------------------------------------------------------


class SkProtector(Protocol):
    """What ``crypto.py`` provides to seal and open SK payloads (RFC 7296 §3.14, RFC 5282)."""

    def sealed_length(self, inner_length: int) -> int:
        """Bytes of IV + ciphertext (incl. padding and pad length) + ICV."""
        ...

    def seal(self, aad: bytes, inner: bytes) -> bytes:
        """Encrypt ``inner`` (padding added here); ``aad`` is header + SK generic header."""
        ...

    def open(self, aad: bytes, body: bytes) -> bytes | None:
        """Verify and decrypt; returns the inner payload bytes, None if not authentic."""
        ...


@dataclass
class Message:
    header: IkeHeader
    payloads: list[Payload]


def pull_message(data: bytes) -> Message:
    """Parse header and payload chain; an SK payload stays sealed (see ``open_sk``)."""
    buf = Buffer(data)
    try:
        header = pull_header(buf)
    except BufferReadError as exc:
        raise MalformedMessage(str(exc)) from exc
    if header.length != len(data):
        raise MalformedMessage(f"IKE length {header.length} but datagram has {len(data)}")
    payloads = pull_payloads(buf, header.next_payload)
    return Message(header, payloads)


def open_sk(data: bytes, sk: SkPayload, protector: SkProtector) -> list[Payload] | None:
    """Decrypt the SK payload of ``data``; None when the ICV does not verify."""
    start = sk.offset + GENERIC_PAYLOAD_HEADER_LENGTH
    inner = protector.open(data[:start], data[start:])
    if inner is None:
        return None
    return pull_payloads(Buffer(inner), sk.first_inner)


def encode_message(
    header: IkeHeader, payloads: list[Payload], protector: SkProtector | None = None
) -> bytes:
    """Serialise a message; with a protector, ``payloads`` go inside one SK payload."""
    first, body = push_payloads(payloads)
    if protector is None:
        header.next_payload = first
        header.length = IKE_HEADER_LENGTH + len(body)
        out = Buffer()
        push_header(out, header)
        out.push_bytes(body)
        return out.getvalue()
    sealed_len = protector.sealed_length(len(body))
    header.next_payload = PayloadType.SK
    header.length = IKE_HEADER_LENGTH + GENERIC_PAYLOAD_HEADER_LENGTH + sealed_len
    aad = Buffer()
    push_header(aad, header)
    aad.push_uint8(first)
    aad.push_uint8(0)
    aad.push_uint16(GENERIC_PAYLOAD_HEADER_LENGTH + sealed_len)
    prefix = aad.getvalue()
    return prefix + protector.seal(prefix, body)


_P = TypeVar("_P")


def find(payloads: list[Payload], kind: type[_P]) -> list[_P]:
    """All payloads of one class, in order."""
    return [p for p in payloads if isinstance(p, kind)]


def notifies(payloads: list[Payload]) -> dict[int, NotifyPayload]:
    """Notify payloads by type (the first of each type wins)."""
    found: dict[int, NotifyPayload] = {}
    for p in payloads:
        if isinstance(p, NotifyPayload):
            found.setdefault(p.notify_type, p)
    return found


__all__ = [
    "AuthPayload",
    "DeletePayload",
    "IdPayload",
    "IkeHeader",
    "KePayload",
    "MalformedMessage",
    "Message",
    "NoncePayload",
    "NotifyPayload",
    "Payload",
    "Proposal",
    "SaPayload",
    "SkPayload",
    "SkProtector",
    "Transform",
    "TsPayload",
    "UnknownPayload",
    "VendorPayload",
    "encode_message",
    "payload_type",
    "find",
    "notifies",
    "open_sk",
    "pull_message",
    "pull_payloads",
    "push_payloads",
]
