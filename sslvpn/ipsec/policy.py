"""SPD policies: which local CIDRs may talk to which peer CIDRs, and the checks on IPsec objects.

Two parts, both pure:
- `Spd`, the per-packet lookup. Outbound (VPC -> tunnel): the destination picks the tunnel
  by longest prefix over peer ranges, and the source must be inside a local range of that
  same policy. Inbound (tunnel -> VPC): the inner source must be inside one of the tunnel's
  peer ranges and the destination inside the paired local range (RFC 4301 section 5.2:
  inbound traffic is checked against the SA's selectors). Anything else is dropped.
  Verdicts are cached per (source, destination) pair, because a flow's packets all ask the
  same question; the cache is bounded and emptied whenever a tunnel's rules change.
- Validation of what operators type, shared by the CLI, the API and the portal: names,
  bandwidth, CIDRs, overlaps, the customer gateway's address, PSK strength. Each failure
  is a `PolicyError` whose message can be shown as is.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from sslvpn.net.routes import Network, RouteTable

MIN_PSK_LENGTH = 20  # characters; cloud gateways ask for 8-64, strongSwan warns below 20
MAX_PSK_LENGTH = 128
MIN_BANDWIDTH_BPS = 1000
MAX_BANDWIDTH_BPS = 10**13  # 10 Tbit/s: far above any link, well inside the BigInteger column
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
NAME_RULE = "letters, digits, '.', '_' or '-', starting with a letter or digit, at most 64"
FLOW_CACHE_SIZE = 4096  # (source, destination) verdicts kept per direction before a reset
T = TypeVar("T")


class PolicyError(ValueError):
    """An IPsec object is not acceptable; the message says why, for an operator."""


@dataclass(frozen=True)
class PolicyRule:
    local: Network
    peer: Network


def parse_cidr(text: str, *, what: str = "CIDR") -> Network:
    """A network from "10.1.0.0/24"; host bits set or garbage get a clear error."""
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError:
        try:
            loose = ipaddress.ip_network(text.strip(), strict=False)
        except ValueError:
            raise PolicyError(f"{what} {text!r} is not a network like 10.1.0.0/24") from None
        raise PolicyError(f"{what} {text!r} has host bits set; did you mean {loose}?") from None


def check_policy(
    local: Network,
    peer: Network,
    existing: Iterable[tuple[str, Network, Network]] = (),
    *,
    tunnel: str = "",
    client_pools: Iterable[Network] = (),
) -> None:
    """A new policy of ``tunnel`` must keep the gateway's address plan unambiguous.

    ``existing`` lists (tunnel name, local range, peer range) of every policy already on the
    same VPN gateway. Local and peer ranges must not overlap each other; a local range must
    not overlap any peer range there, a peer range no local range, and no peer range of
    another tunnel (the destination would not say which tunnel to use). Neither may overlap
    the remote-access ``client_pools``: the site would reach (or pose as) VPN clients.
    """
    if local.version != peer.version:
        raise PolicyError(f"local {local} and peer {peer} are of different IP versions")
    if local.overlaps(peer):
        raise PolicyError(f"local range {local} overlaps peer range {peer}")
    for pool in client_pools:
        for side, net in (("local", local), ("peer", peer)):
            if net.version == pool.version and net.overlaps(pool):
                raise PolicyError(f"{side} range {net} overlaps the VPN client pool {pool}: "
                                  "the site would reach or pose as VPN clients")
    for other, other_local, other_peer in existing:
        clashes = (
            ("local", local, other_peer, "peer"),
            ("peer", peer, other_local, "local"),
            *((("peer", peer, other_peer, "peer"),) if other != tunnel else ()),
        )
        for side, net, taken, kind in clashes:
            if net.version == taken.version and net.overlaps(taken):
                raise PolicyError(
                    f"{side} range {net} overlaps {taken}, a {kind} range of tunnel {other!r}"
                )


def check_unicast_address(text: str, *, what: str = "address") -> str:
    """The normalised address if it can be a peer on the internet or a WAN, else an error."""
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        raise PolicyError(f"{what} {text!r} is not an IP address") from None
    problems = (
        (address.is_unspecified, "unspecified"),
        (address.is_multicast, "multicast"),
        (address.is_loopback, "loopback"),
        (address.is_link_local, "link-local"),
        (address.is_reserved, "reserved"),
        (address == ipaddress.IPv4Address("255.255.255.255"), "broadcast"),
    )
    for bad, name in problems:
        if bad:
            raise PolicyError(f"{what} {address} is a {name} address, not a usable unicast one")
    return str(address)


def check_name(name: str, what: str) -> str:
    """Names appear in URLs, file names and the CLI: one plain word (the portal refused
    ``x/../y`` while the CLI stored it)."""
    if not NAME.fullmatch(name):
        raise PolicyError(f"{what} name {name!r} is not allowed: {NAME_RULE}")
    return name


def check_bandwidth(bps: int | None) -> int | None:
    """A gateway's cap in bit/s, None for unlimited; bounded so that it fits the column."""
    if bps is not None and not MIN_BANDWIDTH_BPS <= bps <= MAX_BANDWIDTH_BPS:
        raise PolicyError("bandwidth must be 1 kbit/s to 10 Tbit/s (or unlimited)")
    return bps


