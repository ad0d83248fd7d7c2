"""ESP tunnel-mode packet protection (RFC 4303) for the suites sslvpn negotiates.

- AES-GCM-16 (RFC 4106): key material = AES key + 4-byte salt (36 bytes for AES-256), an 8-byte
  explicit IV (our 64-bit sequence counter, so it never repeats under one key), AAD = SPI|Seq.
- AES-CBC (RFC 3602) + HMAC-SHA-256-128, -384-192 or -512-256 (RFC 4868): a random 16-byte
  IV and an ICV (the HMAC cut to half its length) over SPI|Seq|IV|ciphertext, verified in
  constant time before decrypting.

Padding is the RFC 4303 section 2.4 default (1, 2, 3, ...) and is checked on receipt, as
strongSwan's libipsec does. Sequence numbers start at 1 and never wrap (no ESN: we always
negotiate NO_EXT_SEQ). Anti-replay uses `sslvpn.net.replay.ReplayWindow`: checked before the
ICV, recorded only after it verified (RFC 4303 section 3.4.3). Every failure on receipt is a
`DropReason` value that the caller counts; nothing a peer sends raises.
"""

from __future__ import annotations

import hmac
import os
import struct
from collections import Counter
from collections.abc import Callable
from enum import Enum

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sslvpn.net.replay import ReplayVerdict, ReplayWindow

# -- spec constants ----------------------------------------------------------------------
NEXT_HEADER_IPV4 = 4  # IANA protocol numbers, RFC 4303 section 2.6
NEXT_HEADER_IPV6 = 41
NEXT_HEADER_DUMMY = 59  # TFC dummy packet, RFC 4303 section 2.6: silently discarded
ESP_HEADER_LEN = 8  # SPI(4) | Seq(4), RFC 4303 section 2
GCM_IV_LEN = 8  # RFC 4106 section 3.1
GCM_SALT_LEN = 4  # RFC 4106 section 8.1
GCM_ICV_LEN = 16
CBC_IV_LEN = 16  # RFC 3602 section 3
AES_KEY_BITS = (128, 192, 256)
SEQ_MAX = 0xFFFFFFFF  # without ESN the counter must not cycle (RFC 4303 section 3.3.3)

# -- tuning constants --------------------------------------------------------------------
DEFAULT_REPLAY_WINDOW = 128  # strongSwan defaults to 32; the issue asks for >= 64

_PAD = bytes(range(1, 256))
_SPI_SEQ = struct.Struct("!II")
_HEADER_IV64 = struct.Struct("!IIQ")  # SPI | Seq | the GCM IV (the 64-bit counter)
_Rand = Callable[[int], bytes]


class EspCipher(Enum):
    """The ESP suite families we support (strongSwan notation for the 256-bit variants)."""

    AES_GCM16 = "aesgcm16"
    AES_CBC_SHA256 = "aes-sha256"
    AES_CBC_SHA384 = "aes-sha384"
    AES_CBC_SHA512 = "aes-sha512"


# RFC 4868 sections 2.1.1 and 2.3: (hash, key length = output length, ICV = half of it)
HMAC_INTEGRITY = {
    EspCipher.AES_CBC_SHA256: ("sha256", 32, 16),
    EspCipher.AES_CBC_SHA384: ("sha384", 48, 24),
    EspCipher.AES_CBC_SHA512: ("sha512", 64, 32),
}


class DropReason(Enum):
    """Why an inbound ESP packet was discarded (each one is counted, none raises)."""

    TRUNCATED = "truncated"
    UNKNOWN_SPI = "unknown-spi"
    REPLAYED = "replayed"
    TOO_OLD = "too-old"
    BAD_ICV = "bad-icv"
    BAD_LENGTH = "bad-length"
    BAD_PADDING = "bad-padding"
    DUMMY = "dummy-packet"
    UNSUPPORTED_NEXT_HEADER = "unsupported-next-header"


class SequenceExhausted(Exception):
    """The outbound SA sent 2^32-1 packets; it must be rekeyed (caller's duty, not the peer's)."""


class EspKeys:
    """Key material for one direction of one CHILD_SA (key size implied by its length).

    Never shown in repr or logs.
    """

    __slots__ = ("encryption", "integrity")

    def __init__(self, encryption: bytes, integrity: bytes = b"") -> None:
        self.encryption = encryption
        self.integrity = integrity

    def __repr__(self) -> str:
        return "EspKeys(<redacted>)"


