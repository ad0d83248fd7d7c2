"""One IKE SA's cryptographic context and message-ID windows (RFC 7296 §2.1-2.3).

An ``IkeContext`` owns the SPI pair, the role, the SK_* keys and protectors, our request
counter with the one outstanding request (window size 1) and its retransmission schedule,
and the peer's expected request ID with the cached last response. After an IKE rekey the
``IkeSa`` keeps two contexts (old and new) until the old one is deleted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .child import ChildSa
from .constants import ExchangeType, HeaderFlag
from .crypto import DhExchange, IkeKeys, Protector, Rand, make_protectors
from .fragments import Reassembly, open_fragment, seal_fragments
from .messages import (
    IkeHeader,
    Message,
    Payload,
    SkfPayload,
    encode_message,
    int_auth_octets,
    open_sk,
    pull_payloads,
    push_payloads,
)
from .messages import SkPayload as _Sk
from .proposals import Suite

# decrypt()'s answer for an authentic fragment of a message that is not whole yet
INCOMPLETE: list[Payload] = []

ZERO_SPI = bytes(8)


@dataclass
class RequestState:
    """What we must remember about our own request to process its response."""

    spi: bytes = b""  # the SPI we allocated (new CHILD_SA or new IKE SA)
    nonce: bytes = field(default=b"", repr=False)
    dh: DhExchange | None = None
    child: ChildSa | None = None  # the CHILD_SA being rekeyed or deleted


@dataclass
class PendingRequest:
    """Our outstanding request: resent with back-off until answered or given up."""

    message_id: int
    exchange: int
    data: bytes
    purpose: str
    state: RequestState = field(default_factory=RequestState)
    tries: int = 1
    next_send: float = 0.0
    sent_at: float = 0.0  # first sent: an established SA gives up ``dpd_timeout`` later
    wire: list[bytes] = field(default_factory=list)  # datagrams: the message or its fragments


class IkeContext:
    """SPIs, keys and message-ID state of one IKE SA (old or new during a rekey)."""

    def __init__(self, spi_i: bytes, spi_r: bytes, initiator: bool) -> None:
        self.spi_i = spi_i
        self.spi_r = spi_r
        self.initiator = initiator  # we are the original initiator of this IKE SA
        self.suite: Suite | None = None
        self.keys: IkeKeys | None = None
        self._out: Protector | None = None
        self._in: Protector | None = None
        # responder during IKE_INTERMEDIATE: the inbound keys before the last additional key
        # exchange, to recognise a retransmitted request (answered from the cache)
        self._previous_in: Protector | None = None
        self.next_request_id = 0
        self.peer_next_id = 0
        self.pending: PendingRequest | None = None
        self.cached_response: tuple[int, bytes] | None = None
        self.cached_wire: list[bytes] = []  # its datagrams (fragments, RFC 7383)
        self.reassembly: Reassembly | None = None  # the peer's fragmented message
        # IntAuth_A | IntAuth_P of the last message decrypted (RFC 9242: IKE_INTERMEDIATE)
        self.last_int_auth_octets = b""

    def __repr__(self) -> str:
        return f"IkeContext(spi_i={self.spi_i.hex()}, spi_r={self.spi_r.hex()})"

    @property
    def local_spi(self) -> bytes:
        return self.spi_i if self.initiator else self.spi_r

    @property
    def remote_spi(self) -> bytes:
        return self.spi_r if self.initiator else self.spi_i

    def install_keys(self, suite: Suite, keys: IkeKeys, rand: Rand, *,
                     keep_previous: bool = False) -> None:
        self.suite = suite
        self.keys = keys
        self._previous_in = self._in if keep_previous else None
        self._out, self._in = make_protectors(suite.encr, keys, self.initiator, rand,
                                                suite.integ)

    def forget_previous_keys(self) -> None:
        """IKE_AUTH arrived: no IKE_INTERMEDIATE request can be retransmitted any more."""
        self._previous_in = None

    def matches(self, header: IkeHeader) -> bool:
        """Is this message for this SA? (SPIr may still be zero in IKE_SA_INIT.)"""
        if header.spi_i != self.spi_i:
            return False
        if header.spi_r == self.spi_r:
            return True
        return header.exchange == ExchangeType.IKE_SA_INIT and (
            header.spi_r == ZERO_SPI or self.spi_r == ZERO_SPI
        )

    def encode(self, exchange: int, message_id: int, response: bool,
               payloads: list[Payload]) -> bytes:
        """A message from us; encrypted whenever keys exist (everything after INIT)."""
        flags = (HeaderFlag.INITIATOR if self.initiator else 0) | (
            HeaderFlag.RESPONSE if response else 0
        )
        header = IkeHeader(self.spi_i, self.spi_r, 0, exchange, int(flags), message_id)
        return encode_message(header, payloads, self._out)

    def encode_fragments(self, exchange: int, message_id: int, response: bool,
                         payloads: list[Payload], size: int) -> list[bytes]:
        """The same message as SKF fragments of at most ``size`` bytes (RFC 7383)."""
        assert self._out is not None  # noqa: S101 - only called after encode() sealed
        flags = (HeaderFlag.INITIATOR if self.initiator else 0) | (
            HeaderFlag.RESPONSE if response else 0
        )
        header = IkeHeader(self.spi_i, self.spi_r, 0, exchange, int(flags), message_id)
        first, body = push_payloads(payloads)
        return seal_fragments(header, first, body, self._out, size)

    def decrypt(self, data: bytes, message: Message) -> list[Payload] | None:
        """The inner payloads of an SK message, or None if it is not authentic;
        ``INCOMPLETE`` for an authentic fragment of a message not yet whole."""
        if self._in is None or not message.payloads:
            return None
        sk = message.payloads[-1]
        if isinstance(sk, SkfPayload) and len(message.payloads) == 1:
            return self._fragment(data, message.header, sk)
        if not isinstance(sk, _Sk) or len(message.payloads) != 1:
            return None
        inner = open_sk(data, sk, self._in)
        header = message.header
        if (inner is None and self._previous_in is not None and not header.is_response
                and header.message_id == self.peer_next_id - 1):
            inner = open_sk(data, sk, self._previous_in)
        if inner is None:
            return None
        payloads = pull_payloads(inner, sk.first_inner)
        if header.exchange == ExchangeType.IKE_INTERMEDIATE:
            self.last_int_auth_octets = int_auth_octets(data, inner)
        return payloads

    def _fragment(self, data: bytes, header: IkeHeader, skf: SkfPayload,
                  ) -> list[Payload] | None:
        """Verify one fragment and keep it (RFC 7383 §2.6.1); the whole message's payloads
        once every fragment is in. A fragment of a retransmitted request (the one we
        already answered) needs no reassembly: its first fragment gets the answer again."""
        assert self._in is not None  # noqa: S101 - checked by decrypt
        plain = open_fragment(data, skf, self._in)
        if plain is None:
            return None
        if not header.is_response and header.message_id == self.peer_next_id - 1:
            return [] if skf.number == 1 else INCOMPLETE
        current = self.reassembly
        if (current is None or current.message_id != header.message_id
                or current.response != header.is_response or skf.total > current.total):
            current = self.reassembly = Reassembly(header.message_id, header.is_response,
                                                   skf.total)
        elif skf.total < current.total:
            return INCOMPLETE  # §2.6.1: a fragment of an older, larger split
        whole = current.add(data, skf, plain)
        if whole is None:
            return INCOMPLETE
        self.reassembly = None
        payloads = pull_payloads(whole, current.first_inner)
        if header.exchange == ExchangeType.IKE_INTERMEDIATE:
            self.last_int_auth_octets = int_auth_octets(current.head, whole)
        return payloads

    @staticmethod
    def sent_int_auth_octets(data: bytes, payloads: list[Payload]) -> bytes:
        """IntAuth_A | IntAuth_P of a message we encoded from ``payloads``."""
        return int_auth_octets(data, push_payloads(payloads)[1])
