"""IKEv2 cryptography: DH groups, prf/prf+, SA key derivation, SK protection, PSK AUTH.

Formulas follow RFC 7296 §2.13-2.17 (checked against strongSwan 5.9.8's level-4 dumps in
the tests), RFC 5282 for AES-GCM in the SK payload, RFC 4868 for HMAC-SHA2, RFC 5903 for
ECP groups (public value X|Y, shared secret X), RFC 8031 for Curve25519, and FIPS 203
ML-KEM-768 for RFC 9370 additional key exchanges (encapsulation key from the initiator,
ciphertext from the responder, as the IETF ML-KEM-in-IKEv2 draft has it). Randomness is
injected (``rand(n) -> bytes``) so that tests are deterministic. Key material lives in
objects whose ``repr`` hides it.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, mlkem, x25519
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .constants import KEY_PAD, DhGroup, EncrId, IntegId, PrfId

Rand = Callable[[int], bytes]


class CryptoError(ValueError):
    """The peer sent a key-exchange value we must refuse (wrong size, not on the curve)."""


# -- Diffie-Hellman -------------------------------------------------------------------------

# RFC 3526 §3: the 2048-bit MODP group, generator 2.
MODP_2048_PRIME = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A0879"
    "8E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B"
    "0BFF5CB6F406B7EDEE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA4836"
    "1C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804"
    "F1746C08CA18217C32905E462E36CE3BE39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6"
    "955817183995497CEA956AE515D2261898FA051015728E5A8AACAA68FFFFFFFFFFFFFFFF",
    16,
)
_EC_CURVES: dict[int, tuple[ec.EllipticCurve, int]] = {
    DhGroup.ECP_256: (ec.SECP256R1(), 32),
    DhGroup.ECP_384: (ec.SECP384R1(), 48),
    DhGroup.ECP_521: (ec.SECP521R1(), 66),
}
_EC_ORDER = {
    DhGroup.ECP_256: 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    DhGroup.ECP_384: int(
        "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196A"
        "CCC52973",
        16,
    ),
    DhGroup.ECP_521: int(
        "01FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFA51868783BF2F966B7FCC"
        "0148F709A5D03BB5C9B8899C47AEBB6FB71E91386409",
        16,
    ),
}
# RFC 5903 §7 (X | Y, each coordinate left-padded to the field size), RFC 8031 §2
PUBLIC_LENGTH = {DhGroup.MODP_2048: 256, DhGroup.ECP_256: 64, DhGroup.ECP_384: 96,
                 DhGroup.ECP_521: 132, DhGroup.CURVE25519: 32}


class DhExchange:
    """Our half of one Diffie-Hellman exchange; ``public`` goes into the KE payload."""

    def __init__(self, group: DhGroup, rand: Rand) -> None:
        self.group = group
        if group == DhGroup.MODP_2048:
            # 256-bit exponent: ample for a 2048-bit group (RFC 3526 §8 strength estimates).
            # cryptography deprecates finite-field DH, so MODP is plain modular arithmetic.
            self._modp_x = int.from_bytes(rand(32), "big") | (1 << 255)
            self.public = pow(2, self._modp_x, MODP_2048_PRIME).to_bytes(256, "big")
        elif group in _EC_CURVES:
            curve, size = _EC_CURVES[group]
            scalar = int.from_bytes(rand(size + 8), "big") % (_EC_ORDER[group] - 1) + 1
            self._ec = ec.derive_private_key(scalar, curve)
            point = self._ec.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )
            self.public = point[1:]  # RFC 5903 §7: X | Y without the 0x04 octet
        elif group == DhGroup.CURVE25519:
            self._x25519 = x25519.X25519PrivateKey.from_private_bytes(rand(32))
            self.public = self._x25519.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
        else:
            raise ValueError(f"unsupported DH group {group}")

    def __repr__(self) -> str:
        return f"DhExchange(group={self.group!r})"

    def shared_secret(self, peer_public: bytes) -> bytes:
        """g^ir, left-padded to the group size (RFC 7296 §2.14); CryptoError on bad input."""
        if len(peer_public) != PUBLIC_LENGTH[self.group]:
            raise CryptoError(f"KE for group {self.group} has {len(peer_public)} bytes")
        try:
            if self.group == DhGroup.MODP_2048:
                y = int.from_bytes(peer_public, "big")
                if not 1 < y < MODP_2048_PRIME - 1:
                    raise CryptoError("MODP public value out of range")
                return pow(y, self._modp_x, MODP_2048_PRIME).to_bytes(256, "big")
            if self.group in _EC_CURVES:
                curve, _ = _EC_CURVES[self.group]
                point = ec.EllipticCurvePublicKey.from_encoded_point(
                    curve, b"\x04" + peer_public
                )
                return self._ec.exchange(ec.ECDH(), point)
            secret = self._x25519.exchange(
                x25519.X25519PublicKey.from_public_bytes(peer_public)
            )
        except CryptoError:
            raise
        except ValueError as exc:
            raise CryptoError(f"invalid KE value for group {self.group}") from exc
        if secret == bytes(32):  # RFC 8031 §2.3
            raise CryptoError("all-zero X25519 shared secret")
        return secret


# -- ML-KEM (additional key exchanges, RFC 9370) ---------------------------------------------

MLKEM768_KEY_LENGTH = 1184  # encapsulation key (FIPS 203 table 3)
MLKEM768_CIPHERTEXT_LENGTH = 1088


class KemExchange:
    """The initiator's half of one ML-KEM-768 exchange: ``public`` is the encapsulation key."""

    def __init__(self, method: DhGroup, rand: Rand) -> None:
        if method != DhGroup.ML_KEM_768:
            raise ValueError(f"unsupported key exchange method {method}")
        self.method = method
        self._key = mlkem.MLKEM768PrivateKey.from_seed_bytes(rand(64))
        self.public = self._key.public_key().public_bytes_raw()

    def __repr__(self) -> str:
        return f"KemExchange(method={self.method!r})"

    def shared_secret(self, ciphertext: bytes) -> bytes:
        """Decapsulate the responder's ciphertext; CryptoError on a wrong size."""
        if len(ciphertext) != MLKEM768_CIPHERTEXT_LENGTH:
            raise CryptoError(f"ML-KEM-768 ciphertext has {len(ciphertext)} bytes")
        return self._key.decapsulate(ciphertext)


