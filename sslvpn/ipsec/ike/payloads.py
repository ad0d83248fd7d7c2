"""IKEv2 payload bodies (RFC 7296 §3.2-3.13): dataclasses and their pull/push codecs.

The SA payload's proposal/transform/attribute substructures (§3.3), traffic selectors
(§3.13.1) and the simple payloads. ``messages.py`` chains them behind generic headers and
frames whole messages; it re-exports every name defined here.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from sslvpn.net.buffer import Buffer

from .constants import ATTRIBUTE_TV_FLAG, PayloadType, TransformAttribute, TransformType, TsType
from .traffic_selectors import TrafficSelector


class MalformedMessage(ValueError):
    """The peer's bytes do not form a valid IKEv2 message (a counted drop)."""

    reason = "malformed"  # the drop counter it is counted under


class OversizeMessage(MalformedMessage):
    """Longer than we accept before looking inside (``MAX_MESSAGE_LENGTH``)."""

    reason = "oversize"


class TooManyPayloads(MalformedMessage):
    """More payloads in one chain than any real peer sends (``MAX_PAYLOADS``)."""

    reason = "too-many-payloads"


# -- payload bodies -------------------------------------------------------------------------


@dataclass(frozen=True)
class Transform:
    """§3.3.2; ``key_length`` in bits from the Key Length attribute (§3.3.5), if any."""

    type: int
    id: int
    key_length: int | None = None
    unknown_attributes: bool = False


@dataclass
class Proposal:
    """§3.3.1. ``spi`` is the sender's inbound SPI (empty in IKE_SA_INIT)."""

    number: int
    protocol: int
    spi: bytes
    transforms: list[Transform]

    def of_type(self, transform_type: TransformType) -> list[Transform]:
        return [t for t in self.transforms if t.type == transform_type]


@dataclass
class SaPayload:
    proposals: list[Proposal]


@dataclass
class KePayload:
    group: int
    data: bytes = field(repr=False)


@dataclass
class NoncePayload:
    data: bytes


@dataclass
class IdPayload:
    """IDi (``responder=False``) or IDr; ``body`` is ID' of §2.15 (type, reserved, data)."""

    responder: bool
    id_type: int
    data: bytes

    @property
    def body(self) -> bytes:
        return bytes([self.id_type, 0, 0, 0]) + self.data


@dataclass
class AuthPayload:
    method: int
    data: bytes = field(repr=False)


@dataclass
class NotifyPayload:
    notify_type: int
    data: bytes = b""
    protocol: int = 0
    spi: bytes = b""


@dataclass
class DeletePayload:
    protocol: int
    spis: list[bytes]


@dataclass
class TsPayload:
    """TSi (``responder=False``) or TSr."""

    responder: bool
    selectors: list[TrafficSelector]


@dataclass
class VendorPayload:
    data: bytes


@dataclass
class UnknownPayload:
    type: int
    critical: bool
    body: bytes


@dataclass
class SkPayload:
    """The encrypted payload as received: opened later by ``open_sk``."""

    first_inner: int
    offset: int  # offset of the generic header within the message


@dataclass(frozen=True)
class SkfPayload:
    """One Encrypted Fragment payload as received (RFC 7383 §2.5): opened and reassembled
    by ``fragments.py``. ``first_inner`` is meaningful in fragment 1 only."""

    first_inner: int
    offset: int  # offset of the generic header within the message
    number: int
    total: int


Payload = (
    SaPayload
    | KePayload
    | NoncePayload
    | IdPayload
    | AuthPayload
    | NotifyPayload
    | DeletePayload
    | TsPayload
    | VendorPayload
    | UnknownPayload
    | SkPayload
    | SkfPayload
)


# -- SA --------------------------------------------------------------------------------------


def _pull_transform(buf: Buffer) -> Transform:
    ttype = buf.pull_uint8()
    buf.pull_uint8()
    tid = buf.pull_uint16()
    key_length: int | None = None
    unknown = False
    while not buf.eof():
        attr = buf.pull_uint16()
        if attr & ATTRIBUTE_TV_FLAG:
            value = buf.pull_uint16()
            if attr & ~ATTRIBUTE_TV_FLAG == TransformAttribute.KEY_LENGTH:
                key_length = value
            else:
                unknown = True
        else:
            buf.pull_bytes(buf.pull_uint16())
            unknown = True
    return Transform(ttype, tid, key_length, unknown)


