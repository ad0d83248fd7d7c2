"""IKEv2 wire codec: the 28-byte header, payload chains and whole messages (RFC 7296 §3).

Payload bodies live in ``payloads.py`` and are re-exported here. Reading is bounded and in
cost order: ``peek_header`` checks size, version and length with one ``unpack``;
``scan_payloads`` walks the generic headers (at most ``MAX_PAYLOADS``) without decoding a
body, so the caller can check SPIs, exchange and critical bits before anything is built;
``decode_payloads`` then decodes the bodies of that one scan. Every reader raises
``MalformedMessage`` (a ValueError) on any inconsistency, so a session turns peer garbage
into one counted drop; ``push_*`` functions append to a ``Buffer``. Whole messages are built
with ``encode_message``; the SK payload (§3.14) is sealed/opened through the small
``SkProtector`` protocol that ``crypto.py`` implements, so this module holds no key material.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple, Protocol, TypeVar

from sslvpn.net.buffer import Buffer

from .constants import (
    GENERIC_PAYLOAD_HEADER_LENGTH,
    IKE_HEADER_LENGTH,
    IKE_VERSION,
    MAX_MESSAGE_LENGTH,
    MAX_PAYLOADS,
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
    OversizeMessage,
    Payload,
    Proposal,
    SaPayload,
    SkfPayload,
    SkPayload,
    TooManyPayloads,
    Transform,
    TsPayload,
    UnknownPayload,
    VendorPayload,
    payload_type,
    pull_body,
    push_body,
)

_HEADER = struct.Struct("!8s8sBBBBII")
_GENERIC_HEADER = struct.Struct("!BBH")
KNOWN_PAYLOAD_TYPES = frozenset(PayloadType) - {PayloadType.NONE}
_NONE, _SK = int(PayloadType.NONE), int(PayloadType.SK)  # plain ints: a hot loop reads them
_SKF = int(PayloadType.SKF)
_SKF_FIELDS = struct.Struct("!HH")  # Fragment Number, Total Fragments (RFC 7383 §2.5)

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


def peek_header(data: bytes) -> IkeHeader:
    """The header of a whole IKE message after the cheap checks (size, version, length).

    Runs before any payload is looked at, so an oversized or mis-framed datagram costs one
    ``unpack`` (RFC 7296 §3.1: the length field covers the whole message).
    """
    if len(data) > MAX_MESSAGE_LENGTH:
        raise OversizeMessage(f"IKE message of {len(data)} bytes")
    if len(data) < IKE_HEADER_LENGTH:
        raise MalformedMessage("shorter than the IKE header")
    spi_i, spi_r, next_payload, version, exchange, flags, message_id, length = (
        _HEADER.unpack_from(data)
    )
    if version >> 4 != IKE_VERSION >> 4:
        raise MalformedMessage(f"IKE major version {version >> 4}")
    if length != len(data):
        raise MalformedMessage(f"IKE length {length} but datagram has {len(data)}")
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


class PayloadSpan(NamedTuple):
    """One payload found by ``scan_payloads``: its type and where its body lies in the data."""

    type: int
    next_type: int  # for SK: the type of the first payload inside
    critical: bool
    start: int  # body offset (the 4-byte generic header precedes it)
    end: int


def scan_payloads(data: bytes, offset: int, first: int) -> list[PayloadSpan]:
    """Walk the generic headers of a chain (RFC 7296 §3.2) without decoding any body.

    Bounded: more than ``MAX_PAYLOADS`` payloads is refused before the next one is looked
    at, so a datagram of hundreds of empty payloads costs a few microseconds. An SK payload
    must be last; its body stays sealed.
    """
    found: list[tuple[int, int, bool, int, int]] = []  # PayloadSpan fields, made at the end
    size = len(data)
    ptype = first
    while ptype != _NONE:
        if len(found) == MAX_PAYLOADS:
            raise TooManyPayloads(f"more than {MAX_PAYLOADS} payloads")
        if offset + GENERIC_PAYLOAD_HEADER_LENGTH > size:
            raise MalformedMessage("payload header truncated")
        next_type, flags, length = _GENERIC_HEADER.unpack_from(data, offset)
        end = offset + length
        if length < GENERIC_PAYLOAD_HEADER_LENGTH or end > size:
            raise MalformedMessage(f"payload length {length} at offset {offset}")
        found.append((ptype, next_type, flags >= 0x80, offset + GENERIC_PAYLOAD_HEADER_LENGTH,
                      end))
        offset = end
        if ptype in (_SK, _SKF):  # always the last payload
            break
        ptype = next_type
    if offset != size:
        raise MalformedMessage("bytes after the last payload")
    return [PayloadSpan._make(span) for span in found]


def decode_payloads(data: bytes, spans: list[PayloadSpan]) -> list[Payload]:
    """The payload objects of a scanned chain (an SK payload stays sealed)."""
    payloads: list[Payload] = []
    try:
        for span in spans:
            if span.type == _SK:
                payloads.append(SkPayload(span.next_type,
                                          span.start - GENERIC_PAYLOAD_HEADER_LENGTH))
            elif span.type == _SKF:
                if span.end - span.start < _SKF_FIELDS.size:
                    raise MalformedMessage("SKF payload truncated")
                number, total = _SKF_FIELDS.unpack_from(data, span.start)
                payloads.append(SkfPayload(span.next_type,
                                           span.start - GENERIC_PAYLOAD_HEADER_LENGTH,
                                           number, total))
            else:
                body = Buffer(data[span.start:span.end])
                payloads.append(pull_body(span.type, span.critical, body))
    except MalformedMessage:
        raise
    except ValueError as exc:  # BufferReadError and ipaddress errors
        raise MalformedMessage(str(exc)) from exc
    return payloads


def pull_payloads(data: bytes, first: int) -> list[Payload]:
    """Scan and decode a whole payload chain (a message body or the inside of SK)."""
    return decode_payloads(data, scan_payloads(data, 0, first))


def unsupported_critical(chain: Iterable[PayloadSpan | Payload]) -> int | None:
    """The first payload type we do not know that is marked critical (RFC 7296 §2.5), in a
    scanned or a decoded chain. The critical bit of a type we know is ignored, as the RFC
    requires."""
    for item in chain:
        if (isinstance(item, PayloadSpan | UnknownPayload) and item.critical
                and item.type not in KNOWN_PAYLOAD_TYPES):
            return item.type
    return None


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


def pull_message(data: bytes, header: IkeHeader | None = None) -> Message:
    """Parse header (unless the caller peeked it already) and payload chain; an SK payload
    stays sealed (see ``open_sk``)."""
    if header is None:
        header = peek_header(data)
    spans = scan_payloads(data, IKE_HEADER_LENGTH, header.next_payload)
    return Message(header, decode_payloads(data, spans))


def open_sk(data: bytes, sk: SkPayload, protector: SkProtector) -> bytes | None:
    """Decrypt the SK payload of ``data`` to its inner payload bytes; None when the ICV
    does not verify (parse them with ``pull_payloads(inner, sk.first_inner)``)."""
    start = sk.offset + GENERIC_PAYLOAD_HEADER_LENGTH
    return protector.open(data[:start], data[start:])


def int_auth_octets(data: bytes, inner: bytes) -> bytes:
    """IntAuth_A | IntAuth_P of an IKE_INTERMEDIATE message whose only outer payload is SK
    (RFC 9242 §3.3.2): header and SK header with lengths as if SK held only ``inner``."""
    body = GENERIC_PAYLOAD_HEADER_LENGTH + len(inner)
    return (data[:24] + (IKE_HEADER_LENGTH + body).to_bytes(4, "big") + data[28:30]
            + body.to_bytes(2, "big") + inner)


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
    "KNOWN_PAYLOAD_TYPES",
    "MalformedMessage",
    "Message",
    "NoncePayload",
    "NotifyPayload",
    "OversizeMessage",
    "Payload",
    "PayloadSpan",
    "Proposal",
    "SaPayload",
    "SkfPayload",
    "SkPayload",
    "SkProtector",
    "TooManyPayloads",
    "Transform",
    "TsPayload",
    "UnknownPayload",
    "VendorPayload",
    "decode_payloads",
    "encode_message",
    "payload_type",
    "find",
    "notifies",
    "open_sk",
    "peek_header",
    "pull_message",
    "pull_payloads",
    "push_payloads",
    "scan_payloads",
    "unsupported_critical",
]