def check_psk(psk: str) -> str:
    """The PSK if it is long enough and printable; the error never contains the secret."""
    if len(psk) < MIN_PSK_LENGTH:
        raise PolicyError(f"pre-shared key too short: use at least {MIN_PSK_LENGTH} characters")
    if len(psk) > MAX_PSK_LENGTH:
        raise PolicyError(f"pre-shared key too long: at most {MAX_PSK_LENGTH} characters")
    if not psk.isprintable() or psk != psk.strip():
        raise PolicyError("pre-shared key must be printable, without surrounding whitespace")
    if len(set(psk)) < 6:
        raise PolicyError("pre-shared key too weak: use a random string")
    return psk


class Spd(Generic[T]):
    """Per-packet policy lookup over every tunnel's rules (owner T = the tunnel)."""

    def __init__(self) -> None:
        # peer range -> (tunnel, the local ranges paired with it)
        self._by_peer: RouteTable[tuple[T, tuple[Network, ...]]] = RouteTable()
        self._rules: dict[T, list[PolicyRule]] = {}
        self._outbound_cache: dict[bytes, T | None] = {}
        self._inbound_cache: dict[bytes, T | None] = {}  # the one owner allowed, or None

    def set_rules(self, owner: T, rules: Iterable[PolicyRule]) -> None:
        """Replace the rules of one tunnel."""
        self.remove(owner)
        self._forget_flows()
        kept = list(rules)
        self._rules[owner] = kept
        locals_by_peer: dict[Network, tuple[Network, ...]] = {}
        for rule in kept:
            locals_by_peer[rule.peer] = locals_by_peer.get(rule.peer, ()) + (rule.local,)
        for peer, local_ranges in locals_by_peer.items():
            self._by_peer.add(peer, (owner, local_ranges))

    def remove(self, owner: T) -> None:
        for rule in self._rules.pop(owner, []):
            self._by_peer.remove(rule.peer)
        self._forget_flows()

    def _forget_flows(self) -> None:
        self._outbound_cache.clear()
        self._inbound_cache.clear()

    def outbound(self, source: bytes, destination: bytes) -> T | None:
        """The tunnel a packet from the VPC goes into, or None (drop: no policy matches)."""
        key = source + destination
        cache = self._outbound_cache
        try:
            return cache[key]
        except KeyError:
            pass
        hit = self._by_peer.lookup(destination)
        owner = hit[0] if hit is not None and _inside(hit[1], source) else None
        if len(cache) >= FLOW_CACHE_SIZE:
            cache.clear()
        cache[key] = owner
        return owner

    def inbound_allowed(self, owner: T, source: bytes, destination: bytes) -> bool:
        """Whether a packet that came out of ``owner``'s SA may enter the VPC."""
        key = source + destination
        cache = self._inbound_cache
        try:
            return cache[key] == owner
        except KeyError:
            pass
        hit = self._by_peer.lookup(source)
        allowed = hit[0] if hit is not None and _inside(hit[1], destination) else None
        if len(cache) >= FLOW_CACHE_SIZE:
            cache.clear()
        cache[key] = allowed
        return allowed == owner


def _inside(networks: tuple[Network, ...], address: bytes) -> bool:
    return any(_contains(net, address) for net in networks)


def _contains(network: Network, address: bytes) -> bool:
    if len(address) != len(network.network_address.packed):
        return False
    value = int.from_bytes(address, "big")
    return (value & int(network.netmask)) == int(network.network_address)