def key_lengths(cipher: EspCipher, key_bits: int = 256) -> tuple[int, int]:
    """(encryption, integrity) key-material lengths in bytes, as KEYMAT is cut (RFC 7296 2.17)."""
    if key_bits not in AES_KEY_BITS:
        raise ValueError(f"AES key size {key_bits} is not 128, 192 or 256 bits")
    if cipher is EspCipher.AES_GCM16:
        return key_bits // 8 + GCM_SALT_LEN, 0
    return key_bits // 8, HMAC_INTEGRITY[cipher][1]


def _check_keys(cipher: EspCipher, keys: EspKeys) -> None:
    enc_len, integ_len = len(keys.encryption), len(keys.integrity)
    if cipher is EspCipher.AES_GCM16:
        enc_len -= GCM_SALT_LEN
    if enc_len * 8 not in AES_KEY_BITS or integ_len != key_lengths(cipher)[1]:
        raise ValueError(f"{cipher.value}: wrong amount of key material")


def _trailer(length: int, align: int, next_header: int) -> bytes:
    """Padding (1, 2, 3, ...), pad length and next header that align ``length`` bytes."""
    return _padding(-(length + 2) % align, next_header)


def _padding(pad_len: int, next_header: int) -> bytes:
    return _PAD[:pad_len] + bytes((pad_len, next_header))


class _Gcm:
    """AES-GCM-16 body: IV(8) | ciphertext | ICV(16) (RFC 4106 sections 3 and 5)."""

    __slots__ = ("_aead", "_salt", "_trailers")
    align = 4
    min_body = GCM_IV_LEN + 4 + GCM_ICV_LEN

    def __init__(self, keys: EspKeys) -> None:
        self._aead = AESGCM(keys.encryption[:-GCM_SALT_LEN])
        self._salt = keys.encryption[-GCM_SALT_LEN:]
        self._trailers = {(pad, nh): _padding(pad, nh)  # built once: the hot path's trailers
                          for pad in range(4) for nh in (NEXT_HEADER_IPV4, NEXT_HEADER_IPV6)}

    def seal(self, spi: int, seq: int, inner: bytes, next_header: int, rand: _Rand) -> bytes:
        """The whole ESP packet; the IV is the sequence number, so it never repeats."""
        header_iv = _HEADER_IV64.pack(spi, seq, seq)
        trailer = self._trailers.get((-(len(inner) + 2) % 4, next_header))
        if trailer is None:
            trailer = _trailer(len(inner), 4, next_header)
        sealed = self._aead.encrypt(self._salt + header_iv[ESP_HEADER_LEN:], inner + trailer,
                                    header_iv[:ESP_HEADER_LEN])
        return header_iv + sealed

    def open(self, packet: bytes) -> bytes | None:
        body = ESP_HEADER_LEN + GCM_IV_LEN
        try:
            return self._aead.decrypt(self._salt + packet[ESP_HEADER_LEN:body],
                                      memoryview(packet)[body:], packet[:ESP_HEADER_LEN])
        except InvalidTag:
            return None


class _CbcHmac:
    """AES-CBC + HMAC-SHA2 body: IV(16) | ciphertext | ICV (RFC 3602, RFC 4868)."""

    __slots__ = ("_algorithm", "_integ", "_hash", "_icv_len", "min_body")
    align = 16

    def __init__(self, cipher: EspCipher, keys: EspKeys) -> None:
        self._algorithm = algorithms.AES(keys.encryption)
        self._integ = keys.integrity
        self._hash, _, self._icv_len = HMAC_INTEGRITY[cipher]
        self.min_body = CBC_IV_LEN + 16 + self._icv_len

    def seal(self, spi: int, seq: int, inner: bytes, next_header: int, rand: _Rand) -> bytes:
        """The whole ESP packet, with a random IV (RFC 3602 section 3)."""
        header = _SPI_SEQ.pack(spi, seq)
        iv = rand(CBC_IV_LEN)
        encryptor = Cipher(self._algorithm, modes.CBC(iv)).encryptor()
        plaintext = inner + _trailer(len(inner), 16, next_header)
        signed = header + iv + encryptor.update(plaintext) + encryptor.finalize()
        return signed + hmac.digest(self._integ, signed, self._hash)[:self._icv_len]

    def open(self, packet: bytes) -> bytes | None:
        signed, icv = packet[:-self._icv_len], packet[-self._icv_len:]
        expected = hmac.digest(self._integ, signed, self._hash)[:self._icv_len]
        if not hmac.compare_digest(expected, icv):
            return None
        body = ESP_HEADER_LEN + CBC_IV_LEN
        ciphertext = signed[body:]
        if len(ciphertext) % 16:
            return None
        decryptor = Cipher(self._algorithm, modes.CBC(signed[ESP_HEADER_LEN:body])).decryptor()
        return decryptor.update(ciphertext) + decryptor.finalize()


