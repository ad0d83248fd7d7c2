"""ESP packet protection: a published known answer, independent re-computation, checks, drops."""

from __future__ import annotations

import hmac
import struct

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from sslvpn.ipsec.esp.packet import (
    HMAC_INTEGRITY,
    DropReason,
    EspCipher,
    EspKeys,
    InboundSa,
    OutboundSa,
    SequenceExhausted,
    key_lengths,
)

# draft-mcgrew-gcm-test-01 section 4, the AES-256 ESP test case (SPI 4a2cbfe3, seq 2).
MCGREW_KEYMAT = bytes.fromhex(
    "abbccddef00112233445566778899aab" "abbccddef00112233445566778899aab" "11223344"
)
MCGREW_PACKET = bytes.fromhex(
    "4a2cbfe3000000020102030405060708"
    "ff425c9b724599df7a3bcd510194e00d6a78107f1b0b1cbf06efae9d65a5d763"
    "748a637985771d347f0545659f14e99def842d8eb335f4eecfdbf831824b4c49"
    "15956c96"
)
MCGREW_PAYLOAD = bytes.fromhex(
    "4500003069a6400080062690c0a801029389155e0a9e008b2dc57ee000000000"
    "7002400020bf0000020405b401010402"
)

INNER = bytes.fromhex("4500001c000100004001f97cc0a80001c0a80002" "0800f7ff00000000")


def _keys(cipher: EspCipher, seed: int = 1) -> EspKeys:
    enc_len, integ_len = key_lengths(cipher)
    return EspKeys(bytes([seed]) * enc_len, bytes([seed + 1]) * integ_len)


def _pair(cipher: EspCipher, spi: int = 0xC0FFEE01) -> tuple[OutboundSa, InboundSa]:
    counter = iter(range(1, 1 << 30))
    rand = lambda n: next(counter).to_bytes(n, "big")  # noqa: E731 - deterministic IVs
    return (
        OutboundSa(spi, cipher, _keys(cipher), rand=rand),
        InboundSa(spi, cipher, _keys(cipher)),
    )


def test_gcm_known_answer_from_draft_mcgrew() -> None:
    sa = InboundSa(0x4A2CBFE3, EspCipher.AES_GCM16, EspKeys(MCGREW_KEYMAT))
    assert sa.unprotect(MCGREW_PACKET) == (1, MCGREW_PAYLOAD)
    # the trailer says next header 1, which tunnel mode does not carry
    sa2 = InboundSa(0x4A2CBFE3, EspCipher.AES_GCM16, EspKeys(MCGREW_KEYMAT))
    assert sa2.open(MCGREW_PACKET) is DropReason.UNSUPPORTED_NEXT_HEADER


def test_gcm_seal_matches_an_independent_rfc4106_computation() -> None:
    out, _ = _pair(EspCipher.AES_GCM16)
    packet = out.seal(INNER)
    key = _keys(EspCipher.AES_GCM16).encryption
    header = struct.pack("!II", 0xC0FFEE01, 1)
    iv = (1).to_bytes(8, "big")
    pad = -(len(INNER) + 2) % 4
    plaintext = INNER + bytes(range(1, pad + 1)) + bytes((pad, 4))
    expected = header + iv + AESGCM(key[:32]).encrypt(key[32:] + iv, plaintext, header)
    assert packet == expected


CBC_CIPHERS = [EspCipher.AES_CBC_SHA256, EspCipher.AES_CBC_SHA384, EspCipher.AES_CBC_SHA512]
# RFC 4868 section 2.7.2, test cases AUTH256-1, AUTH384-1, AUTH512-1: key 0x0b..., "Hi There"
RFC4868_AUTH_1 = {
    EspCipher.AES_CBC_SHA256: "198a607eb44bfbc69903a0f1cf2bbdc5",
    EspCipher.AES_CBC_SHA384: "b6a8d5636f5c6a7224f9977dcf7ee6c7fb6d0c48cbdee973",
    EspCipher.AES_CBC_SHA512: "637edc6e01dce7e6742a99451aae82df23da3e92439e590e43e761b33e910fb8",
}


@pytest.mark.parametrize("cipher", CBC_CIPHERS)
def test_hmac_sha2_truncation_matches_rfc4868_vectors(cipher: EspCipher) -> None:
    name, key_len, icv_len = HMAC_INTEGRITY[cipher]
    assert key_lengths(cipher) == (32, key_len)
    assert hmac.digest(b"\x0b" * key_len, b"Hi There", name)[:icv_len].hex() == (
        RFC4868_AUTH_1[cipher])


@pytest.mark.parametrize("cipher", CBC_CIPHERS)
def test_cbc_seal_matches_an_independent_rfc4868_computation(cipher: EspCipher) -> None:
    iv = bytes(range(16))
    keys = _keys(cipher)
    out = OutboundSa(7, cipher, keys, rand=lambda n: iv[:n])
    packet = out.seal(INNER)
    header = struct.pack("!II", 7, 1)
    pad = -(len(INNER) + 2) % 16
    plaintext = INNER + bytes(range(1, pad + 1)) + bytes((pad, 4))
    enc = Cipher(algorithms.AES(keys.encryption), modes.CBC(iv)).encryptor()
    body = iv + enc.update(plaintext) + enc.finalize()
    name, _, icv_len = HMAC_INTEGRITY[cipher]
    icv = hmac.new(keys.integrity, header + body, name).digest()[:icv_len]
    assert packet == header + body + icv
    assert InboundSa(7, cipher, keys).open(packet) == INNER


