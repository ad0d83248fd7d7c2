"""Who may make us keep state: checks on IKE_SA_INIT requests before any SA exists.

Anyone can forge an IKE_SA_INIT from a peer's address; each one answered in full costs a
Diffie-Hellman computation and a half-open SA. So, before the runtime builds a responder
``IkeSa``, ``InitGate.admit`` runs the cheap checks in cost order on one scan of the
datagram (RFC 7296 §2.5, §2.6):

1. payload chain framing and count (``messages.scan_payloads``), no body decoded yet;
2. an unknown payload marked critical: a stateless ``UNSUPPORTED_CRITICAL_PAYLOAD`` answer;
3. a source (address, port) whose authentications kept failing: ignored for a while
   (``AuthThrottle``); only a source that completed an INIT exchange, so one that receives
   at its address, can fail authentication, hence a forged source cannot lock out the peer;
4. COOKIE: once the peer has ``COOKIE_THRESHOLD_IP`` half-open SAs (or all peers together
   ``COOKIE_THRESHOLD``), and for ``COOKIE_CALM_DOWN`` seconds after, an INIT without a
   valid cookie gets a stateless ``N(COOKIE)`` answer;
5. only then the bodies are decoded, for the responder SA.

``HalfOpenTable`` holds one peer's admitted responder SAs until they authenticate, bounded
(the oldest is evicted), so a flood can only ever displace other unauthenticated state.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from . import constants as c
from .constants import ExchangeType, HeaderFlag, NotifyType, PayloadType
from .cookies import CookieJar, stateless_answer
from .crypto import Rand
from .messages import (
    IkeHeader,
    Message,
    NotifyPayload,
    PayloadSpan,
    decode_payloads,
    scan_payloads,
    unsupported_critical,
)
from .window import ZERO_SPI

Address = tuple[str, int]
T = TypeVar("T")


_INIT = int(ExchangeType.IKE_SA_INIT)  # plain ints: read for every datagram of a flood
_ROLE_FLAGS = int(HeaderFlag.INITIATOR | HeaderFlag.RESPONSE)
_REQUEST_FROM_INITIATOR = int(HeaderFlag.INITIATOR)


def is_initial_request(h: IkeHeader) -> bool:
    """Whether a header opens a new IKE SA (checked before a responder IkeSa exists)."""
    return (
        h.exchange == _INIT
        and h.message_id == 0
        and h.flags & _ROLE_FLAGS == _REQUEST_FROM_INITIATOR
        and h.spi_r == ZERO_SPI
        and h.spi_i != ZERO_SPI
    )


@dataclass(frozen=True)
class Admission:
    """The gate's verdict: build a responder SA for ``message``, or count ``drop``.

    ``answer`` is a stateless reply to send back either way (COOKIE, critical payload).
    """

    message: Message | None = None
    answer: bytes | None = None
    drop: str | None = None


class AuthThrottle:
    """Failed authentications per source: a token bucket each, in a bounded table."""

    def __init__(self, burst: int = c.AUTH_FAILURE_BURST,
                 interval: float = c.AUTH_FAILURE_INTERVAL,
                 limit: int = c.MAX_TRACKED_SOURCES) -> None:
        self._burst = burst
        self._interval = interval
        self._limit = limit
        self._tokens: OrderedDict[Address, tuple[float, float]] = OrderedDict()

    def _level(self, source: Address, now: float) -> float:
        tokens, since = self._tokens.get(source, (self._burst, now))
        return min(float(self._burst), tokens + (now - since) / self._interval)

    def failed(self, source: Address, now: float) -> None:
        """One more failed authentication by ``source``."""
        self._tokens[source] = (self._level(source, now) - 1, now)
        self._tokens.move_to_end(source)
        while len(self._tokens) > self._limit:
            self._tokens.popitem(last=False)

    def throttled(self, source: Address, now: float) -> bool:
        """Whether ``source`` must wait before it may try again."""
        if source not in self._tokens:
            return False
        level = self._level(source, now)
        if level >= self._burst:
            del self._tokens[source]  # fully recovered: forget it
        return level < 1


class InitGate:
    """The stateless checks for every IKE_SA_INIT request a service receives (see module).

    ``half_open`` is the number of half-open SAs of all peers, kept by the tables.
    """

    def __init__(
        self,
        *,
        rand: Rand = os.urandom,
        cookie_threshold: int = c.COOKIE_THRESHOLD,
        cookie_threshold_ip: int = c.COOKIE_THRESHOLD_IP,
        calm_down: float = c.COOKIE_CALM_DOWN,
        throttle: AuthThrottle | None = None,
    ) -> None:
        self.jar = CookieJar(rand)
        self.throttle = throttle or AuthThrottle()
        self.half_open = 0
        self._threshold = cookie_threshold
        self._threshold_ip = cookie_threshold_ip
        self._calm_down = calm_down
        self._all_busy_at = float("-inf")
        self._busy_at: OrderedDict[str, float] = OrderedDict()  # address -> last time over

    def cookies_required(self, ip: str, half_open_here: int, now: float) -> bool:
        """Whether an INIT from ``ip`` (which has ``half_open_here`` SAs) needs a cookie."""
        if self.half_open >= self._threshold:
            self._all_busy_at = now
        if half_open_here >= self._threshold_ip:
            self._busy_at[ip] = now
            self._busy_at.move_to_end(ip)
            while len(self._busy_at) > c.MAX_TRACKED_SOURCES:
                self._busy_at.popitem(last=False)
        since = max(self._all_busy_at, self._busy_at.get(ip, float("-inf")))
        return now - since < self._calm_down

    def admit(self, data: bytes, header: IkeHeader, source: Address, half_open_here: int,
              now: float) -> Admission:
        """Decide about one INIT request (``is_initial_request(header)`` holds).

        Raises ``MalformedMessage`` (its ``reason`` is the counter) for a bad chain.
        """
        spans = scan_payloads(data, c.IKE_HEADER_LENGTH, header.next_payload)
        critical = unsupported_critical(spans)
        if critical is not None:
            answer = stateless_answer(header.spi_i, NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD,
                                      bytes([critical]))
            return Admission(answer=answer, drop="unsupported-critical")
        if self.throttle.throttled(source, now):
            return Admission(drop="auth-throttled")
        if self.cookies_required(source[0], half_open_here, now):
            nonce = _nonce(data, spans)
            if nonce is None:
                return Admission(drop="malformed")
            cookie = _presented_cookie(data, spans)
            if cookie is None or not self.jar.valid(cookie, header.spi_i, nonce, source[0], now):
                answer = self.jar.challenge(header.spi_i, nonce, source[0], now)
                return Admission(answer=answer, drop="cookie-required")
        return Admission(message=Message(header, decode_payloads(data, spans)))


def _nonce(data: bytes, spans: list[PayloadSpan]) -> bytes | None:
    for span in spans:
        if span.type == PayloadType.NONCE:
            length = span.end - span.start
            if c.MIN_NONCE_LENGTH <= length <= c.MAX_NONCE_LENGTH:
                return data[span.start:span.end]
            return None
    return None


def _presented_cookie(data: bytes, spans: list[PayloadSpan]) -> bytes | None:
    """The cookie echoed by the initiator: a COOKIE notify, first payload (RFC 7296 §2.6)."""
    if not spans or spans[0].type != PayloadType.NOTIFY:
        return None
    (notify,) = decode_payloads(data, spans[:1])
    if isinstance(notify, NotifyPayload) and notify.notify_type == NotifyType.COOKIE:
        return notify.data
    return None


@dataclass
class HalfOpen(Generic[T]):
    """One admitted responder SA and where its IKE_SA_INIT came from."""

    spi_i: bytes
    sa: T
    source: Address


class HalfOpenTable(Generic[T]):
    """One peer's responder SAs that have not authenticated yet, by the initiator's SPI.

    At most ``limit``: adding one more evicts the oldest. Keeps the gate's total count.
    """

    def __init__(self, gate: InitGate, limit: int = c.MAX_HALF_OPEN_PER_PEER) -> None:
        self._gate = gate
        self._limit = limit
        self._entries: OrderedDict[bytes, HalfOpen[T]] = OrderedDict()
        self.peak = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[HalfOpen[T]]:
        return iter(list(self._entries.values()))

    def get(self, spi_i: bytes) -> HalfOpen[T] | None:
        return self._entries.get(spi_i)

    def add(self, spi_i: bytes, sa: T, source: Address) -> HalfOpen[T] | None:
        """Keep ``sa``; returns the entry evicted to make room, if any."""
        evicted = None
        if spi_i not in self._entries and len(self._entries) >= self._limit:
            evicted = self.remove(next(iter(self._entries)))
        self.remove(spi_i)
        self._entries[spi_i] = HalfOpen(spi_i, sa, source)
        self._gate.half_open += 1
        self.peak = max(self.peak, len(self._entries))
        return evicted

    def remove(self, spi_i: bytes) -> HalfOpen[T] | None:
        entry = self._entries.pop(spi_i, None)
        if entry is not None:
            self._gate.half_open -= 1
        return entry

    def clear(self) -> None:
        for spi_i in list(self._entries):
            self.remove(spi_i)


__all__ = [
    "Admission",
    "AuthThrottle",
    "HalfOpen",
    "HalfOpenTable",
    "InitGate",
    "is_initial_request",
]
