"""Data-channel key material: the 256-byte key2 block and its per-direction AEAD slices.

Two ways to get key2 [src ssl.c generate_key_expansion, generate_key_expansion_openvpn_prf,
generate_key_expansion_tls_export]:

* legacy PRF: the TLS 1.0 PRF (MD5 xor SHA1, crypto_openssl.c ssl_tls1_PRF) run twice,
  ``master = PRF(pre_master, "OpenVPN master secret" || c.random1 || s.random1, 48)`` and
  ``key2 = PRF(master, "OpenVPN key expansion" || c.random2 || s.random2 || c.sid || s.sid,
  256)``; "c"/"s" are the TLS client and server;
* EKM: 256 bytes from the TLS exporter with label ``EXPORTER-OpenVPN-datakeys`` and no
  context (the exporter call itself belongs to the TLS engine).

key2 has the static-key layout: keys[0] (cipher slot 0..63, HMAC slot 64..127) protects
client->server, keys[1] (128..255) server->client. For AEAD the cipher key is the start of
the cipher slot and the implicit IV the first 8 bytes of the HMAC slot
[src ssl.c init_key_contexts, key_ctx_update_implicit_iv].
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field

from sslvpn.openvpn.constants import (
    IMPLICIT_IV_LEN,
    KEY_EXPANSION_LEN,
    KEY_SLOT_LEN,
    MASTER_SECRET_LEN,
    PRE_MASTER_LEN,
    PRF_LABEL_EXPANSION,
    PRF_LABEL_MASTER,
    RANDOM_LEN,
    SESSION_ID_LEN,
)

#: Data-channel AEAD ciphers we implement and their key lengths (crypto.c, cipher names
#: as OpenVPN spells them in IV_CIPHERS / ``cipher`` pushes).
AEAD_KEY_LENGTHS: dict[str, int] = {
    "AES-256-GCM": 32,
    "AES-128-GCM": 16,
    "CHACHA20-POLY1305": 32,
}


def _p_hash(digest: str, secret: bytes, seed: bytes, length: int) -> bytes:
    """RFC 2246 section 5 P_hash: HMAC(secret, A(i) || seed) with A(i) = HMAC(secret, A(i-1))."""
    out = bytearray()
    a = seed
    while len(out) < length:
        a = hmac.digest(secret, a, digest)
        out += hmac.digest(secret, a + seed, digest)
    return bytes(out[:length])


def tls1_prf(secret: bytes, seed: bytes, length: int) -> bytes:
    """TLS 1.0/1.1 PRF: P_MD5(S1, seed) xor P_SHA1(S2, seed), halves overlapping if odd."""
    half = (len(secret) + 1) // 2
    md5 = _p_hash("md5", secret[:half], seed, length)
    sha1 = _p_hash("sha1", secret[len(secret) - half :], seed, length)
    return bytes(x ^ y for x, y in zip(md5, sha1, strict=True))


def _exact(value: bytes, size: int, what: str) -> bytes:
    if len(value) != size:
        raise ValueError(f"{what} must be {size} bytes")
    return value


@dataclass(frozen=True)
class KeySource:
    """The key-method 2 randoms of one key state (the client also sends ``pre_master``).

    ``client_*`` are from the TLS client's record, ``server_*`` from the server's.
    """

    pre_master: bytes = field(repr=False)
    client_random1: bytes = field(repr=False)
    client_random2: bytes = field(repr=False)
    server_random1: bytes = field(repr=False)
    server_random2: bytes = field(repr=False)


def prf_key_expansion(
    source: KeySource, client_session_id: bytes, server_session_id: bytes
) -> bytes:
    """key2 by the legacy OpenVPN PRF method (ssl.c generate_key_expansion_openvpn_prf)."""
    _exact(source.pre_master, PRE_MASTER_LEN, "pre_master")
    for name in ("client_random1", "client_random2", "server_random1", "server_random2"):
        _exact(getattr(source, name), RANDOM_LEN, name)
    _exact(client_session_id, SESSION_ID_LEN, "client session id")
    _exact(server_session_id, SESSION_ID_LEN, "server session id")
    master = tls1_prf(
        source.pre_master,
        PRF_LABEL_MASTER + source.client_random1 + source.server_random1,
        MASTER_SECRET_LEN,
    )
    seed = (
        PRF_LABEL_EXPANSION
        + source.client_random2
        + source.server_random2
        + client_session_id
        + server_session_id
    )
    return tls1_prf(master, seed, KEY_EXPANSION_LEN)


def ekm_key_expansion(exported: bytes) -> bytes:
    """key2 by the EKM method: the exporter output is key2 as is (checked for length)."""
    return _exact(exported, KEY_EXPANSION_LEN, "exported keying material")


@dataclass(frozen=True)
class DirectionKey:
    """Cipher key and 8-byte implicit IV for one direction of one key state."""

    key: bytes = field(repr=False)
    implicit_iv: bytes = field(repr=False)


@dataclass(frozen=True)
class DataKeys:
    """The AEAD keys of one key state as seen by one side (what it seals and opens with)."""

    cipher: str
    encrypt: DirectionKey
    decrypt: DirectionKey

    @classmethod
    def from_key2(cls, key2: bytes, cipher: str, *, server: bool) -> DataKeys:
        """Slice key2 for ``cipher``; the TLS server encrypts with keys[1] (INVERSE)."""
        _exact(key2, KEY_EXPANSION_LEN, "key2")
        if cipher not in AEAD_KEY_LENGTHS:
            raise ValueError(f"unsupported data-channel cipher {cipher}")
        c2s, s2c = _direction(key2, 0, cipher), _direction(key2, 1, cipher)
        return cls(cipher, s2c, c2s) if server else cls(cipher, c2s, s2c)


def _direction(key2: bytes, index: int, cipher: str) -> DirectionKey:
    base = index * 2 * KEY_SLOT_LEN
    key = key2[base : base + AEAD_KEY_LENGTHS[cipher]]
    iv = key2[base + KEY_SLOT_LEN : base + KEY_SLOT_LEN + IMPLICIT_IV_LEN]
    return DirectionKey(key, iv)