def _transform(cipher: EspCipher, keys: EspKeys) -> _Gcm | _CbcHmac:
    _check_keys(cipher, keys)
    return _Gcm(keys) if cipher is EspCipher.AES_GCM16 else _CbcHmac(cipher, keys)


class OutboundSa:
    """Sending half of a CHILD_SA: numbers and protects inner IP packets for the peer's SPI."""

    __slots__ = ("spi", "cipher", "seq", "packets", "bytes", "_transform", "_rand")

    def __init__(
        self,
        spi: int,
        cipher: EspCipher,
        keys: EspKeys,
        *,
        rand: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.spi = spi
        self.cipher = cipher
        self.seq = 0  # last sequence number used
        self.packets = 0
        self.bytes = 0  # inner bytes protected
        self._transform = _transform(cipher, keys)
        self._rand = rand

    def seal(self, inner: bytes, next_header: int = NEXT_HEADER_IPV4) -> bytes:
        """The ESP packet (from the SPI on) carrying ``inner``; raises `SequenceExhausted`."""
        seq = self.seq
        if seq >= SEQ_MAX:
            raise SequenceExhausted(f"ESP SA {self.spi:08x} used every sequence number")
        self.seq = seq = seq + 1
        self.packets += 1
        self.bytes += len(inner)
        return self._transform.seal(self.spi, seq, inner, next_header, self._rand)


class InboundSa:
    """Receiving half of a CHILD_SA: authenticates, replay-checks and unwraps ESP packets."""

    __slots__ = ("spi", "cipher", "replay", "packets", "bytes", "drops", "_transform")

    def __init__(
        self,
        spi: int,
        cipher: EspCipher,
        keys: EspKeys,
        *,
        replay_window: int = DEFAULT_REPLAY_WINDOW,
    ) -> None:
        self.spi = spi
        self.cipher = cipher
        self.replay = ReplayWindow(replay_window)
        self.packets = 0
        self.bytes = 0  # inner bytes accepted
        self.drops: Counter[DropReason] = Counter()
        self._transform = _transform(cipher, keys)

    def unprotect(self, packet: bytes) -> tuple[int, bytes] | DropReason:
        """(next header, payload) of an authentic, fresh packet, else why it was dropped."""
        body_len = len(packet) - ESP_HEADER_LEN
        if body_len < self._transform.min_body:
            return self._drop(DropReason.TRUNCATED)
        spi, seq = _SPI_SEQ.unpack_from(packet)
        if spi != self.spi:
            return self._drop(DropReason.UNKNOWN_SPI)
        verdict = self.replay.check(seq)
        if verdict is not ReplayVerdict.FRESH:
            return self._drop(
                DropReason.REPLAYED if verdict is ReplayVerdict.REPLAYED else DropReason.TOO_OLD
            )
        plaintext = self._transform.open(packet)
        if plaintext is None:
            return self._drop(DropReason.BAD_ICV)
        self.replay.update(seq)  # authentic: record it even if the trailer turns out bad
        return self._strip_trailer(plaintext)

    def _strip_trailer(self, plaintext: bytes) -> tuple[int, bytes] | DropReason:
        if len(plaintext) < 2 or len(plaintext) % self._transform.align:
            return self._drop(DropReason.BAD_LENGTH)
        pad_len, next_header = plaintext[-2], plaintext[-1]
        end = len(plaintext) - 2 - pad_len
        if end < 0:
            return self._drop(DropReason.BAD_LENGTH)
        if plaintext[end:-2] != _PAD[:pad_len]:
            return self._drop(DropReason.BAD_PADDING)
        return next_header, plaintext[:end]

    def open(self, packet: bytes) -> bytes | DropReason:
        """The inner IP packet of a tunnel-mode ESP packet, or why it was dropped."""
        result = self.unprotect(packet)
        if isinstance(result, DropReason):
            return result
        next_header, inner = result
        if next_header == NEXT_HEADER_DUMMY:
            return self._drop(DropReason.DUMMY)
        if next_header not in (NEXT_HEADER_IPV4, NEXT_HEADER_IPV6):
            return self._drop(DropReason.UNSUPPORTED_NEXT_HEADER)
        self.packets += 1
        self.bytes += len(inner)
        return inner

    def _drop(self, reason: DropReason) -> DropReason:
        self.drops[reason] += 1
        return reason


def peek_spi(packet: bytes) -> int | None:
    """The SPI of an ESP packet (None if too short to hold one), for SA lookup."""
    if len(packet) < ESP_HEADER_LEN:
        return None
    return int.from_bytes(packet[:4], "big")