def _pull_proposal(buf: Buffer) -> Proposal:
    number = buf.pull_uint8()
    protocol = buf.pull_uint8()
    spi_size = buf.pull_uint8()
    count = buf.pull_uint8()
    spi = buf.pull_bytes(spi_size)
    transforms = []
    for i in range(count):
        last = buf.pull_uint8()
        buf.pull_uint8()
        length = buf.pull_uint16()
        if length < 8:
            raise MalformedMessage("transform too short")
        transforms.append(_pull_transform(Buffer(buf.pull_bytes(length - 4))))
        if (last == 0) != (i == count - 1):
            raise MalformedMessage("transform count disagrees with the last flag")
    if not buf.eof():
        raise MalformedMessage("trailing bytes in proposal")
    return Proposal(number, protocol, spi, transforms)


def pull_sa(buf: Buffer) -> SaPayload:
    proposals = []
    while not buf.eof():
        last = buf.pull_uint8()
        buf.pull_uint8()
        length = buf.pull_uint16()
        if length < 8:
            raise MalformedMessage("proposal too short")
        proposals.append(_pull_proposal(Buffer(buf.pull_bytes(length - 4))))
        if last == 0:
            break
    if not buf.eof() or not proposals:
        raise MalformedMessage("SA payload framing")
    return SaPayload(proposals)


def push_sa(buf: Buffer, sa: SaPayload) -> None:
    for pi, proposal in enumerate(sa.proposals):
        body = Buffer()
        for ti, t in enumerate(proposal.transforms):
            attrs = b""
            if t.key_length is not None:
                attrs = (
                    (ATTRIBUTE_TV_FLAG | TransformAttribute.KEY_LENGTH).to_bytes(2, "big")
                    + t.key_length.to_bytes(2, "big")
                )
            body.push_uint8(0 if ti == len(proposal.transforms) - 1 else 3)
            body.push_uint8(0)
            body.push_uint16(8 + len(attrs))
            body.push_uint8(t.type)
            body.push_uint8(0)
            body.push_uint16(t.id)
            body.push_bytes(attrs)
        transforms = body.getvalue()
        buf.push_uint8(0 if pi == len(sa.proposals) - 1 else 2)
        buf.push_uint8(0)
        buf.push_uint16(8 + len(proposal.spi) + len(transforms))
        buf.push_uint8(proposal.number)
        buf.push_uint8(proposal.protocol)
        buf.push_uint8(len(proposal.spi))
        buf.push_uint8(len(proposal.transforms))
        buf.push_bytes(proposal.spi)
        buf.push_bytes(transforms)


# -- traffic selectors ------------------------------------------------------------------------

_TS_ADDR_LEN = {TsType.IPV4_ADDR_RANGE: 4, TsType.IPV6_ADDR_RANGE: 16}


def pull_ts(buf: Buffer, responder: bool) -> TsPayload:
    count = buf.pull_uint8()
    buf.pull_bytes(3)
    selectors = []
    for _ in range(count):
        ts_type = buf.pull_uint8()
        proto = buf.pull_uint8()
        length = buf.pull_uint16()
        inner = Buffer(buf.pull_bytes(length - 4))
        start_port = inner.pull_uint16()
        end_port = inner.pull_uint16()
        size = _TS_ADDR_LEN.get(ts_type)  # type: ignore[call-overload]
        if size is None or inner.remaining() != 2 * size:
            raise MalformedMessage(f"traffic selector type {ts_type} length {length}")
        start = ipaddress.ip_address(inner.pull_bytes(size))
        end = ipaddress.ip_address(inner.pull_bytes(size))
        selectors.append(TrafficSelector(start, end, proto, start_port, end_port))
    if not buf.eof():
        raise MalformedMessage("trailing bytes in TS payload")
    return TsPayload(responder, selectors)


def push_ts(buf: Buffer, ts: TsPayload) -> None:
    buf.push_uint8(len(ts.selectors))
    buf.push_bytes(b"\x00\x00\x00")
    for sel in ts.selectors:
        packed = sel.start.packed
        buf.push_uint8(sel.ts_type)
        buf.push_uint8(sel.ip_protocol)
        buf.push_uint16(8 + 2 * len(packed))
        buf.push_uint16(sel.start_port)
        buf.push_uint16(sel.end_port)
        buf.push_bytes(packed)
        buf.push_bytes(sel.end.packed)


