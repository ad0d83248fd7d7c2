"""Checks on what an operator types before anything is generated or stored.

Each check raises `LifecycleError` with a one-line message naming the bad value.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias

from client_profiles.pkifiles import LifecycleError
from sslvpn.openvpn.constants import DEFAULT_TLS_GROUPS
from sslvpn.openvpn.tls import TlsGroupsError, checked_tls_groups
from sslvpn.store.models import CONTROL_CHANNEL_VALUES, PROTOCOLS_VALUES, GatewaySettings

DEVICE_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}")
MAX_SERIAL_DIGITS = 64  # an X.509 serial is at most 20 octets; room for colons and zeros
MAX_CLIENT_DAYS = 3650
# An IPv6 client pool: at most a /64 (one subnet; SLAAC-sized) and at least a /112.
POOL6_PREFIXES = range(64, 113)
KEEPALIVE_DEFAULT = (5, 12)  # pushed ping, ping-restart: on a live node within 30 s
MAX_KEEPALIVE = 3600
# Said by init and the dashboard: a gateway without a VPC network routes its clients nowhere.
NO_VPC_WARNING = ("no VPC network is configured: clients connect but reach nothing. "
                  "Add one with init --vpc or on the portal's Settings page.")

Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

# An IPv4 client pool lies in RFC 1918 space or RFC 6598 shared space (what VPNs use).
PRIVATE_POOLS = tuple(ipaddress.IPv4Network(n) for n in
                      ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10"))
# What VPN clients must never reach through the gateway, with the reason said to the operator.
FORBIDDEN_VPC: tuple[tuple[Network, str], ...] = tuple(
    (ipaddress.ip_network(net), why) for net, why in (
        ("169.254.0.0/16", "link-local: the cloud's instance metadata service, 169.254.169.254, "
                           "hands out the gateway's credentials"),
        ("127.0.0.0/8", "loopback: the gateway's own services"),
        ("0.0.0.0/8", "'this network'"),
        ("224.0.0.0/4", "multicast"),
        ("::1/128", "loopback: the gateway's own services"),
        ("fe80::/10", "link-local"),
        ("ff00::/8", "multicast"),
    ))


def validated_settings(
    public_addresses: Sequence[str],
    port: int,
    proto: str,
    vpc: Sequence[str],
    pool: str,
    dns: Sequence[str],
    control_channel: str,
    pool6: str | None = None,
    keepalive: tuple[int, int] = KEEPALIVE_DEFAULT,
    tls_groups: str = DEFAULT_TLS_GROUPS,
) -> GatewaySettings:
    """The settings `sslvpn init` stores, after checking every value."""
    addresses = [a.strip() for a in public_addresses]
    if not addresses or any(not re.fullmatch(r"[A-Za-z0-9.:_-]{1,253}", a) for a in addresses):
        raise LifecycleError("give at least one public address (a DNS name or IP address)")
    if not 0 < port < 65536:
        raise LifecycleError(f"port {port} is not in 1..65535")
    if proto not in PROTOCOLS_VALUES:
        raise LifecycleError(f"protocol must be one of {', '.join(PROTOCOLS_VALUES)}")
    if control_channel not in CONTROL_CHANNEL_VALUES:
        raise LifecycleError(f"control channel must be one of {', '.join(CONTROL_CHANNEL_VALUES)}")
    networks = checked_networks(pool=pool, vpc=vpc, pool6=pool6)
    interval, timeout = checked_keepalive(*keepalive)
    groups = checked_groups(tls_groups)
    return GatewaySettings(
        public_addresses=addresses,
        port=port,
        protocols=proto,
        vpc_networks=[str(n) for n in networks.vpc],
        pool_cidr=str(networks.pool),
        pool6_cidr=None if networks.pool6 is None else str(networks.pool6),
        dns_servers=[_address(d) for d in dns],
        control_channel=control_channel,
        keepalive_interval=interval,
        keepalive_timeout=timeout,
        tls_groups=groups,
    )


def checked_groups(tls_groups: str) -> str:
    """The control channel's TLS key-exchange groups, as OpenSSL here accepts them."""
    try:
        return checked_tls_groups(tls_groups)
    except TlsGroupsError as exc:
        raise LifecycleError(str(exc)) from None


def checked_keepalive(interval: int, timeout: int) -> tuple[int, int]:
    """The pushed ``ping`` and ``ping-restart`` seconds; like OpenVPN's ``keepalive``, the
    restart waits at least two pings."""
    if not 1 <= interval <= MAX_KEEPALIVE or not 1 <= timeout <= MAX_KEEPALIVE:
        raise LifecycleError(f"keepalive seconds must be 1..{MAX_KEEPALIVE}")
    if timeout < 2 * interval:
        raise LifecycleError(
            f"keepalive restart {timeout} s must be at least twice the ping {interval} s"
        )
    return interval, timeout


