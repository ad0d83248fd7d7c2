"""Peeking at IPv4/IPv6 packet headers on the data path: version, source and destination.

The data path only needs to know where a tunnelled packet comes from and goes to, so these
helpers read the fixed header fields in place (RFC 791 section 3.1, RFC 8200 section 3) and
return the raw address bytes (4 or 16), which are also the keys of the session and route
tables. A packet too short for its header or of another version yields ``None``: the caller
counts it as a drop.
"""

from __future__ import annotations

import ipaddress

IPV4_HEADER_MIN = 20
IPV6_HEADER_LEN = 40

Address = bytes  # 4 bytes (IPv4) or 16 bytes (IPv6), network order


def version(packet: bytes) -> int:
    """The IP version nibble, 0 for an empty packet."""
    return packet[0] >> 4 if packet else 0


def addresses(packet: bytes) -> tuple[Address, Address] | None:
    """(source, destination) of an IPv4 or IPv6 packet, or None when it is not one."""
    if not packet:
        return None
    ver = packet[0] >> 4
    if ver == 4:
        if len(packet) < IPV4_HEADER_MIN or (packet[0] & 0x0F) < 5:
            return None
        return packet[12:16], packet[16:20]
    if ver == 6 and len(packet) >= IPV6_HEADER_LEN:
        return packet[8:24], packet[24:40]
    return None


def destination(packet: bytes) -> Address | None:
    """The destination address of an IPv4 or IPv6 packet, or None when it is not one."""
    if not packet:
        return None
    ver = packet[0] >> 4
    if ver == 4:
        return packet[16:20] if len(packet) >= IPV4_HEADER_MIN else None
    if ver == 6 and len(packet) >= IPV6_HEADER_LEN:
        return packet[24:40]
    return None


def format_address(address: Address) -> str:
    """Printable form of raw address bytes (for registries and logs, never per packet)."""
    return str(ipaddress.ip_address(address))


def pack_address(text: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> Address:
    """Raw bytes of an address given as text or an ``ipaddress`` object."""
    return ipaddress.ip_address(text).packed