# -- the simple payloads -------------------------------------------------------------------


def pull_body(ptype: int, critical: bool, buf: Buffer) -> Payload:
    if ptype == PayloadType.SA:
        return pull_sa(buf)
    if ptype == PayloadType.KE:
        group = buf.pull_uint16()
        buf.pull_uint16()
        return KePayload(group, buf.pull_rest())
    if ptype == PayloadType.NONCE:
        return NoncePayload(buf.pull_rest())
    if ptype in (PayloadType.IDI, PayloadType.IDR):
        id_type = buf.pull_uint8()
        buf.pull_bytes(3)
        return IdPayload(ptype == PayloadType.IDR, id_type, buf.pull_rest())
    if ptype == PayloadType.AUTH:
        method = buf.pull_uint8()
        buf.pull_bytes(3)
        return AuthPayload(method, buf.pull_rest())
    if ptype == PayloadType.NOTIFY:
        protocol = buf.pull_uint8()
        spi_size = buf.pull_uint8()
        ntype = buf.pull_uint16()
        spi = buf.pull_bytes(spi_size)
        return NotifyPayload(ntype, buf.pull_rest(), protocol, spi)
    if ptype == PayloadType.DELETE:
        protocol = buf.pull_uint8()
        spi_size = buf.pull_uint8()
        count = buf.pull_uint16()
        spis = [buf.pull_bytes(spi_size) for _ in range(count)]
        if not buf.eof():
            raise MalformedMessage("trailing bytes in DELETE")
        return DeletePayload(protocol, spis)
    if ptype in (PayloadType.TSI, PayloadType.TSR):
        return pull_ts(buf, ptype == PayloadType.TSR)
    if ptype == PayloadType.VENDOR:
        return VendorPayload(buf.pull_rest())
    return UnknownPayload(ptype, critical, buf.pull_rest())


def payload_type(payload: Payload) -> int:
    """The generic-header type number of a payload object."""
    if isinstance(payload, IdPayload):
        return PayloadType.IDR if payload.responder else PayloadType.IDI
    if isinstance(payload, TsPayload):
        return PayloadType.TSR if payload.responder else PayloadType.TSI
    if isinstance(payload, UnknownPayload):
        return payload.type
    return _TYPE_OF[type(payload)]


_TYPE_OF: dict[type, int] = {
    SaPayload: PayloadType.SA,
    KePayload: PayloadType.KE,
    NoncePayload: PayloadType.NONCE,
    AuthPayload: PayloadType.AUTH,
    NotifyPayload: PayloadType.NOTIFY,
    DeletePayload: PayloadType.DELETE,
    VendorPayload: PayloadType.VENDOR,
    SkPayload: PayloadType.SK,
    SkfPayload: PayloadType.SKF,
}


def push_body(buf: Buffer, payload: Payload) -> None:
    if isinstance(payload, SaPayload):
        push_sa(buf, payload)
    elif isinstance(payload, KePayload):
        buf.push_uint16(payload.group)
        buf.push_uint16(0)
        buf.push_bytes(payload.data)
    elif isinstance(payload, NoncePayload | VendorPayload):
        buf.push_bytes(payload.data)
    elif isinstance(payload, IdPayload):
        buf.push_bytes(payload.body)
    elif isinstance(payload, AuthPayload):
        buf.push_bytes(bytes([payload.method, 0, 0, 0]) + payload.data)
    elif isinstance(payload, NotifyPayload):
        buf.push_uint8(payload.protocol)
        buf.push_uint8(len(payload.spi))
        buf.push_uint16(payload.notify_type)
        buf.push_bytes(payload.spi + payload.data)
    elif isinstance(payload, DeletePayload):
        buf.push_uint8(payload.protocol)
        buf.push_uint8(len(payload.spis[0]) if payload.spis else 0)
        buf.push_uint16(len(payload.spis))
        buf.push_bytes(b"".join(payload.spis))
    elif isinstance(payload, TsPayload):
        push_ts(buf, payload)
    elif isinstance(payload, UnknownPayload):
        buf.push_bytes(payload.body)
    else:
        raise TypeError(f"cannot encode {type(payload).__name__} here")
