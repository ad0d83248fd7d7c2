"""Key-method 2 records, peer-info and OCC strings against what the lab's 2.6.14 sent."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sslvpn.openvpn.key_method import (
    SOFTWARE_TEXT_MAX,
    ClientSoftware,
    IvProto,
    KeyMethod2,
    KeyMethodError,
    client_software,
    occ_echoed_cipher,
    occ_options_string,
    occ_wants_compression_framing,
    parse_peer_info,
    pull_key_method2,
    push_key_method2,
)

# Peer info printed by the lab's 2.6.14 server for the stock Debian client
# (openvpn-lab/logs/server-udp-tc-aes256gcm-verb7.log), newline-terminated like ssl.c.
LAB_PEER_INFO = (
    "IV_VER=2.6.14\nIV_PLAT=linux\nIV_TCPNL=1\nIV_MTU=1600\nIV_NCP=2\n"
    "IV_CIPHERS=AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305\nIV_PROTO=990\n"
    "IV_LZO_STUB=1\nIV_COMP_STUB=1\nIV_COMP_STUBv2=1\n"
)
LAB_CLIENT_OCC = (
    "V4,dev-type tun,link-mtu 1541,tun-mtu 1500,proto UDPv4,auth SHA1,keysize 128,"
    "key-method 2,tls-client"
)
LAB_SERVER_OCC = LAB_CLIENT_OCC.replace("tls-client", "tls-server")
# "Local Options String" and "Expected Remote Options String" logged at verb 4 by
# OpenVPN 2.4.12 (mbed TLS) and 2.5.11 (OpenSSL) built from their tags, each with the
# unmodified rendered profile, over TCP and UDP.
OCC_24_TCP = (
    "V4,dev-type tun,link-mtu 1543,tun-mtu 1500,proto TCPv4_CLIENT,cipher BF-CBC,auth SHA1,"
    "keysize 128,key-method 2,tls-client",
    "V4,dev-type tun,link-mtu 1543,tun-mtu 1500,proto TCPv4_SERVER,cipher BF-CBC,auth SHA1,"
    "keysize 128,key-method 2,tls-server",
)
OCC_24_UDP = (
    "V4,dev-type tun,link-mtu 1541,tun-mtu 1500,proto UDPv4,cipher BF-CBC,auth SHA1,"
    "keysize 128,key-method 2,tls-client",
    "V4,dev-type tun,link-mtu 1541,tun-mtu 1500,proto UDPv4,cipher BF-CBC,auth SHA1,"
    "keysize 128,key-method 2,tls-server",
)
OCC_25_TCP = (
    "V4,dev-type tun,link-mtu 1543,tun-mtu 1500,proto TCPv4_CLIENT,auth SHA1,keysize 128,"
    "key-method 2,tls-client",
    "V4,dev-type tun,link-mtu 1543,tun-mtu 1500,proto TCPv4_SERVER,auth SHA1,keysize 128,"
    "key-method 2,tls-server",
)
OCC_25_UDP = (LAB_CLIENT_OCC, LAB_SERVER_OCC)


def test_lab_peer_info_is_typed() -> None:
    info = parse_peer_info(LAB_PEER_INFO)
    assert info.version == "2.6.14" and info.platform == "linux"
    assert info.ciphers == ("AES-256-GCM", "AES-128-GCM", "CHACHA20-POLY1305")
    assert info.ncp == 2 and info.mtu == 1600 and info.comp_stub_v2 and info.lzo_stub
    assert int(info.proto) == 990
    for flag in (IvProto.DATA_V2, IvProto.REQUEST_PUSH, IvProto.TLS_KEY_EXPORT,
                 IvProto.CC_EXIT_NOTIFY, IvProto.DYN_TLS_CRYPT):
        assert info.supports(flag)
    assert not info.supports(IvProto.DATA_EPOCH)
    assert info.get("IV_TCPNL") == "1" and info.get("IV_SSO", "none") == "none"


def test_openvpn3_peer_info_and_garbage_lines() -> None:
    info = parse_peer_info("IV_VER=3.12_git:master\r\nIV_PROTO=8086\nnonsense\n=x\nIV_MTU=abc\n")
    assert info.version == "3.12_git:master"
    assert info.supports(IvProto.DATA_EPOCH) and not info.supports(IvProto.TLS_KEY_EXPORT)
    assert info.mtu is None and info.ciphers == ()
    assert parse_peer_info("IV_PROTO=-5\n").proto == IvProto(0)


def test_client_record_bytes_layout() -> None:
    record = KeyMethod2(
        random1=b"\x11" * 32, random2=b"\x22" * 32, options="V4", pre_master=b"\x33" * 48,
        username="", password="", peer_info="IV_VER=2.6.14\n",
    )
    wire = push_key_method2(record)
    expected = (
        b"\0\0\0\0\x02" + b"\x33" * 48 + b"\x11" * 32 + b"\x22" * 32
        + b"\x00\x03V4\0" + b"\x00\x00" + b"\x00\x00" + b"\x00\x0fIV_VER=2.6.14\n\0"
    )
    assert wire == expected
    assert pull_key_method2(wire, from_client=True) == record


def test_server_record_has_no_pre_master_and_empty_strings() -> None:
    record = KeyMethod2(random1=b"a" * 32, random2=b"b" * 32, options=LAB_SERVER_OCC)
    wire = push_key_method2(record)
    assert wire[:5] == b"\0\0\0\0\x02" and wire.endswith(b"\0\0" * 3)
    assert len(wire) == 5 + 64 + 2 + len(LAB_SERVER_OCC) + 1 + 6
    assert pull_key_method2(wire, from_client=False) == record


def test_reader_accepts_nul_only_strings_absent_optionals_and_trailing_bytes() -> None:
    base = b"\0\0\0\0\x02" + b"\x33" * 48 + b"\x11" * 64 + b"\x00\x03V4\0"
    assert pull_key_method2(base, from_client=True).username == ""
    record = pull_key_method2(base + b"\x00\x01\0\x00\x04pw1\0\x00\x00junk", from_client=True)
    assert record.password == "pw1" and record.peer_info == ""


def test_secrets_not_in_repr() -> None:
    record = KeyMethod2(b"r" * 32, b"s" * 32, "V4", b"p" * 48, "bob", "hunter2", "")
    text = repr(record)
    assert "hunter2" not in text and "ppp" not in text and "bob" in text


@pytest.mark.parametrize(
    "wire",
    [
        b"",
        b"\0\0\0\0\x01" + b"\0" * 200,  # key-method 1
        b"\0\0\0\0\x02" + b"\0" * 100,  # truncated randoms
        b"\0\0\0\0\x02" + b"\0" * 112 + b"\x02\x01V4",  # options over 512 bytes
        b"\0\0\0\0\x02" + b"\0" * 112 + b"\x00\x03\xff\xfe\0",  # not UTF-8
    ],
)
def test_malformed_records_raise_key_method_error(wire: bytes) -> None:
    with pytest.raises(KeyMethodError):
        pull_key_method2(wire, from_client=True)


@given(st.binary(max_size=600), st.booleans())
def test_random_bytes_only_raise_key_method_error(data: bytes, from_client: bool) -> None:
    try:
        pull_key_method2(data, from_client=from_client)
    except KeyMethodError:
        pass


def server_occ_for(client_options: str, *, tcp: bool) -> str:
    """What the server session sends a client whose own string is ``client_options``."""
    return occ_options_string(
        server=True, tcp=tcp, compression=occ_wants_compression_framing(client_options),
        cipher=occ_echoed_cipher(client_options),
    )


@pytest.mark.parametrize(
    ("strings", "tcp"),
    [(OCC_24_TCP, True), (OCC_24_UDP, False), (OCC_25_TCP, True), (OCC_25_UDP, False)],
    ids=["2.4-tcp", "2.4-udp", "2.5-tcp", "2.5-udp"],
)
def test_server_occ_is_what_older_clients_expect(strings: tuple[str, str], tcp: bool) -> None:
    local, expected_remote = strings
    assert server_occ_for(local, tcp=tcp) == expected_remote


def test_server_occ_mirrors_compression_framing_like_compress_migrate() -> None:
    with_comp = OCC_24_TCP[0].replace("link-mtu 1543", "link-mtu 1544").replace(
        ",proto TCPv4_CLIENT", ",proto TCPv4_CLIENT,comp-lzo")
    assert server_occ_for(with_comp, tcp=True) == with_comp.replace("CLIENT", "SERVER").replace(
        "tls-client", "tls-server")


def test_only_the_implicit_fallback_cipher_is_echoed() -> None:
    assert occ_echoed_cipher(OCC_24_UDP[0]) == "BF-CBC"
    assert occ_echoed_cipher(OCC_24_UDP[0].replace("BF-CBC", "AES-256-CBC")) is None
    assert occ_echoed_cipher(OCC_25_UDP[0]) is None
    assert occ_echoed_cipher("V4,cipher BF-CBC-X") is None


def test_client_software_keeps_only_what_describes_the_program() -> None:
    info = parse_peer_info(
        "IV_VER=2.6.12\nIV_PLAT=win\nIV_PLAT_VER=10.0.19045\nIV_GUI_VER=OpenVPN-GUI 11.50\n"
        "IV_SSO=webauth,openurl\nIV_HWADDR=00:11:22:33:44:55\nUV_TOKEN=secret\n")
    assert client_software(info) == ClientSoftware("2.6.12", "win 10.0.19045", "OpenVPN-GUI 11.50")
    assert client_software(parse_peer_info("")) == ClientSoftware(None, None, None)
    hostile = client_software(parse_peer_info("IV_VER=2.4\x1b[31m\x00\nIV_GUI_VER=" + "x" * 500))
    assert hostile.version == "2.4[31m"  # no control characters reach a terminal or log
    assert hostile.gui == "x" * SOFTWARE_TEXT_MAX


def test_occ_strings() -> None:
    assert occ_options_string(server=True, tcp=False) == LAB_SERVER_OCC
    assert occ_options_string(server=True, tcp=True) == OCC_25_TCP[1]
    assert occ_options_string(server=False, tcp=False) == LAB_CLIENT_OCC
    assert not occ_wants_compression_framing(LAB_CLIENT_OCC)
    assert occ_wants_compression_framing(LAB_CLIENT_OCC + ",comp-lzo")
