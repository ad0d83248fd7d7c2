"""OpenVPN key files: ours must equal what `openvpn --genkey` writes and read what it writes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sslvpn.openvpn.static_key import (
    METADATA_TYPE_USER,
    STATIC_KEY_SIZE,
    TLS_CRYPT_V2_MAX_METADATA_LEN,
    format_static_key,
    format_tls_crypt_v2_client_key,
    format_tls_crypt_v2_server_key,
    generate_static_key,
    generate_tls_crypt_v2_server_key,
    parse_static_key,
    parse_tls_crypt_v2_client_key,
    parse_tls_crypt_v2_server_key,
    timestamp_metadata,
    unwrap_client_key,
    wrap_client_key,
)

FIXTURES = Path(__file__).parent / "fixtures"


def _counting_rand(size: int) -> bytes:
    return bytes(i % 256 for i in range(size))


def _openvpn(*args: str) -> None:
    subprocess.run(["openvpn", *args], check=True, capture_output=True, timeout=30)


def test_static_key_fixture_round_trips_byte_for_byte() -> None:
    text = (FIXTURES / "openvpn-static.key").read_text()
    key = parse_static_key(text)
    assert len(key) == STATIC_KEY_SIZE
    assert format_static_key(key) == text


def test_static_key_from_live_openvpn_genkey(tmp_path: Path) -> None:
    path = tmp_path / "ta.key"
    _openvpn("--genkey", "secret", str(path))
    text = path.read_text()
    assert format_static_key(parse_static_key(text)) == text


def test_static_key_layout_is_sixteen_bytes_per_line() -> None:
    text = format_static_key(_counting_rand(STATIC_KEY_SIZE))
    lines = text.splitlines()
    assert lines[:4] == [
        "#",
        "# 2048 bit OpenVPN static key",
        "#",
        "-----BEGIN OpenVPN Static key V1-----",
    ]
    assert lines[4] == "000102030405060708090a0b0c0d0e0f"
    assert len(lines) == 4 + 16 + 1
    assert lines[-1] == "-----END OpenVPN Static key V1-----"


def test_static_key_parser_tolerates_comments_and_whitespace() -> None:
    key = _counting_rand(STATIC_KEY_SIZE)
    text = "# note\n" + format_static_key(key).replace("\n", "\r\n  ")
    assert parse_static_key(text) == key


@pytest.mark.parametrize(
    "text",
    [
        "",
        "-----BEGIN OpenVPN Static key V1-----\n00\n-----END OpenVPN Static key V1-----\n",
        "-----BEGIN OpenVPN Static key V1-----\n"
        + "zz" * 256
        + "\n-----END OpenVPN Static key V1-----",
        "-----BEGIN OpenVPN Static key V1-----\n" + "00" * 256,
        "-----BEGIN OpenVPN Static key V1-----\n"
        + "00" * 257
        + "\n-----END OpenVPN Static key V1-----",
    ],
)
def test_static_key_parser_rejects_malformed_files(text: str) -> None:
    with pytest.raises(ValueError):
        parse_static_key(text)


def test_generators_use_the_injected_randomness() -> None:
    assert generate_static_key(_counting_rand) == _counting_rand(256)
    assert generate_tls_crypt_v2_server_key(_counting_rand) == _counting_rand(128)
    with pytest.raises(ValueError):
        generate_static_key(lambda n: b"\x00" * (n - 1))


def test_v2_fixture_client_key_unwraps_with_fixture_server_key() -> None:
    server_text = (FIXTURES / "openvpn-v2-server.key").read_text()
    client_text = (FIXTURES / "openvpn-v2-client.key").read_text()
    server_key = parse_tls_crypt_v2_server_key(server_text)
    client_key, wkc = parse_tls_crypt_v2_client_key(client_text)
    assert format_tls_crypt_v2_server_key(server_key) == server_text
    assert format_tls_crypt_v2_client_key(client_key, wkc) == client_text
    unwrapped, metadata = unwrap_client_key(server_key, wkc)
    assert unwrapped == client_key
    assert metadata[0] == 0x01 and len(metadata) == 9  # openvpn's default TIMESTAMP metadata
    assert wrap_client_key(server_key, client_key, metadata) == wkc


def test_v2_live_openvpn_keys_with_user_metadata(tmp_path: Path) -> None:
    server, client = tmp_path / "s.key", tmp_path / "c.key"
    _openvpn("--genkey", "tls-crypt-v2-server", str(server))
    # openvpn takes USER metadata as base64 and prefixes the USER type byte.
    _openvpn(
        "--genkey", "tls-crypt-v2-client", str(client), "YWxpY2U=", "--tls-crypt-v2", str(server)
    )
    server_key = parse_tls_crypt_v2_server_key(server.read_text())
    client_key, wkc = parse_tls_crypt_v2_client_key(client.read_text())
    assert unwrap_client_key(server_key, wkc) == (
        client_key,
        bytes([METADATA_TYPE_USER]) + b"alice",
    )
    assert format_tls_crypt_v2_server_key(server_key) == server.read_text()


def test_openvpn_wraps_with_our_server_key_and_we_unwrap(tmp_path: Path) -> None:
    server_key = generate_tls_crypt_v2_server_key()
    server, client = tmp_path / "s.key", tmp_path / "c.key"
    server.write_text(format_tls_crypt_v2_server_key(server_key))
    _openvpn("--genkey", "tls-crypt-v2-client", str(client), "--tls-crypt-v2", str(server))
    client_key, wkc = parse_tls_crypt_v2_client_key(client.read_text())
    assert unwrap_client_key(server_key, wkc)[0] == client_key


def test_wrap_unwrap_round_trip_and_lengths() -> None:
    server_key = generate_tls_crypt_v2_server_key()
    client_key = generate_static_key()
    metadata = timestamp_metadata(1_700_000_000)
    wkc = wrap_client_key(server_key, client_key, metadata)
    assert len(wkc) == 32 + 256 + 9 + 2 == int.from_bytes(wkc[-2:], "big")
    assert unwrap_client_key(server_key, wkc) == (client_key, metadata)
    longest = bytes(TLS_CRYPT_V2_MAX_METADATA_LEN)
    assert len(wrap_client_key(server_key, client_key, longest)) == 1024
    with pytest.raises(ValueError):
        wrap_client_key(server_key, client_key, longest + b"x")


def test_unwrap_rejects_tampering_wrong_key_and_bad_lengths() -> None:
    server_key = generate_tls_crypt_v2_server_key()
    wkc = wrap_client_key(server_key, generate_static_key(), b"\x00x")
    for index in (0, 40, len(wkc) - 3):
        tampered = bytearray(wkc)
        tampered[index] ^= 1
        with pytest.raises(ValueError):
            unwrap_client_key(server_key, bytes(tampered))
    with pytest.raises(ValueError):
        unwrap_client_key(generate_tls_crypt_v2_server_key(), wkc)
    with pytest.raises(ValueError):
        unwrap_client_key(server_key, wkc[:-2] + b"\x01\x00")
    with pytest.raises(ValueError):
        unwrap_client_key(server_key, wkc[:100])
    with pytest.raises(ValueError):
        unwrap_client_key(server_key, bytes(2000))


def test_client_key_parser_rejects_bad_bodies() -> None:
    with pytest.raises(ValueError):
        parse_tls_crypt_v2_client_key(
            "-----BEGIN OpenVPN tls-crypt-v2 client key-----\n!!!\n"
            "-----END OpenVPN tls-crypt-v2 client key-----\n"
        )
    short = format_tls_crypt_v2_client_key(bytes(256), bytes(10))
    with pytest.raises(ValueError):
        parse_tls_crypt_v2_client_key(short)
    with pytest.raises(ValueError):
        parse_tls_crypt_v2_server_key(format_tls_crypt_v2_client_key(bytes(256), bytes(300)))


@pytest.mark.parametrize(
    ("name", "metadata"),
    [
        # OpenVPN's test_tls_crypt.c: time mocked to 0, and custom metadata "AABBCCDD" (base64)
        ("openvpn-unittest-v2-client.key", timestamp_metadata(0)),
        ("openvpn-unittest-v2-client-metadata.key", b"\x00" + bytes.fromhex("0000410820c3")),
    ],
)
def test_openvpn_unit_test_vectors(name: str, metadata: bytes) -> None:
    server_key = parse_tls_crypt_v2_server_key(
        (FIXTURES / "openvpn-unittest-v2-server.key").read_text()
    )
    assert server_key == bytes(range(128))
    text = (FIXTURES / name).read_text()
    client_key, wkc = parse_tls_crypt_v2_client_key(text)
    assert client_key == bytes(range(256))
    assert unwrap_client_key(server_key, wkc) == (client_key, metadata)
    assert wrap_client_key(server_key, client_key, metadata) == wkc
    assert format_tls_crypt_v2_client_key(client_key, wkc) == text


@settings(max_examples=300, deadline=None)
@given(wkc=st.binary(max_size=1100))
def test_unwrap_of_peer_garbage_only_raises_value_error(wkc: bytes) -> None:
    """WKc arrives from unauthenticated peers: anything wrong must be a ValueError."""
    with pytest.raises(ValueError):
        unwrap_client_key(bytes(range(128)), wkc)
