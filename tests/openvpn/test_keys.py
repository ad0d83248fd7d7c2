"""Key expansion: OpenVPN's PRF vector, an OpenSSL TLS1-PRF cross-check, key2 slicing."""

from __future__ import annotations

import pytest

from sslvpn.openvpn.keys import (
    AEAD_KEY_LENGTHS,
    DataKeys,
    KeySource,
    ekm_key_expansion,
    prf_key_expansion,
    tls1_prf,
)


def test_openvpn_unit_test_prf_vector() -> None:
    """test_crypto.c crypto_test_tls_prf: odd-length secret, overlapping halves."""
    secret = (
        b"Lorem ipsum dolor sit amet, consectetur adipisici elit, sed eiusmod tempor "
        b"incidunt ut labore et dolore magna aliqua."
    )
    seed = b"Quis aute iure reprehenderit in voluptate velit esse cillum dolore"
    assert len(secret) == 117
    expected = "d98c8518c85e946927916acfc2d592fbb1567e4b4b1459e6a904ac2ddab72d67"
    assert tls1_prf(secret, seed, 32).hex() == expected


SOURCE = KeySource(
    pre_master=bytes(range(48)),
    client_random1=bytes(range(100, 132)),
    client_random2=bytes(range(150, 182)),
    server_random1=bytes(range(200, 232)),
    server_random2=bytes(range(50, 82)),
)
CLIENT_SID = bytes.fromhex("1111111111111111")
SERVER_SID = bytes.fromhex("2222222222222222")
# Computed independently with `openssl kdf ... -kdfopt digest:MD5-SHA1 TLS1-PRF`, twice
# (master secret, then key expansion) from the labels and seeds of ssl.c.
EXPECTED_KEY2 = (
    "11b173de13b98c34ccae85519904851e198dc1f20d2d0a5341c88adbf90fbddf"
    "d7e98a5bec3e9a3b01d8ece842ae3efcecf6b1e43757a2b247f8a6919d8cb4fd"
    "2dbe1e9260de6ac34b7b31aaa05c532620b08f8adea084929c8dad8d70af32ae"
    "d78250a96488be350d3bb548d091dc5e68518f7b5f200ca386ae66ef95fb13f8"
    "b451d95bf50b7a3e74b8dc471ad37f888c4ae817747e964cc6f258de06e57b2e"
    "a45d438df0da88bc64e2dac18bb4fd79a63f9838fb7bb85e821e2f0508f046d0"
    "04283c498c0b6f83d4c6785dd0e6491807dc19b4031190c2027a8ed268da010e"
    "729314463c2e374ce1aa8f5154eaca8118feb420f7e477e01d19cf49774c531a"
)


def test_prf_key_expansion_matches_openssl() -> None:
    assert prf_key_expansion(SOURCE, CLIENT_SID, SERVER_SID).hex() == EXPECTED_KEY2


def test_prf_key_expansion_depends_on_every_input() -> None:
    base = prf_key_expansion(SOURCE, CLIENT_SID, SERVER_SID)
    assert prf_key_expansion(SOURCE, SERVER_SID, CLIENT_SID) != base
    swapped = KeySource(
        SOURCE.pre_master,
        SOURCE.server_random1,
        SOURCE.client_random2,
        SOURCE.client_random1,
        SOURCE.server_random2,
    )
    assert prf_key_expansion(swapped, CLIENT_SID, SERVER_SID) != base
    with pytest.raises(ValueError):
        prf_key_expansion(SOURCE, CLIENT_SID[:7], SERVER_SID)
    assert repr(SOURCE.pre_master) not in repr(SOURCE)


@pytest.mark.parametrize("cipher", sorted(AEAD_KEY_LENGTHS))
def test_key2_slicing(cipher: str) -> None:
    key2 = bytes(range(256))
    klen = AEAD_KEY_LENGTHS[cipher]
    server = DataKeys.from_key2(key2, cipher, server=True)
    client = DataKeys.from_key2(key2, cipher, server=False)
    # client->server: key2[0:klen], IV key2[64:72]; server->client: key2[128:], IV [192:200]
    assert client.encrypt.key == key2[0:klen] and client.encrypt.implicit_iv == key2[64:72]
    assert client.decrypt.key == key2[128 : 128 + klen]
    assert client.decrypt.implicit_iv == key2[192:200]
    assert server.encrypt == client.decrypt and server.decrypt == client.encrypt
    assert key2[:4].hex() not in repr(server)


def test_ekm_and_bad_input() -> None:
    assert ekm_key_expansion(bytes(256)) == bytes(256)
    with pytest.raises(ValueError):
        ekm_key_expansion(bytes(255))
    with pytest.raises(ValueError):
        DataKeys.from_key2(bytes(256), "BF-CBC", server=True)