@dataclass(frozen=True)
class ClientNetworks:
    """The client pools and the VPC networks they reach, checked together."""

    pool: ipaddress.IPv4Network
    pool6: ipaddress.IPv6Network | None
    vpc: tuple[Network, ...]


def checked_networks(pool: str, vpc: Sequence[str], pool6: str | None) -> ClientNetworks:
    """The pools and VPC networks `sslvpn init` and the portal's settings page accept.

    One check for both faces: a client address inside a VPC network would be routed to
    the VPC instead of the tunnel, and an IPv6 VPC network is unreachable without an IPv6
    client pool.
    """
    pool_net = _network(pool, "pool")
    if not isinstance(pool_net, ipaddress.IPv4Network) or pool_net.prefixlen > 29:
        raise LifecycleError(f"pool {pool} must be an IPv4 network of /29 or larger")
    if not any(pool_net.subnet_of(private) for private in PRIVATE_POOLS):
        raise LifecycleError(
            f"pool {pool_net} must be private unicast space (inside "
            f"{', '.join(map(str, PRIVATE_POOLS))}): clients given public, loopback or "
            "multicast addresses would shadow real ones")
    vpc_networks = tuple(_network(n, "VPC network") for n in vpc)
    for other in vpc_networks:
        for forbidden, why in FORBIDDEN_VPC:
            if other.version == forbidden.version and other.overlaps(forbidden):
                raise LifecycleError(f"VPC network {other} overlaps {forbidden} ({why})")
    for other in vpc_networks:
        if other.version == 4 and pool_net.overlaps(other):
            raise LifecycleError(f"pool {pool_net} overlaps the VPC network {other}")
    pool6_net = None if pool6 is None else _pool6(pool6, pool_net, vpc_networks)
    if pool6_net is None and (v6 := next((n for n in vpc_networks if n.version == 6), None)):
        raise LifecycleError(f"VPC network {v6} is IPv6: give an IPv6 client pool too")
    return ClientNetworks(pool=pool_net, pool6=pool6_net, vpc=vpc_networks)


def _pool6(
    text: str,
    pool: ipaddress.IPv4Network,
    vpc: Sequence[Network],
) -> ipaddress.IPv6Network:
    """A routable IPv6 pool, apart from the VPC, with room for every IPv4 pool host number
    (the gateway gives the client with IPv4 host number n the IPv6 host number n)."""
    net = _network(text, "IPv6 pool")
    if not isinstance(net, ipaddress.IPv6Network):
        raise LifecycleError(f"IPv6 pool {text} is not an IPv6 network")
    if net.prefixlen not in POOL6_PREFIXES:
        raise LifecycleError(
            f"IPv6 pool {net} must be a /{POOL6_PREFIXES.start} to /{POOL6_PREFIXES.stop - 1} "
            "network"
        )
    if net.is_multicast or net.is_link_local or net.is_site_local:
        raise LifecycleError(f"IPv6 pool {net} must be a global or unique-local (fd00::/8) network")
    if net.num_addresses < pool.num_addresses:
        raise LifecycleError(f"IPv6 pool {net} has fewer addresses than the IPv4 pool {pool}")
    for other in vpc:
        if other.version == 6 and net.overlaps(other):
            raise LifecycleError(f"IPv6 pool {net} overlaps the VPC network {other}")
    return net


def _network(text: str, what: str) -> Network:
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError:
        raise LifecycleError(f"{what} {text!r} is not a network in CIDR form") from None


def _address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise LifecycleError(f"DNS server {text!r} is not an IP address") from None


def checked_device(device: str | None) -> str | None:
    if device is not None and not DEVICE_PATTERN.fullmatch(device):
        raise LifecycleError("a device name is 1-32 letters, digits, '_' or '-'")
    return device


def checked_days(days: int) -> int:
    if not 1 <= days <= MAX_CLIENT_DAYS:
        raise LifecycleError(f"lifetime must be 1..{MAX_CLIENT_DAYS} days")
    return days


def serial_forms(text: str) -> list[str]:
    """The stored form (lower-case hex, no leading zeros) of a serial as admins paste it:
    openssl's upper case with leading zeros, colon- or space-separated octets, lower case,
    or decimal. All-digit text is read as hex first, then as decimal. Nothing for text
    that is not a serial (a user name, a CN)."""
    packed = re.sub(r"[:\s]", "", text.strip()).lower().removeprefix("0x")
    if not packed or len(packed) > MAX_SERIAL_DIGITS or not re.fullmatch(r"[0-9a-f]+", packed):
        return []
    forms = [packed.lstrip("0") or "0"]
    if packed.isdigit():
        forms.append(format(int(packed), "x"))
    return list(dict.fromkeys(forms))
