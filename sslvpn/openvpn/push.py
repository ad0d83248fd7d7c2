"""PUSH_REPLY construction and data-channel cipher / key-derivation negotiation.

Rules from OpenVPN push.c (prepare_push_reply, send_push_reply with push-continuation),
ssl_ncp.c (ncp_get_best_cipher) and openvpn3 proto.hpp (it aborts on unknown
protocol-flags, so only flags the client advertised in IV_PROTO are ever sent; never
``aead-epoch``). Every message stays under ``PUSH_BUNDLE_SIZE`` bytes.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

from sslvpn.openvpn.data_channel import Compression
from sslvpn.openvpn.key_method import IvProto, PeerInfo

PUSH_BUNDLE_SIZE = 1024  # push.c PUSH_BUNDLE_SIZE: bytes per PUSH_REPLY message
CONTINUATION_MORE = ",push-continuation 2"  # push.c: non-final part
CONTINUATION_LAST = ",push-continuation 1"  # push.c: final part of a multi-part reply
SUPPORTED_CIPHERS = ("AES-256-GCM", "AES-128-GCM", "CHACHA20-POLY1305")
NCP2_IMPLIED_CIPHERS = ("AES-256-GCM", "AES-128-GCM")  # ssl_ncp.c: IV_NCP=2 without IV_CIPHERS
MAX_PEER_ID = 0xFFFFFE  # openvpn3: pushed peer-id range -1..0xFFFFFE


class KeyDerivation(Enum):
    PRF = "prf"  # ssl.c generate_key_expansion_openvpn_prf
    TLS_EKM = "tls-ekm"  # ssl.c generate_key_expansion_tls_export


IPv4OrV6Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class PushConfig:
    """What the runtime decided for one client; the core renders it into PUSH_REPLY."""

    ifconfig: ipaddress.IPv4Interface
    route_gateway: ipaddress.IPv4Address
    peer_id: int
    routes: tuple[ipaddress.IPv4Network, ...] = ()
    ifconfig_ipv6: ipaddress.IPv6Interface | None = None
    gateway_ipv6: ipaddress.IPv6Address | None = None
    routes_ipv6: tuple[ipaddress.IPv6Network, ...] = ()
    dns: tuple[IPv4OrV6Address, ...] = ()
    domains: tuple[str, ...] = ()
    ping: int = 10
    ping_restart: int = 60
    tun_mtu: int = 1500
    auth_token: str | None = field(default=None, repr=False)  # sent instead of the password

    def __post_init__(self) -> None:
        if not 0 <= self.peer_id <= MAX_PEER_ID:
            raise ValueError("peer-id out of range")
        if (self.ifconfig_ipv6 is None) != (self.gateway_ipv6 is None):
            raise ValueError("ifconfig-ipv6 needs both an address and a gateway")
        for domain in self.domains:
            if not domain or not all(c.isalnum() or c in "-." for c in domain):
                raise ValueError("domain names may hold letters, digits, '-' and '.' only")
        if self.ping <= 0 or self.ping_restart <= self.ping:
            raise ValueError("ping-restart must exceed a positive ping interval")


def negotiate_cipher(
    peer: PeerInfo, server_ciphers: Sequence[str] = SUPPORTED_CIPHERS
) -> str | None:
    """First server cipher the client offers (ssl_ncp.c ncp_get_best_cipher), or None."""
    offered = peer.ciphers or (NCP2_IMPLIED_CIPHERS if peer.ncp >= 2 else ())
    upper = {name.upper() for name in offered}
    for name in server_ciphers:
        if name in SUPPORTED_CIPHERS and name in upper:
            return name
    return None


def choose_key_derivation(peer: PeerInfo, *, allow_ekm: bool = True) -> KeyDerivation:
    """EKM only for clients that advertise IV_PROTO_TLS_KEY_EXPORT (push.c)."""
    if allow_ekm and peer.supports(IvProto.TLS_KEY_EXPORT):
        return KeyDerivation.TLS_EKM
    return KeyDerivation.PRF


def choose_compression(peer: PeerInfo, *, occ_has_comp_lzo: bool) -> Compression:
    """Stub framing for legacy profiles, as 2.6 ``compress migrate`` does (multi.c)."""
    if not occ_has_comp_lzo:
        return Compression.NONE
    return Compression.STUB_V2 if peer.comp_stub_v2 else Compression.LZO_STUB


def _protocol_options(peer: PeerInfo, derivation: KeyDerivation) -> list[str]:
    # push.c prepare_push_reply: tls-ekm rides in protocol-flags only next to cc-exit;
    # otherwise it is the 2.5-era "key-derivation tls-ekm".
    ekm = derivation is KeyDerivation.TLS_EKM and peer.supports(IvProto.TLS_KEY_EXPORT)
    if peer.supports(IvProto.CC_EXIT_NOTIFY):
        return ["protocol-flags cc-exit" + (" tls-ekm" if ekm else "")]
    return ["key-derivation tls-ekm"] if ekm else []


def push_options(
    config: PushConfig,
    *,
    peer: PeerInfo,
    cipher: str,
    derivation: KeyDerivation,
    compression: Compression = Compression.NONE,
) -> list[str]:
    """The option lines for this client, in the order a 2.6 server emits them."""
    options = [f"route {net.network_address} {net.netmask}" for net in config.routes]
    options += [
        f"route-gateway {config.route_gateway}",
        "topology subnet",
        f"ping {config.ping}",
        f"ping-restart {config.ping_restart}",
        f"ifconfig {config.ifconfig.ip} {config.ifconfig.netmask}",
    ]
    if config.ifconfig_ipv6 is not None:
        options.append(f"ifconfig-ipv6 {config.ifconfig_ipv6.with_prefixlen} {config.gateway_ipv6}")
        options += [f"route-ipv6 {net.with_prefixlen}" for net in config.routes_ipv6]
    for server in config.dns:
        options.append(f"dhcp-option {'DNS' if server.version == 4 else 'DNS6'} {server}")
    options += [f"dhcp-option DOMAIN {domain}" for domain in config.domains]
    if peer.supports(IvProto.DATA_V2):
        options.append(f"peer-id {config.peer_id}")
    options.append(f"cipher {cipher}")
    options += _protocol_options(peer, derivation)
    if compression is Compression.STUB_V2:
        options.append("compress stub-v2")
    elif compression is Compression.LZO_STUB:
        options.append("comp-lzo no")
    if peer.mtu is not None:
        options.append(f"tun-mtu {config.tun_mtu}")
    if config.auth_token is not None:  # push.c: the client answers renegotiations with it
        options.append(f"auth-token {config.auth_token}")
    return options


def build_push_reply(options: Sequence[str], limit: int = PUSH_BUNDLE_SIZE) -> list[str]:
    """Pack options into PUSH_REPLY messages (without NUL), each shorter than ``limit``."""
    if not options:
        raise ValueError("openvpn3 ignores a PUSH_REPLY without options")
    budget = limit - 1 - len("PUSH_REPLY") - len(CONTINUATION_MORE)  # 1 = trailing NUL
    parts: list[list[str]] = [[]]
    used = 0
    for option in options:
        if "," in option or not option.isprintable():
            raise ValueError(f"unpushable option {option!r}")
        cost = len(option) + 1
        if cost > budget:
            raise ValueError("option longer than one push message")
        if used + cost > budget:
            parts.append([])
            used = 0
        parts[-1].append(option)
        used += cost
    if len(parts) == 1:
        return ["PUSH_REPLY," + ",".join(parts[0])]
    messages = ["PUSH_REPLY," + ",".join(part) + CONTINUATION_MORE for part in parts[:-1]]
    messages.append("PUSH_REPLY," + ",".join(parts[-1]) + CONTINUATION_LAST)
    return messages
