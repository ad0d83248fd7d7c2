"""Traffic selectors (RFC 7296 section 3.13.1) and narrowing against our SPD policy.

A selector is an address range, an IP protocol (0 = any) and a port range. The responder
intersects what the initiator proposed with its own policy (section 2.9) and answers with
the intersection; an initiator accepts any non-empty subset of what it offered.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from .constants import TsType

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class TrafficSelector:
    """One contiguous address range with a protocol and a port range."""

    start: IPAddress
    end: IPAddress
    ip_protocol: int = 0
    start_port: int = 0
    end_port: int = 65535

    @property
    def ts_type(self) -> TsType:
        if self.start.version == 4:
            return TsType.IPV4_ADDR_RANGE
        return TsType.IPV6_ADDR_RANGE

    @classmethod
    def from_network(cls, network: str, ip_protocol: int = 0) -> TrafficSelector:
        """A whole subnet such as ``"10.1.0.0/24"``, any port: strongSwan's local_ts form."""
        net = ipaddress.ip_network(network, strict=False)
        return cls(net.network_address, net.broadcast_address, ip_protocol)

    def is_valid(self) -> bool:
        """Well-formed: same family, start <= end for addresses and ports."""
        return (
            self.start.version == self.end.version
            and int(self.start) <= int(self.end)
            and self.start_port <= self.end_port
        )

    def networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """The range as a list of CIDR networks, for route installation."""
        return list(ipaddress.summarize_address_range(self.start, self.end))

    def contains(self, other: TrafficSelector) -> bool:
        return intersect(self, other) == other

    def __str__(self) -> str:
        nets = ",".join(str(n) for n in self.networks()) if self.is_valid() else "?"
        ports = "" if (self.start_port, self.end_port) == (0, 65535) else (
            f"[{self.start_port}-{self.end_port}]"
        )
        proto = f"/{self.ip_protocol}" if self.ip_protocol else ""
        return f"{nets}{proto}{ports}"


def intersect(a: TrafficSelector, b: TrafficSelector) -> TrafficSelector | None:
    """The selector covering exactly what both cover, or None when they are disjoint."""
    if a.start.version != b.start.version:
        return None
    if a.ip_protocol and b.ip_protocol and a.ip_protocol != b.ip_protocol:
        return None
    start = max(int(a.start), int(b.start))
    end = min(int(a.end), int(b.end))
    start_port = max(a.start_port, b.start_port)
    end_port = min(a.end_port, b.end_port)
    if start > end or start_port > end_port:
        return None
    make = ipaddress.IPv4Address if a.start.version == 4 else ipaddress.IPv6Address
    return TrafficSelector(
        make(start), make(end), a.ip_protocol or b.ip_protocol, start_port, end_port
    )


def narrow(
    proposed: list[TrafficSelector], policy: list[TrafficSelector]
) -> list[TrafficSelector]:
    """RFC 7296 section 2.9: keep every non-empty intersection of proposal and policy.

    The first proposed selector may be the packet that triggered the SA; it is narrowed
    like the rest, so the answer is the configured subnet rather than a /32 when the
    policy is wider. Duplicates are dropped. An empty result means TS_UNACCEPTABLE.
    """
    result: list[TrafficSelector] = []
    for offered in proposed:
        if not offered.is_valid():
            continue
        for mine in policy:
            common = intersect(offered, mine)
            if common is not None and common not in result:
                result.append(common)
    return result


def is_subset(answer: list[TrafficSelector], offered: list[TrafficSelector]) -> bool:
    """The initiator's check: every answered selector lies inside something we offered."""
    return bool(answer) and all(any(o.contains(a) for o in offered) for a in answer)
