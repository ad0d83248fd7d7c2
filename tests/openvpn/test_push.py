"""PUSH_REPLY contents, continuation, cipher and key-derivation negotiation."""

from __future__ import annotations

import ipaddress

import pytest

from sslvpn.openvpn.data_channel import Compression
from sslvpn.openvpn.key_method import parse_peer_info
from sslvpn.openvpn.push import (
    KeyDerivation,
    PushConfig,
    build_push_reply,
    choose_compression,
    choose_key_derivation,
    negotiate_cipher,
    push_options,
)
from tests.openvpn.test_key_method import LAB_PEER_INFO

LAB = parse_peer_info(LAB_PEER_INFO)
OVPN3 = parse_peer_info(
    "IV_VER=3.12\nIV_NCP=2\nIV_PROTO=8086\n"
    "IV_CIPHERS=AES-128-GCM:AES-192-GCM:AES-256-GCM:CHACHA20-POLY1305\n"
)
OLD = parse_peer_info("IV_VER=2.4.12\nIV_NCP=2\nIV_PROTO=2\n")
V25 = parse_peer_info("IV_VER=2.5.9\nIV_PROTO=30\nIV_CIPHERS=AES-256-GCM\n")


def _config(**kw: object) -> PushConfig:
    base: dict[str, object] = {
        "ifconfig": ipaddress.IPv4Interface("10.8.0.2/24"),
        "route_gateway": ipaddress.IPv4Address("10.8.0.1"),
        "peer_id": 0,
        "routes": (ipaddress.IPv4Network("10.10.0.0/24"),),
    }
    base.update(kw)
    return PushConfig(**base)  # type: ignore[arg-type]


def test_lab_reply_matches_what_openvpn_26_pushed() -> None:
    options = push_options(_config(), peer=LAB, cipher="AES-256-GCM",
                           derivation=KeyDerivation.TLS_EKM)
    # 2.6.14 pushed (server log): same set minus dyn-tls-crypt, which we do not implement.
    assert build_push_reply(options) == [
        "PUSH_REPLY,route 10.10.0.0 255.255.255.0,route-gateway 10.8.0.1,topology subnet,"
        "ping 10,ping-restart 60,ifconfig 10.8.0.2 255.255.255.0,peer-id 0,"
        "cipher AES-256-GCM,protocol-flags cc-exit tls-ekm,tun-mtu 1500"
    ]


def test_ipv6_dns_domain_and_prf() -> None:
    config = _config(
        ifconfig_ipv6=ipaddress.IPv6Interface("fd00:8::1005/64"),
        gateway_ipv6=ipaddress.IPv6Address("fd00:8::1"),
        routes_ipv6=(ipaddress.IPv6Network("fd00:10::/64"),),
        dns=(ipaddress.IPv4Address("10.10.0.53"), ipaddress.IPv6Address("fd00:10::53")),
        domains=("corp.example",),
        peer_id=7,
    )
    options = push_options(config, peer=LAB, cipher="AES-128-GCM", derivation=KeyDerivation.PRF)
    assert "ifconfig-ipv6 fd00:8::1005/64 fd00:8::1" in options
    assert "route-ipv6 fd00:10::/64" in options
    assert "dhcp-option DNS 10.10.0.53" in options and "dhcp-option DNS6 fd00:10::53" in options
    assert "dhcp-option DOMAIN corp.example" in options
    assert "protocol-flags cc-exit" in options and "peer-id 7" in options
    assert not any("tls-ekm" in o or "redirect-gateway" in o for o in options)


def test_no_ipv6_without_pool_and_flags_follow_iv_proto() -> None:
    options = push_options(_config(), peer=OLD, cipher="AES-256-GCM", derivation=KeyDerivation.PRF)
    assert not any(o.startswith(("ifconfig-ipv6", "protocol-flags", "key-derivation", "tun-mtu"))
                   for o in options)
    assert "peer-id 0" in options
    v25 = push_options(_config(), peer=V25, cipher="AES-256-GCM",
                       derivation=KeyDerivation.TLS_EKM)
    assert "key-derivation tls-ekm" in v25 and not any("protocol-flags" in o for o in v25)
    # openvpn3 without the EKM bit: cc-exit only, never aead-epoch although it advertises it
    o3 = push_options(_config(), peer=OVPN3, cipher="AES-256-GCM",
                      derivation=KeyDerivation.TLS_EKM)
    assert "protocol-flags cc-exit" in o3 and not any("epoch" in o for o in o3)


def test_continuation_splits_long_replies_under_1kb() -> None:
    routes = tuple(ipaddress.IPv4Network(f"10.{i}.0.0/16") for i in range(100))
    options = push_options(_config(routes=routes), peer=LAB, cipher="AES-256-GCM",
                           derivation=KeyDerivation.PRF)
    messages = build_push_reply(options)
    assert len(messages) >= 3
    assert all(len(m) + 1 < 1024 and m.startswith("PUSH_REPLY,") for m in messages)
    assert all(m.endswith(",push-continuation 2") for m in messages[:-1])
    assert messages[-1].endswith(",push-continuation 1")
    rebuilt = [opt for m in messages for opt in m.split(",")[1:] if "continuation" not in opt]
    assert rebuilt == options


def test_reply_rejects_bad_options() -> None:
    with pytest.raises(ValueError, match="without options"):
        build_push_reply([])
    with pytest.raises(ValueError):
        build_push_reply(["route a,b"])
    with pytest.raises(ValueError):
        _config(domains=("evil,route 0.0.0.0",))
    with pytest.raises(ValueError):
        _config(peer_id=0xFFFFFF)


def test_cipher_negotiation() -> None:
    assert negotiate_cipher(LAB) == "AES-256-GCM"
    assert negotiate_cipher(LAB, ["CHACHA20-POLY1305", "AES-256-GCM"]) == "CHACHA20-POLY1305"
    assert negotiate_cipher(OLD) == "AES-256-GCM"  # IV_NCP=2 implies the two GCMs
    assert negotiate_cipher(parse_peer_info("IV_CIPHERS=BF-CBC:AES-256-CBC\n")) is None
    assert negotiate_cipher(parse_peer_info("")) is None
    assert negotiate_cipher(LAB, ["BF-CBC"]) is None  # never CBC, even if configured


def test_key_derivation_and_compression_choice() -> None:
    assert choose_key_derivation(LAB) is KeyDerivation.TLS_EKM
    assert choose_key_derivation(LAB, allow_ekm=False) is KeyDerivation.PRF
    assert choose_key_derivation(OVPN3) is KeyDerivation.PRF
    assert choose_compression(LAB, occ_has_comp_lzo=False) is Compression.NONE
    assert choose_compression(LAB, occ_has_comp_lzo=True) is Compression.STUB_V2
    assert choose_compression(OLD, occ_has_comp_lzo=True) is Compression.LZO_STUB
    lzo = push_options(_config(), peer=OLD, cipher="AES-256-GCM", derivation=KeyDerivation.PRF,
                       compression=Compression.LZO_STUB)
    assert "comp-lzo no" in lzo
