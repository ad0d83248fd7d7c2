"""Stateless COOKIE challenge for IKE_SA_INIT (RFC 7296 §2.6), DoS protection.

When ``admission.InitGate`` decides that cookies are required, an INIT without a valid
cookie gets an ``N(COOKIE)`` answer and no state, so only initiators that can receive at
their claimed address get a DH computation. A cookie is ``version | HMAC(secret, Ni | IPi |
SPIi)[:16]`` (the RFC's suggested form): the secret rotates every ``lifetime`` seconds and
the previous one stays valid for one more period, so a cookie is good for 10-20 s.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import struct

from . import constants as c
from .constants import ExchangeType, HeaderFlag, NotifyType, PayloadType
from .crypto import Rand

_MAC_LENGTH = 16
_SECRET_LENGTH = 32


# header, then one Notify payload: generic header, protocol 0, no SPI, type (RFC 7296 §3.10)
_ANSWER = struct.Struct("!8s8sBBBBII BBH BBH")
_ANSWER_FIXED = c.IKE_HEADER_LENGTH + c.GENERIC_PAYLOAD_HEADER_LENGTH + 4


def stateless_answer(spi_i: bytes, notify_type: int, data: bytes = b"") -> bytes:
    """An IKE_SA_INIT response carrying one notify and no responder SPI (no state kept).

    Packed directly: under a flood this is the only thing built per datagram.
    """
    return _ANSWER.pack(
        spi_i, bytes(8), PayloadType.NOTIFY, c.IKE_VERSION, ExchangeType.IKE_SA_INIT,
        HeaderFlag.RESPONSE, 0, _ANSWER_FIXED + len(data),
        PayloadType.NONE, 0, c.GENERIC_PAYLOAD_HEADER_LENGTH + 4 + len(data),
        0, 0, notify_type,
    ) + data


@functools.lru_cache(maxsize=256)
def _packed(ip: str) -> bytes:
    return ipaddress.ip_address(ip).packed


class CookieJar:
    """Issues and checks cookies; holds no per-peer state, only the current and previous
    secret (drawn from ``rand``)."""

    def __init__(self, rand: Rand, lifetime: float = c.COOKIE_SECRET_LIFETIME) -> None:
        self._rand = rand
        self._lifetime = lifetime
        self._secrets: list[tuple[int, bytes]] = []  # (version, secret), current first
        self._rotate_at = float("-inf")

    def __repr__(self) -> str:
        return "CookieJar(<secrets hidden>)"

    def _rotate(self, now: float) -> None:
        if now < self._rotate_at:
            return
        if now >= self._rotate_at + self._lifetime:
            self._secrets = []  # idle for two periods: nothing issued before stays valid
        version = (self._secrets[0][0] + 1) % 256 if self._secrets else 0
        self._secrets = [(version, self._rand(_SECRET_LENGTH)), *self._secrets[:1]]
        self._rotate_at = now + self._lifetime

    @staticmethod
    def _mac(secret: bytes, spi_i: bytes, nonce: bytes, ip: str) -> bytes:
        mac = hmac.digest(secret, nonce + _packed(ip) + spi_i, hashlib.sha256)
        return mac[:_MAC_LENGTH]

    def cookie(self, spi_i: bytes, nonce: bytes, ip: str, now: float) -> bytes:
        """The cookie an initiator at ``ip`` must echo in its next INIT."""
        self._rotate(now)
        version, secret = self._secrets[0]
        return bytes([version]) + self._mac(secret, spi_i, nonce, ip)

    def valid(self, cookie: bytes, spi_i: bytes, nonce: bytes, ip: str, now: float) -> bool:
        """Whether ``cookie`` came from us, for this SPIi, nonce and address, recently."""
        self._rotate(now)
        if len(cookie) != 1 + _MAC_LENGTH:
            return False
        for version, secret in self._secrets:
            if version == cookie[0]:
                return hmac.compare_digest(cookie[1:], self._mac(secret, spi_i, nonce, ip))
        return False

    def challenge(self, spi_i: bytes, nonce: bytes, ip: str, now: float) -> bytes:
        """The whole ``N(COOKIE)`` answer to an INIT (RFC 7296 §2.6)."""
        return stateless_answer(spi_i, NotifyType.COOKIE, self.cookie(spi_i, nonce, ip, now))


__all__ = ["CookieJar", "stateless_answer"]
