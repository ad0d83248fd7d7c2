"""IKEv2 key derivation and SK protection against known answers: RFC 4868, RFC 5903,
RFC 7748, and a real strongSwan 5.9.8 exchange (level-4 log of the lab, lab keys only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sslvpn.ipsec.ike import crypto
from sslvpn.ipsec.ike import messages as m
from sslvpn.ipsec.ike.constants import DhGroup, EncrId, IntegId, PrfId

FX = json.loads(
    (Path(__file__).parent.parent / "fixtures/ipsec/strongswan_psk_modp2048.json").read_text()
)


def h(name: str) -> bytes:
    return bytes.fromhex(FX[name])


def _nonces() -> tuple[bytes, bytes]:
    return h("nonce_i_from_octets"), h("nonce_r_from_octets")


def _spis() -> tuple[bytes, bytes]:
    resp = m.pull_message(h("ike_sa_init_response"))
    return resp.header.spi_i, resp.header.spi_r


def test_rfc4868_prf_hmac_sha256_vector() -> None:
    # RFC 4868 §2.7.1, test case 1 (PRF-HMAC-SHA-256)
    out = crypto.prf(PrfId.HMAC_SHA2_256, b"\x0b" * 20, b"Hi There")
    assert out.hex() == "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"


def test_prf_plus_is_the_iterated_construction() -> None:
    key, seed = b"k" * 32, b"seed"
    t1 = crypto.prf(PrfId.HMAC_SHA2_256, key, seed + b"\x01")
    t2 = crypto.prf(PrfId.HMAC_SHA2_256, key, t1 + seed + b"\x02")
    assert crypto.prf_plus(PrfId.HMAC_SHA2_256, key, seed, 50) == (t1 + t2)[:50]


def test_strongswan_skeyseed_and_sk_keys() -> None:
    ni, nr = _nonces()
    spi_i, spi_r = _spis()
    seed = crypto.skeyseed(PrfId.HMAC_SHA2_256, ni, nr, h("dh_shared_secret"))
    assert seed == h("skeyseed")
    keys = crypto.derive_ike_keys(
        PrfId.HMAC_SHA2_256, EncrId.AES_CBC, 256, IntegId.HMAC_SHA2_256_128,
        seed, ni, nr, spi_i, spi_r,
    )
    for name in ("sk_d", "sk_ai", "sk_ar", "sk_ei", "sk_er", "sk_pi", "sk_pr"):
        assert getattr(keys, name) == h(name), name
    assert "sk_d" not in repr(keys) or h("sk_d").hex() not in repr(keys)


def test_strongswan_psk_auth_both_directions() -> None:
    ni, nr = _nonces()
    psk = h("psk")
    assert crypto.prf(PrfId.HMAC_SHA2_256, psk, b"Key Pad for IKEv2") == h("prf_psk_keypad")
    auth_i = crypto.psk_auth(
        PrfId.HMAC_SHA2_256, psk, h("ike_sa_init_request"), nr, h("sk_pi"), h("idi_body")
    )
    auth_r = crypto.psk_auth(
        PrfId.HMAC_SHA2_256, psk, h("ike_sa_init_response"), ni, h("sk_pr"), h("idr_body")
    )
    assert auth_i == h("auth_i")
    assert auth_r == h("auth_r")


def test_strongswan_child_keys_gcm() -> None:
    ni, nr = _nonces()
    assert h("child_seed") == ni + nr
    keys = crypto.derive_child_keys(
        PrfId.HMAC_SHA2_256, h("sk_d"), EncrId.AES_GCM_16, 256, IntegId.NONE, ni, nr
    )
    assert keys.encr_i == h("child_encr_i")
    assert keys.encr_r == h("child_encr_r")
    assert keys.integ_i == keys.integ_r == b""


def test_strongswan_sk_payload_cbc_hmac_request() -> None:
    sk = FX["auth_request_sk"]
    iv, assoc = bytes.fromhex(sk["iv"]), bytes.fromhex(sk["assoc"])
    body = iv + bytes.fromhex(sk["encrypted"]) + bytes.fromhex(sk["icv"])
    inbound = crypto.CbcHmacProtector(h("sk_ei"), h("sk_ai"), rand=lambda n: iv)
    assert inbound.open(assoc, body) == bytes.fromhex(sk["plain"])
    # sealing with the same IV reproduces the ciphertext up to the (arbitrary) padding
    sealed = inbound.seal(assoc, bytes.fromhex(sk["plain"]))
    assert len(sealed) == len(body)
    assert sealed[:16] == iv
    assert sealed[16:-32] == body[16:-32]
    tampered = body[:-1] + bytes([body[-1] ^ 1])
    assert inbound.open(assoc, tampered) is None


def test_strongswan_sk_payload_cbc_hmac_response() -> None:
    sk = FX["auth_response_sk"]
    assoc = bytes.fromhex(sk["assoc"])
    # on the parse side strongSwan's "encrypted" dump already ends with the ICV
    body = bytes.fromhex(sk["iv"]) + bytes.fromhex(sk["encrypted"])
    assert body.endswith(bytes.fromhex(sk["icv"]))
    inbound = crypto.CbcHmacProtector(h("sk_er"), h("sk_ar"), rand=lambda n: bytes(n))
    plain = inbound.open(assoc, body)
    assert plain == bytes.fromhex(sk["plain"])
    assert plain is not None
    payloads = m.pull_payloads(plain, 36)
    ids = m.find(payloads, m.IdPayload)
    assert ids[0].data == b"siteB.lab"


def test_gcm_protector_round_trip_and_tamper() -> None:
    key = bytes(range(36))
    out, inn = crypto.GcmProtector(key), crypto.GcmProtector(key)
    aad = b"A" * 32
    sealed = out.seal(aad, b"inner payloads")
    assert len(sealed) == out.sealed_length(len(b"inner payloads"))
    assert inn.open(aad, sealed) == b"inner payloads"
    assert inn.open(b"B" * 32, sealed) is None
    assert out.seal(aad, b"x")[:8] != sealed[:8]  # explicit IV never repeats


def _fixed(value: bytes) -> crypto.Rand:
    return lambda n: value.rjust(n, b"\x00")


def test_rfc5903_ecp256_vector() -> None:
    i = int("C88F01F510D9AC3F70A292DAA2316DE544E9AAB8AFE84049C62A9C57862D1433", 16)
    r = int("C6EF9C5D78AE012A011164ACB397CE2088685D8F06BF9BE0B283AB46476BEE53", 16)
    ours = crypto.DhExchange(DhGroup.ECP_256, _fixed((i - 1).to_bytes(40, "big")))
    theirs = crypto.DhExchange(DhGroup.ECP_256, _fixed((r - 1).to_bytes(40, "big")))
    assert ours.public.hex().upper() == (
        "DAD0B65394221CF9B051E1FECA5787D098DFE637FC90B9EF945D0C3772581180"
        "5271A0461CDB8252D61F1C456FA3E59AB1F45B33ACCF5F58389E0577B8990BB3"
    )
    girx = "D6840F6B42F6EDAFD13116E0E12565202FEF8E9ECE7DCE03812464D04B9442DE"
    assert ours.shared_secret(theirs.public).hex().upper() == girx
    assert theirs.shared_secret(ours.public).hex().upper() == girx


def test_rfc7748_x25519_vector() -> None:
    alice = crypto.DhExchange(DhGroup.CURVE25519, _fixed(bytes.fromhex(
        "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")))
    bob_public = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    assert alice.public.hex() == (
        "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    )
    assert alice.shared_secret(bob_public).hex() == (
        "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
    )


def test_modp2048_agrees_and_pads() -> None:
    a = crypto.DhExchange(DhGroup.MODP_2048, _fixed(b"\x01" * 32))
    b = crypto.DhExchange(DhGroup.MODP_2048, _fixed(b"\x02" * 32))
    assert len(a.public) == 256
    assert a.shared_secret(b.public) == b.shared_secret(a.public)
    assert len(a.shared_secret(b.public)) == 256


@pytest.mark.parametrize(
    ("group", "bad"),
    [
        (DhGroup.MODP_2048, b"\x00" * 255 + b"\x01"),
        (DhGroup.MODP_2048, b"\x01" * 255),
        (DhGroup.ECP_256, b"\x01" * 64),
        (DhGroup.CURVE25519, bytes(32)),
        (DhGroup.CURVE25519, bytes(31)),
    ],
)
def test_bad_peer_values_are_refused(group: DhGroup, bad: bytes) -> None:
    ours = crypto.DhExchange(group, _fixed(b"\x05" * 32))
    with pytest.raises(crypto.CryptoError):
        ours.shared_secret(bad)


def test_natd_hash_matches_strongswan() -> None:
    # natd_chunk SPIi | 0^8 | 198.18.0.2 | 500 -> the NATD_D hash in the request
    req = m.pull_message(h("ike_sa_init_request"))
    natd_d = m.notifies(req.payloads)[16389].data
    assert crypto.natd_hash(req.header.spi_i, bytes(8), bytes([198, 18, 0, 2]), 500) == natd_d


def test_ecp384_agrees_and_uses_x_only() -> None:
    a = crypto.DhExchange(DhGroup.ECP_384, _fixed(b"\x03" * 56))
    b = crypto.DhExchange(DhGroup.ECP_384, _fixed(b"\x04" * 56))
    assert len(a.public) == 96
    assert a.shared_secret(b.public) == b.shared_secret(a.public)
    assert len(a.shared_secret(b.public)) == 48
