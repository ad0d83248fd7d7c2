"""Checks on what an operator types before anything is generated or stored.

Each check raises `LifecycleError` with a one-line message naming the bad value.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

from client_profiles.pkifiles import LifecycleError
from sslvpn.store.models import CONTROL_CHANNEL_VALUES, PROTOCOLS_VALUES, GatewaySettings

DEVICE_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}")
MAX_CLIENT_DAYS = 3650


def validated_settings(
    public_addresses: Sequence[str],
    port: int,
    proto: str,
    vpc: Sequence[str],
    pool: str,
    dns: Sequence[str],
    control_channel: str,
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
    pool_net = _network(pool, "pool")
    if pool_net.version != 4 or pool_net.prefixlen > 29:
        raise LifecycleError(f"pool {pool} must be an IPv4 network of /29 or larger")
    return GatewaySettings(
        public_addresses=addresses,
        port=port,
        protocols=proto,
        vpc_networks=[str(_network(n, "VPC network")) for n in vpc],
        pool_cidr=str(pool_net),
        dns_servers=[_address(d) for d in dns],
        control_channel=control_channel,
    )


def _network(text: str, what: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
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