def kem_encapsulate(method: DhGroup, peer_public: bytes) -> tuple[bytes, bytes]:
    """The responder's half: (ciphertext for the KE payload, shared secret)."""
    if method != DhGroup.ML_KEM_768:
        raise CryptoError(f"unsupported key exchange method {method}")
    if len(peer_public) != MLKEM768_KEY_LENGTH:
        raise CryptoError(f"ML-KEM-768 encapsulation key has {len(peer_public)} bytes")
    try:
        key = mlkem.MLKEM768PublicKey.from_public_bytes(peer_public)
    except ValueError as exc:  # FIPS 203 §7.2 modulus check
        raise CryptoError("invalid ML-KEM-768 encapsulation key") from exc
    shared, ciphertext = key.encapsulate()
    return ciphertext, shared


# -- prf, prf+, key lengths -----------------------------------------------------------------

_PRF_HASH = {
    PrfId.HMAC_SHA2_256: hashlib.sha256,
    PrfId.HMAC_SHA2_384: hashlib.sha384,
    PrfId.HMAC_SHA2_512: hashlib.sha512,
}


def prf(prf_id: PrfId, key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, _PRF_HASH[prf_id]).digest()


def prf_key_length(prf_id: PrfId) -> int:
    """Preferred key length = output length for HMAC PRFs (RFC 7296 §2.13, RFC 4868)."""
    return _PRF_HASH[prf_id]().digest_size


def prf_plus(prf_id: PrfId, key: bytes, seed: bytes, length: int) -> bytes:
    """RFC 7296 §2.13: T1 = prf(K, S | 0x01), Tn = prf(K, Tn-1 | S | n)."""
    out = b""
    block = b""
    counter = 1
    while len(out) < length:
        if counter > 255:
            raise ValueError("prf+ cannot produce that much keying material")
        block = prf(prf_id, key, block + seed + bytes([counter]))
        out += block
        counter += 1
    return out[:length]


def encr_key_length(encr: EncrId, key_bits: int) -> int:
    """Cipher key bytes; AES-GCM adds the 4-byte salt (RFC 5282 §7.1, RFC 4106 §8.1)."""
    return key_bits // 8 + (4 if encr == EncrId.AES_GCM_16 else 0)


# RFC 4868 §2.1.1 and §2.3: (hash, key length = output length, ICV = half of it)
HMAC_INTEG = {
    IntegId.HMAC_SHA2_256_128: ("sha256", 32, 16),
    IntegId.HMAC_SHA2_384_192: ("sha384", 48, 24),
    IntegId.HMAC_SHA2_512_256: ("sha512", 64, 32),
}


def integ_key_length(integ: IntegId) -> int:
    return HMAC_INTEG[integ][1] if integ in HMAC_INTEG else 0


# -- IKE SA keys ----------------------------------------------------------------------------


