"""Stateless COOKIE challenge for IKE_SA_INIT (RFC 7296 §2.6), DoS protection.

When the runtime already holds a half-open responder SA for a peer (or too many of them),
it calls ``CookieJar.challenge`` before creating another: an INIT without a valid cookie
gets an ``N(COOKIE)`` answer and no state, so only initiators that can receive at their
claimed address get a DH computation. The cookie binds Ni, the source IP and SPIi under a
secret that the caller rotates (the previous secret stays valid for one rotation).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress

from .constants import ExchangeType, HeaderFlag, NotifyType
from .messages import (
    IkeHeader,
    MalformedMessage,
    NoncePayload,
    NotifyPayload,
    encode_message,
    pull_message,
)

COOKIE_VERSION = b"\x01"
_COOKIE_LENGTH = 1 + 16


class CookieJar:
    """Issues and checks cookies; holds no per-peer state."""

    def __init__(self, secret: bytes) -> None:
        self._secrets = [secret]

    def __repr__(self) -> str:
        return "CookieJar(<secret hidden>)"

    def rotate(self, secret: bytes) -> None:
        """New cookies use ``secret``; cookies from the previous secret still pass."""
        self._secrets = [secret, self._secrets[0]]

    def _cookie(self, secret: bytes, nonce: bytes, ip: str, spi_i: bytes) -> bytes:
        packed = ipaddress.ip_address(ip).packed
        mac = hmac.new(secret, nonce + packed + spi_i, hashlib.sha256).digest()[:16]
        return COOKIE_VERSION + mac

    def challenge(self, data: bytes, addr: tuple[str, int]) -> bytes | None:
        """None if the INIT request carries a valid cookie; else the N(COOKIE) answer.

        Garbage also gets None: the caller's own first-packet check rejects it.
        """
        try:
            message = pull_message(data)
        except MalformedMessage:
            return None
        nonces = [p for p in message.payloads if isinstance(p, NoncePayload)]
        if message.header.exchange != ExchangeType.IKE_SA_INIT or not nonces:
            return None
        spi_i, nonce = message.header.spi_i, nonces[0].data
        first = message.payloads[0]
        if isinstance(first, NotifyPayload) and first.notify_type == NotifyType.COOKIE:
            for secret in self._secrets:
                if hmac.compare_digest(first.data, self._cookie(secret, nonce, addr[0], spi_i)):
                    return None
        cookie = self._cookie(self._secrets[0], nonce, addr[0], spi_i)
        header = IkeHeader(spi_i, bytes(8), 0, ExchangeType.IKE_SA_INIT, HeaderFlag.RESPONSE, 0)
        return encode_message(header, [NotifyPayload(NotifyType.COOKIE, cookie)])


__all__ = ["COOKIE_VERSION", "CookieJar"]
