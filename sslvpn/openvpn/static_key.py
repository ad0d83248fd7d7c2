"""OpenVPN key files and tls-crypt-v2 client-key wrapping (pure functions, no file I/O).

Owns three text formats that must stay byte-compatible with ``openvpn --genkey``:

* the "OpenVPN Static key V1" file (tls-auth / tls-crypt keys, 256 bytes as hex),
* the tls-crypt-v2 server key (128 bytes, base64 PEM),
* the tls-crypt-v2 client key (Kc 256 bytes || WKc, base64 PEM),

and the WKc construction itself [src tls_crypt.c tls_crypt_v2_wrap_client_key]:
``WKc = T || AES-256-CTR(Ke, IV=T[0:16], Kc || metadata) || u16 len`` with
``T = HMAC-SHA256(Ka, u16 len || Kc || metadata)``, ``Ke`` = server key bytes 0..31,
``Ka`` = bytes 64..95 and ``len`` the whole WKc length including the two length bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import struct
from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

STATIC_KEY_SIZE = 256
TLS_CRYPT_V2_SERVER_KEY_SIZE = 128
METADATA_TYPE_USER = 0x00
METADATA_TYPE_TIMESTAMP = 0x01

# [src tls_crypt.h] TLS_CRYPT_V2_MAX_WKC_LEN; tag is HMAC-SHA256, length field is u16.
TLS_CRYPT_V2_MAX_WKC_LEN = 1024
_TAG_SIZE = 32
_LEN_SIZE = 2
TLS_CRYPT_V2_MAX_METADATA_LEN = TLS_CRYPT_V2_MAX_WKC_LEN - (STATIC_KEY_SIZE + _TAG_SIZE + _LEN_SIZE)

_STATIC_BEGIN = "-----BEGIN OpenVPN Static key V1-----"
_STATIC_END = "-----END OpenVPN Static key V1-----"
# [src crypto.c write_key_file] the exact preamble `openvpn --genkey secret` writes.
_STATIC_PREAMBLE = "#\n# 2048 bit OpenVPN static key\n#\n"
_SERVER_LABEL = "OpenVPN tls-crypt-v2 server key"
_CLIENT_LABEL = "OpenVPN tls-crypt-v2 client key"
_BYTES_PER_HEX_LINE = 16
_BASE64_LINE = 64


def generate_static_key(rand: Callable[[int], bytes] = os.urandom) -> bytes:
    """A fresh 2048-bit static key (tls-crypt key or tls-crypt-v2 client key Kc)."""
    return _exact(rand(STATIC_KEY_SIZE), STATIC_KEY_SIZE, "static key")


def generate_tls_crypt_v2_server_key(rand: Callable[[int], bytes] = os.urandom) -> bytes:
    """A fresh tls-crypt-v2 server key (one 128-byte ``struct key``)."""
    return _exact(rand(TLS_CRYPT_V2_SERVER_KEY_SIZE), TLS_CRYPT_V2_SERVER_KEY_SIZE, "server key")


def parse_static_key(text: str) -> bytes:
    """Read an "OpenVPN Static key V1" file; text outside the markers (comments) is ignored."""
    body = _between(text, _STATIC_BEGIN, _STATIC_END)
    digits = "".join(body.split())
    if not re.fullmatch(r"[0-9a-fA-F]*", digits):
        raise ValueError("static key: body is not hexadecimal")
    return _exact(bytes.fromhex(digits), STATIC_KEY_SIZE, "static key")


def format_static_key(key: bytes) -> str:
    """Write a static key exactly as ``openvpn --genkey secret`` lays it out."""
    _exact(key, STATIC_KEY_SIZE, "static key")
    lines = [
        key[i : i + _BYTES_PER_HEX_LINE].hex() for i in range(0, len(key), _BYTES_PER_HEX_LINE)
    ]
    return _STATIC_PREAMBLE + "\n".join([_STATIC_BEGIN, *lines, _STATIC_END]) + "\n"


def parse_tls_crypt_v2_server_key(text: str) -> bytes:
    """Read a tls-crypt-v2 server key PEM (128 bytes)."""
    raw = _pem_decode(text, _SERVER_LABEL)
    return _exact(raw, TLS_CRYPT_V2_SERVER_KEY_SIZE, "tls-crypt-v2 server key")


def format_tls_crypt_v2_server_key(key: bytes) -> str:
    """Write a tls-crypt-v2 server key PEM as ``openvpn --genkey tls-crypt-v2-server`` does."""
    _exact(key, TLS_CRYPT_V2_SERVER_KEY_SIZE, "tls-crypt-v2 server key")
    return _pem_encode(key, _SERVER_LABEL)


def timestamp_metadata(unix_time: int) -> bytes:
    """TIMESTAMP metadata (OpenVPN's default when none is given): type byte + u64 BE seconds."""
    return struct.pack("!BQ", METADATA_TYPE_TIMESTAMP, unix_time)


def wrap_client_key(server_key: bytes, client_key: bytes, metadata: bytes) -> bytes:
    """Build WKc, the server-encrypted copy of Kc the client sends in its first packet."""
    _exact(server_key, TLS_CRYPT_V2_SERVER_KEY_SIZE, "tls-crypt-v2 server key")
    _exact(client_key, STATIC_KEY_SIZE, "tls-crypt-v2 client key")
    if len(metadata) > TLS_CRYPT_V2_MAX_METADATA_LEN:
        raise ValueError(f"tls-crypt-v2 metadata longer than {TLS_CRYPT_V2_MAX_METADATA_LEN} bytes")
    plain = client_key + metadata
    length = struct.pack("!H", _TAG_SIZE + len(plain) + _LEN_SIZE)
    tag = hmac.digest(_auth_key(server_key), length + plain, hashlib.sha256)
    return tag + _ctr(server_key, tag, plain) + length


def unwrap_client_key(server_key: bytes, wkc: bytes) -> tuple[bytes, bytes]:
    """Recover (Kc, metadata) from WKc; ValueError when the length or the tag is wrong."""
    _exact(server_key, TLS_CRYPT_V2_SERVER_KEY_SIZE, "tls-crypt-v2 server key")
    minimum = _TAG_SIZE + STATIC_KEY_SIZE + _LEN_SIZE
    if not minimum <= len(wkc) <= TLS_CRYPT_V2_MAX_WKC_LEN:
        raise ValueError("tls-crypt-v2 WKc has an impossible length")
    (declared,) = struct.unpack("!H", wkc[-_LEN_SIZE:])
    if declared != len(wkc):
        raise ValueError("tls-crypt-v2 WKc length field does not match")
    tag = wkc[:_TAG_SIZE]
    plain = _ctr(server_key, tag, wkc[_TAG_SIZE:-_LEN_SIZE])
    expected = hmac.digest(_auth_key(server_key), wkc[-_LEN_SIZE:] + plain, hashlib.sha256)
    if not hmac.compare_digest(tag, expected):
        raise ValueError("tls-crypt-v2 WKc authentication failed")
    return plain[:STATIC_KEY_SIZE], plain[STATIC_KEY_SIZE:]


def parse_tls_crypt_v2_client_key(text: str) -> tuple[bytes, bytes]:
    """Read a tls-crypt-v2 client key PEM into (Kc, WKc)."""
    raw = _pem_decode(text, _CLIENT_LABEL)
    client_key, wkc = raw[:STATIC_KEY_SIZE], raw[STATIC_KEY_SIZE:]
    if len(wkc) < _TAG_SIZE + STATIC_KEY_SIZE + _LEN_SIZE or len(wkc) > TLS_CRYPT_V2_MAX_WKC_LEN:
        raise ValueError("tls-crypt-v2 client key has an impossible length")
    if struct.unpack("!H", wkc[-_LEN_SIZE:])[0] != len(wkc):
        raise ValueError("tls-crypt-v2 client key: WKc length field does not match")
    return client_key, wkc


def format_tls_crypt_v2_client_key(client_key: bytes, wkc: bytes) -> str:
    """Write a tls-crypt-v2 client key PEM (Kc || WKc) as ``openvpn --genkey`` does."""
    _exact(client_key, STATIC_KEY_SIZE, "tls-crypt-v2 client key")
    return _pem_encode(client_key + wkc, _CLIENT_LABEL)


def _auth_key(server_key: bytes) -> bytes:
    """Ka: the first 32 bytes of the server key's HMAC slot."""
    return server_key[64:96]


def _ctr(server_key: bytes, tag: bytes, data: bytes) -> bytes:
    """AES-256-CTR with Ke (server key bytes 0..31) and IV = the first 16 tag bytes."""
    cipher = Cipher(algorithms.AES(server_key[:32]), modes.CTR(tag[:16]))
    encryptor = cipher.encryptor()
    return encryptor.update(data) + encryptor.finalize()


def _exact(data: bytes, size: int, what: str) -> bytes:
    if len(data) != size:
        raise ValueError(f"{what} must be {size} bytes, got {len(data)}")
    return data


def _between(text: str, begin: str, end: str) -> str:
    """The text between one begin marker and the following end marker."""
    start = text.find(begin)
    if start < 0:
        raise ValueError(f"missing {begin!r}")
    stop = text.find(end, start + len(begin))
    if stop < 0:
        raise ValueError(f"missing {end!r}")
    return text[start + len(begin) : stop]


def _pem_decode(text: str, label: str) -> bytes:
    body = _between(text, f"-----BEGIN {label}-----", f"-----END {label}-----")
    try:
        return base64.b64decode("".join(body.split()), validate=True)
    except binascii.Error as exc:
        raise ValueError(f"{label}: body is not base64") from exc


def _pem_encode(data: bytes, label: str) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    lines = [encoded[i : i + _BASE64_LINE] for i in range(0, len(encoded), _BASE64_LINE)]
    return "\n".join([f"-----BEGIN {label}-----", *lines, f"-----END {label}-----"]) + "\n"