@dataclass(frozen=True)
class IkeKeys:
    """SK_d, SK_ai/ar, SK_ei/er, SK_pi/pr (RFC 7296 §2.14). Never printed."""

    sk_d: bytes = field(repr=False)
    sk_ai: bytes = field(repr=False)
    sk_ar: bytes = field(repr=False)
    sk_ei: bytes = field(repr=False)
    sk_er: bytes = field(repr=False)
    sk_pi: bytes = field(repr=False)
    sk_pr: bytes = field(repr=False)


def skeyseed(prf_id: PrfId, nonce_i: bytes, nonce_r: bytes, shared: bytes) -> bytes:
    """SKEYSEED = prf(Ni | Nr, g^ir) for a new IKE SA (RFC 7296 §2.14)."""
    return prf(prf_id, nonce_i + nonce_r, shared)


def rekey_skeyseed(
    prf_id: PrfId, old_sk_d: bytes, shared: bytes, nonce_i: bytes, nonce_r: bytes,
    additional: bytes = b"",
) -> bytes:
    """SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr) for an IKE rekey (RFC 7296 §2.18),
    and after each additional key exchange with its secret (RFC 9370 §2.2.2). A rekey with
    additional key exchanges appends their secrets, SK(1) | ... | SK(n) (RFC 9370 §2.2.4)."""
    return prf(prf_id, old_sk_d, shared + nonce_i + nonce_r + additional)


def derive_ike_keys(
    prf_id: PrfId,
    encr: EncrId,
    key_bits: int,
    integ: IntegId,
    seed: bytes,
    nonce_i: bytes,
    nonce_r: bytes,
    spi_i: bytes,
    spi_r: bytes,
) -> IkeKeys:
    """Split prf+(SKEYSEED, Ni | Nr | SPIi | SPIr) into the seven SK_* keys."""
    p = prf_key_length(prf_id)
    a = integ_key_length(integ)
    e = encr_key_length(encr, key_bits)
    stream = prf_plus(prf_id, seed, nonce_i + nonce_r + spi_i + spi_r, 3 * p + 2 * a + 2 * e)
    cuts = [p, a, a, e, e, p, p]
    parts = []
    pos = 0
    for n in cuts:
        parts.append(stream[pos : pos + n])
        pos += n
    return IkeKeys(*parts)


@dataclass(frozen=True)
class ChildKeys:
    """ESP keys per direction of a CHILD_SA; 'i' = initiator of the creating exchange."""

    encr_i: bytes = field(repr=False)
    integ_i: bytes = field(repr=False)
    encr_r: bytes = field(repr=False)
    integ_r: bytes = field(repr=False)


def derive_child_keys(
    prf_id: PrfId,
    sk_d: bytes,
    encr: EncrId,
    key_bits: int,
    integ: IntegId,
    nonce_i: bytes,
    nonce_r: bytes,
    shared: bytes = b"",
) -> ChildKeys:
    """KEYMAT = prf+(SK_d, [g^ir (new) |] Ni | Nr), split i->r then r->i (RFC 7296 §2.17)."""
    e = encr_key_length(encr, key_bits)
    a = integ_key_length(integ)
    km = prf_plus(prf_id, sk_d, shared + nonce_i + nonce_r, 2 * (e + a))
    return ChildKeys(km[:e], km[e : e + a], km[e + a : 2 * e + a], km[2 * e + a :])


# -- AUTH and NAT detection -----------------------------------------------------------------


def psk_auth(
    prf_id: PrfId, psk: bytes, real_message: bytes, peer_nonce: bytes, sk_p: bytes,
    id_body: bytes, int_auth: bytes = b"",
) -> bytes:
    """AUTH = prf(prf(PSK, "Key Pad for IKEv2"), RealMessage | Nonce | prf(SK_p, ID')
    [| IntAuth_i | IntAuth_r | IKE_AUTH message ID]) (RFC 9242 §3.3.2)."""
    octets = real_message + peer_nonce + prf(prf_id, sk_p, id_body) + int_auth
    return prf(prf_id, prf(prf_id, psk, KEY_PAD), octets)


def int_auth(prf_id: PrfId, sk_p: bytes, previous: bytes, octets: bytes) -> bytes:
    """IntAuth_N = prf(SK_p, IntAuth_N-1 | IntAuth_NA | IntAuth_NP) (RFC 9242 §3.3.2), with
    the SK_p that protected the IKE_INTERMEDIATE message."""
    return prf(prf_id, sk_p, previous + octets)