@pytest.mark.parametrize("cipher", list(EspCipher))
@given(inner=st.binary(min_size=0, max_size=1500))
@settings(max_examples=40, deadline=None)
def test_round_trip_and_alignment(cipher: EspCipher, inner: bytes) -> None:
    out, inb = _pair(cipher)
    packet = out.seal(inner, next_header=41)
    align = 4 if cipher is EspCipher.AES_GCM16 else 16
    overhead = 8 + (8 + 16 if cipher is EspCipher.AES_GCM16 else 16 + HMAC_INTEGRITY[cipher][2])
    assert (len(packet) - overhead) % align == 0
    assert inb.open(packet) == inner
    assert (inb.packets, inb.bytes, out.packets, out.bytes) == (1, len(inner), 1, len(inner))


@pytest.mark.parametrize("cipher", list(EspCipher))
def test_replay_and_too_old_are_dropped_and_counted(cipher: EspCipher) -> None:
    out, inb = _pair(cipher)
    packets = [out.seal(INNER) for _ in range(200)]
    assert inb.open(packets[199]) == INNER
    assert inb.open(packets[199]) is DropReason.REPLAYED
    assert inb.open(packets[199 - 127]) == INNER  # still inside the 128-packet window
    assert inb.open(packets[10]) is DropReason.TOO_OLD
    assert inb.drops == {DropReason.REPLAYED: 1, DropReason.TOO_OLD: 1}


@pytest.mark.parametrize("cipher", list(EspCipher))
def test_tampering_is_a_bad_icv_and_does_not_advance_the_window(cipher: EspCipher) -> None:
    out, inb = _pair(cipher)
    good = out.seal(INNER)
    for index in (4, 8, len(good) // 2, len(good) - 1):
        bad = bytearray(good)
        bad[index] ^= 0x01
        assert inb.open(bytes(bad)) is DropReason.BAD_ICV
    assert inb.replay.top == 0
    assert inb.open(good) == INNER


@pytest.mark.parametrize("cipher", list(EspCipher))
def test_wrong_key_is_a_bad_icv(cipher: EspCipher) -> None:
    out, _ = _pair(cipher)
    other = InboundSa(out.spi, cipher, _keys(cipher, seed=9))
    assert other.open(out.seal(INNER)) is DropReason.BAD_ICV


def _reseal_gcm(trailer_payload: bytes, seq: int = 1) -> bytes:
    key = _keys(EspCipher.AES_GCM16).encryption
    header = struct.pack("!II", 0xC0FFEE01, seq)
    iv = seq.to_bytes(8, "big")
    return header + iv + AESGCM(key[:32]).encrypt(key[32:] + iv, trailer_payload, header)


@pytest.mark.parametrize(
    ("plaintext", "reason"),
    [
        (INNER + b"\x00\x00\x02\x04", DropReason.BAD_PADDING),  # zero padding, as pvpn sends
        (INNER + b"\x01\x03\x02\x04", DropReason.BAD_PADDING),
        (b"\x00\x00\xfe\x04", DropReason.BAD_LENGTH),  # pad length beyond the payload
        (b"\x00\x00\x00\x3b", DropReason.DUMMY),
        (INNER + b"\x01\x02\x02\x11", DropReason.UNSUPPORTED_NEXT_HEADER),
        (b"\x00\x00\x00\x04\x00", DropReason.BAD_LENGTH),  # not 4-byte aligned
    ],
)
def test_trailer_checks(plaintext: bytes, reason: DropReason) -> None:
    _, inb = _pair(EspCipher.AES_GCM16)
    assert inb.open(_reseal_gcm(plaintext)) is reason
    assert inb.drops[reason] == 1


def test_sequence_numbers_start_at_one_and_never_wrap() -> None:
    out, _ = _pair(EspCipher.AES_GCM16)
    assert out.seal(b"x")[4:8] == b"\x00\x00\x00\x01"
    out.seq = 0xFFFFFFFE
    assert out.seal(b"x")[4:8] == b"\xff\xff\xff\xff"
    with pytest.raises(SequenceExhausted):
        out.seal(b"x")


def test_keys_are_checked_and_never_shown() -> None:
    with pytest.raises(ValueError, match="key material"):
        InboundSa(1, EspCipher.AES_GCM16, EspKeys(b"k" * 32))
    secret = EspKeys(b"\x11" * 32, b"\x22" * 32)
    assert "11" not in repr(secret) and "redacted" in repr(secret)


@pytest.mark.parametrize("cipher", list(EspCipher))
@given(data=st.binary(max_size=200))
@settings(max_examples=200, deadline=None)
def test_random_bytes_never_raise(cipher: EspCipher, data: bytes) -> None:
    _, inb = _pair(cipher)
    assert isinstance(inb.open(struct.pack("!I", inb.spi) + data), DropReason)


@pytest.mark.parametrize("cipher", list(EspCipher))
@pytest.mark.parametrize("bits", [128, 192])
def test_shorter_aes_keys_round_trip(cipher: EspCipher, bits: int) -> None:
    enc_len, integ_len = key_lengths(cipher, bits)
    keys = EspKeys(b"\x05" * enc_len, b"\x06" * integ_len)
    out = OutboundSa(9, cipher, keys)
    assert InboundSa(9, cipher, keys).open(out.seal(INNER)) == INNER
    with pytest.raises(ValueError, match="not 128, 192 or 256"):
        key_lengths(cipher, 512)