def natd_hash(spi_i: bytes, spi_r: bytes, ip: bytes, port: int) -> bytes:
    """RFC 7296 §2.23: SHA-1(SPIi | SPIr | IP | Port), whatever the negotiated PRF."""
    return hashlib.sha1(spi_i + spi_r + ip + port.to_bytes(2, "big")).digest()  # noqa: S324


# -- SK payload protection ------------------------------------------------------------------


class CbcHmacProtector:
    """AES-CBC + HMAC-SHA2 (256-128, 384-192, 512-256) for the SK payload (RFC 7296 §3.14,
    RFC 4868)."""

    iv_length = 16

    def __init__(self, encr_key: bytes, integ_key: bytes, rand: Rand,
                 integ: IntegId = IntegId.HMAC_SHA2_256_128) -> None:
        self._key = encr_key
        self._integ = integ_key
        self._rand = rand
        self._hash, _, self.icv_length = HMAC_INTEG[integ]

    def __repr__(self) -> str:
        return "CbcHmacProtector(<keys hidden>)"

    def sealed_length(self, inner_length: int) -> int:
        padded = (inner_length + 1 + 15) // 16 * 16
        return self.iv_length + padded + self.icv_length

    def seal(self, aad: bytes, inner: bytes) -> bytes:
        pad = (-(len(inner) + 1)) % 16
        plain = inner + bytes(pad) + bytes([pad])
        iv = self._rand(16)
        enc = Cipher(algorithms.AES(self._key), modes.CBC(iv)).encryptor()
        body = iv + enc.update(plain) + enc.finalize()
        return body + self._icv(aad + body)

    def _icv(self, data: bytes) -> bytes:
        return hmac.digest(self._integ, data, self._hash)[: self.icv_length]

    def open(self, aad: bytes, body: bytes) -> bytes | None:
        if len(body) < self.iv_length + 16 + self.icv_length:
            return None
        cipher_len = len(body) - self.iv_length - self.icv_length
        if cipher_len % 16:
            return None
        if not hmac.compare_digest(self._icv(aad + body[: -self.icv_length]),
                                   body[-self.icv_length :]):
            return None
        iv = body[: self.iv_length]
        dec = Cipher(algorithms.AES(self._key), modes.CBC(iv)).decryptor()
        plain = dec.update(body[self.iv_length : -self.icv_length]) + dec.finalize()
        return _strip_padding(plain)


class GcmProtector:
    """AES-GCM with a 16-byte ICV for the SK payload (RFC 5282): 8-byte explicit IV."""

    iv_length = 8
    icv_length = 16

    def __init__(self, key_and_salt: bytes) -> None:
        self._aead = AESGCM(key_and_salt[:-4])
        self._salt = key_and_salt[-4:]
        self._counter = 0  # the IV never repeats under one key (RFC 5282 §3.1)

    def __repr__(self) -> str:
        return "GcmProtector(<keys hidden>)"

    def sealed_length(self, inner_length: int) -> int:
        return self.iv_length + inner_length + 1 + self.icv_length

    def seal(self, aad: bytes, inner: bytes) -> bytes:
        self._counter += 1
        iv = self._counter.to_bytes(8, "big")
        return iv + self._aead.encrypt(self._salt + iv, inner + b"\x00", aad)

    def open(self, aad: bytes, body: bytes) -> bytes | None:
        if len(body) < self.iv_length + 1 + self.icv_length:
            return None
        iv = body[: self.iv_length]
        try:
            plain = self._aead.decrypt(self._salt + iv, body[self.iv_length :], aad)
        except InvalidTag:
            return None
        return _strip_padding(plain)


def _strip_padding(plain: bytes) -> bytes | None:
    if not plain:
        return None
    pad = plain[-1]
    if pad + 1 > len(plain):
        return None
    return plain[: len(plain) - 1 - pad]


Protector = CbcHmacProtector | GcmProtector


def make_protectors(
    encr: EncrId, keys: IkeKeys, we_are_initiator: bool, rand: Rand,
    integ: IntegId = IntegId.HMAC_SHA2_256_128,
) -> tuple[Protector, Protector]:
    """(outbound, inbound) SK protectors; the original initiator sends with SK_ei/SK_ai."""
    send_e, send_a, recv_e, recv_a = (
        (keys.sk_ei, keys.sk_ai, keys.sk_er, keys.sk_ar)
        if we_are_initiator
        else (keys.sk_er, keys.sk_ar, keys.sk_ei, keys.sk_ai)
    )
    if encr == EncrId.AES_GCM_16:
        return GcmProtector(send_e), GcmProtector(recv_e)
    return (CbcHmacProtector(send_e, send_a, rand, integ),
            CbcHmacProtector(recv_e, recv_a, rand, integ))
