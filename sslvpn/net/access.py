"""Access policy: which VPC destinations a VPN user may reach, compiled for the data path.

Evaluation order (README "Access policy"): a user's rules (their own and their groups')
are sorted by priority (lower first), a deny before an allow of the same priority, then by
rule id; the first rule that matches the packet's protocol, destination and port decides.
No match: the policy's default decides ("all-vpc": allowed, the gateway's VPC check still
applies; "nothing": denied). ``first_match`` is that definition, plainly.

``CompiledRules`` is what the gateway asks per packet. Per address family the destination
space is cut at every rule's network bounds into intervals, each holding the rules that
cover it, in order; a lookup is one bisect and a walk of that interval's few rules, so it
does not grow with the number of rules when they cover different networks. On top, a
per-flow cache answers the packets after a flow's first with one dict probe, as the
gateway's VPC memo does: for IPv4 TCP and UDP keyed by one slice of the header (destination
and both ports: one entry per connection), for the rest by protocol, address, port. For a
connection's later packets the gateway probes that cache (``known``) in place of its VPC
check, so a restricted client pays one dict probe per packet, as an unrestricted one does;
a reply's probe (``known_reply``) is the only lookup the rules add on the way back.

Replies (VPC -> client) pass by symmetric rules: a packet to a client passes when the client
could send its mirror (its source as destination, its source port as port). That needs no
connection state, so every worker and every node decides the same (a client that fails
over to another node keeps its flows; a tracking table would start empty there) and a
flood cannot fill a table. ICMP errors back to a client always pass (path MTU discovery).

Ports are known for TCP and UDP only. A fragment after the first carries no port: it
matches a rule with ports only if that rule denies (fail closed), so such fragments are
allowed by a rule without ports (or the default). Garbage never raises: an unparsable
packet is keyed by what could be read and decided like any other.
"""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

TCP, UDP, ICMP, ICMPV6 = 6, 17, 1, 58
PROTOCOLS = ("any", "tcp", "udp", "icmp")
PROTOCOL_NUMBERS = {"tcp": (TCP,), "udp": (UDP,), "icmp": (ICMP, ICMPV6)}
DEFAULTS = ("all-vpc", "nothing")
DEFAULT_PRIORITY = 100
PORT_UNKNOWN = -1  # a fragment after the first: its port cannot be read
FLOW_CACHE_SIZE = 4096  # flows whose verdict a compiled set remembers (cleared when full)
_ICMP_ERRORS = {ICMP: frozenset({3, 11, 12}), ICMPV6: frozenset({1, 2, 3, 4})}
_IPV6_EXTENSIONS = frozenset({0, 43, 60})  # hop-by-hop, routing, destination options
_IPV6_FRAGMENT, _IPV6_AH = 44, 51
_MAX_EXTENSIONS = 8


class AccessError(ValueError):
    """A rule or a query that cannot be accepted, with a one-line reason."""


@dataclass(frozen=True)
class Rule:
    """One access rule: ``allow`` (or deny) ``protocol`` to ``network`` (ports inclusive)."""

    id: int
    network: Network
    protocol: str = "any"
    ports: tuple[int, int] | None = None
    allow: bool = True
    priority: int = DEFAULT_PRIORITY
    owner: str = ""  # "group NAME" or "user NAME", for display

    @property
    def order(self) -> tuple[int, bool, int]:
        """Lower first; deny (False) before allow on a tie; then the older rule."""
        return (self.priority, self.allow, self.id)

    def matches_protocol_port(self, protocol: int, port: int | None) -> bool:
        """The part of a match that is not the address."""
        if self.protocol != "any" and protocol not in PROTOCOL_NUMBERS[self.protocol]:
            return False
        if self.ports is None:
            return True
        if port is None:
            return False
        if port == PORT_UNKNOWN:
            return not self.allow  # fail closed on fragments without a port
        return self.ports[0] <= port <= self.ports[1]

    def matches(self, protocol: int, address: Address, port: int | None) -> bool:
        return address in self.network and self.matches_protocol_port(protocol, port)

    @property
    def ports_text(self) -> str:
        """``N``, ``N-M`` or ``-`` (any port)."""
        if self.ports is None:
            return "-"
        low, high = self.ports
        return str(low) if low == high else f"{low}-{high}"

    def describe(self) -> str:
        ports = "" if self.ports is None else f" port {self.ports_text}"
        action = "allow" if self.allow else "deny"
        return (f"rule {self.id} ({self.owner}: {action} {self.protocol} to {self.network}"
                f"{ports}, priority {self.priority})")


def validate_rule(network: str, protocol: str, ports: str | None,
                  vpc_networks: Sequence[Network]) -> tuple[Network, tuple[int, int] | None]:
    """The destination and port range of a rule as typed, or AccessError with one line."""
    try:
        destination = ipaddress.ip_network(network, strict=False)
    except ValueError as exc:
        raise AccessError(f"{network!r} is not a network (CIDR)") from exc
    if not any(destination.version == vpc.version and destination.subnet_of(vpc)  # type: ignore[arg-type]
               for vpc in vpc_networks):
        inside = ", ".join(str(n) for n in vpc_networks) or "none configured"
        raise AccessError(f"{destination} is not inside the VPC networks ({inside})")
    if protocol not in PROTOCOLS:
        raise AccessError(f"protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    if ports is None:
        return destination, None
    if protocol not in ("tcp", "udp"):
        raise AccessError("ports need --proto tcp or udp")
    return destination, parse_ports(ports)


def parse_ports(text: str) -> tuple[int, int]:
    """``N`` or ``N-M`` (1-65535, N <= M)."""
    low, _, high = text.partition("-")
    if not low.isdigit() or not (high.isdigit() or not high):
        raise AccessError(f"{text!r} is not a port or a port range N-M")
    first, last = int(low), int(high or low)
    if not 1 <= first <= last <= 65535:
        raise AccessError(f"{text!r}: ports are 1-65535, the first not above the last")
    return first, last


def parse_destination(text: str) -> tuple[int, ipaddress.IPv4Address | ipaddress.IPv6Address,
                                          int | None, str]:
    """``ADDRESS[:PORT[/PROTO]]`` (IPv6 as ``[ADDRESS]:PORT``): protocol number, address,
    port, protocol name; without a port the packet is an ICMP echo (ping)."""
    host, port_text = text, ""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    try:
        address = ipaddress.ip_address(host)
    except ValueError as exc:
        raise AccessError(f"{host!r} is not an IP address") from exc
    if not port_text:
        return (ICMP if address.version == 4 else ICMPV6), address, None, "icmp"
    port, _, name = port_text.partition("/")
    name = name or "tcp"
    if name not in ("tcp", "udp") or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise AccessError(f"{port_text!r} is not PORT[/tcp|udp]")
    return (TCP if name == "tcp" else UDP), address, int(port), name


def format_destination(address: Address, port: int | None, name: str) -> str:
    """The inverse of ``parse_destination``, as `policy check` shows it."""
    shown = f"[{address}]" if address.version == 6 else str(address)
    return f"{shown}:{port}/{name}" if port is not None else f"{address} ({name})"


def first_match(rules: Iterable[Rule], protocol: int, address: Address,
                port: int | None) -> Rule | None:
    """The definition of the evaluation order: the first matching rule in order."""
    for rule in sorted(rules, key=lambda r: r.order):
        if rule.matches(protocol, address, port):
            return rule
    return None


class Hits:
    """Packets one rule (or the default) decided, both directions; shared by every compiled
    set holding the rule and kept across recompilations."""

    __slots__ = ("allow", "packets", "rule")

    def __init__(self, allow: bool, rule: Rule | None) -> None:
        self.allow = allow
        self.rule = rule  # None: the default
        self.packets = 0


class _Family:
    """One address family's intervals and the rules covering each, in order."""

    __slots__ = ("buckets", "starts")

    def __init__(self, rules: Sequence[Rule]) -> None:
        bounds = {0}
        for rule in rules:
            bounds.add(int(rule.network.network_address))
            bounds.add(int(rule.network.broadcast_address) + 1)
        self.starts = sorted(bounds)
        buckets: list[list[Rule]] = [[] for _ in self.starts]
        for rule in rules:  # already in order, so each bucket is too
            first = bisect.bisect_left(self.starts, int(rule.network.network_address))
            end = bisect.bisect_left(self.starts, int(rule.network.broadcast_address) + 1)
            for index in range(first, end):
                buckets[index].append(rule)
        self.buckets = [tuple(bucket) for bucket in buckets]

    def lookup(self, address: int, protocol: int, port: int | None) -> Rule | None:
        for rule in self.buckets[bisect.bisect_right(self.starts, address) - 1]:
            if rule.matches_protocol_port(protocol, port):
                return rule
        return None


class CompiledRules:
    """One rule set compiled for the data path, with its per-flow verdict cache."""

    def __init__(self, rules: Iterable[Rule], default_allow: bool,
                 hits: dict[int | str, Hits]) -> None:
        ordered = sorted(rules, key=lambda r: r.order)
        self.rules = tuple(ordered)
        self._families = {4: _Family([r for r in ordered if r.network.version == 4]),
                          6: _Family([r for r in ordered if r.network.version == 6])}
        key = "default-allow" if default_allow else "default-deny"
        self.default = hits.setdefault(key, Hits(default_allow, None))
        self._hits = {r.id: hits.setdefault(r.id, Hits(r.allow, r)) for r in ordered}
        self._cache: dict[bytes, Hits] = {}  # flow_key -> verdict
        # the common case's connections (IPv4 TCP/UDP), each direction's own key layout
        self._tcp: dict[bytes, Hits] = {}
        self._udp: dict[bytes, Hits] = {}
        self._tcp_replies: dict[bytes, Hits] = {}
        self._udp_replies: dict[bytes, Hits] = {}

    def decide(self, protocol: int, address: Address, port: int | None) -> Hits:
        """The deciding rule's counter (or the default's): the one function that decides,
        for packets and for ``sslvpn policy check`` alike."""
        rule = self._families[address.version].lookup(int(address), protocol, port)
        return self.default if rule is None else self._hits[rule.id]

    def allowed(self, packet: bytes) -> bool:
        """A packet from the client (counted). The gateway asks only for packets inside the
        VPC, so what this caches for IPv4 TCP/UDP is what ``known`` answers from."""
        protocol = packet[9] if len(packet) >= 24 and packet[0] == 0x45 else 0
        if (protocol == TCP or protocol == UDP) and not (packet[6] & 0x1F or packet[7]):
            # the common case (IPv4 TCP/UDP, no options, not a later fragment): one slice,
            # destination, source port, destination port, is the key of the connection
            flows = self._tcp if protocol == TCP else self._udp
            key = packet[16:24]
            hit = flows.get(key)
            if hit is None:
                hit = self._remember(flows, key, self.decide(
                    protocol, ipaddress.IPv4Address(key[:4]), int.from_bytes(key[6:8])))
        else:
            key = flow_key(packet, reply=False)
            hit = self._cache.get(key) or self._miss(key)
        hit.packets += 1
        return hit.allow

    def known(self, packet: bytes) -> Hits | None:
        """The gateway's one probe per packet, in place of its VPC check: the verdict
        ``allowed`` cached for this IPv4 TCP/UDP connection, or None (not cached, or another
        kind of packet: the caller takes the path with every check). ``packet`` starts with
        0x45 and has 20 bytes or more, as the caller checked; not counted (the caller does)."""
        protocol = packet[9]
        if protocol == TCP:
            flows = self._tcp
        elif protocol == UDP:
            flows = self._udp
        else:
            return None
        if packet[6] & 0x1F or packet[7]:  # a later fragment: bytes 20-23 are no ports
            return None
        return flows.get(packet[16:24])

    def known_reply(self, packet: bytes) -> Hits | None:
        """``known`` for a packet to the client: the verdict ``reply_allowed`` cached for
        this IPv4 TCP/UDP connection, or None (ask ``reply_allowed``). ``packet`` has 20
        bytes or more, as the caller checked; not counted (the caller does)."""
        protocol = packet[9]
        if protocol == TCP:
            flows = self._tcp_replies
        elif protocol == UDP:
            flows = self._udp_replies
        else:
            return None
        if packet[0] != 0x45 or packet[6] & 0x1F or packet[7]:
            return None
        return flows.get(packet[12:24])

    def reply_allowed(self, packet: bytes) -> bool:
        """A packet to the client: passes when the client could send its mirror."""
        protocol = packet[9] if len(packet) >= 24 and packet[0] == 0x45 else 0
        if (protocol == TCP or protocol == UDP) and not (packet[6] & 0x1F or packet[7]):
            # source, destination, source port, destination port: the mirror's connection
            flows = self._tcp_replies if protocol == TCP else self._udp_replies
            key = packet[12:24]
            hit = flows.get(key)
            if hit is None:
                hit = self._remember(flows, key, self.decide(
                    protocol, ipaddress.IPv4Address(key[:4]), int.from_bytes(key[8:10])))
        else:
            key = flow_key(packet, reply=True)
            if not key:
                return True  # an ICMP error
            hit = self._cache.get(key) or self._miss(key)
        hit.packets += 1
        return hit.allow

    def _miss(self, key: bytes) -> Hits:
        protocol, address, port = decode_key(key)
        return self._remember(self._cache, key, self.decide(protocol, address, port))

    @staticmethod
    def _remember(flows: dict[bytes, Hits], key: bytes, hit: Hits) -> Hits:
        if len(flows) >= FLOW_CACHE_SIZE:
            flows.clear()
        flows[key] = hit
        return hit

    def routes(self, vpc_networks: Sequence[Network]) -> list[Network]:
        """The networks to push: the VPC networks when the default allows, else the
        networks of the allow rules (the data path still decides each packet)."""
        if self.default.allow:
            return list(vpc_networks)
        allowed = [r.network for r in self.rules if r.allow]
        return [*ipaddress.collapse_addresses(n for n in allowed if n.version == 4),
                *ipaddress.collapse_addresses(n for n in allowed if n.version == 6)]


def flow_key(packet: bytes, *, reply: bool) -> bytes:
    """protocol + address (+ 2-byte port, or 3 bytes 0xff for unknown) of a packet's far
    end: its destination, or its source for a ``reply``; b"" for an ICMP error reply."""
    version = packet[0] >> 4 if packet else 0
    if version == 4 and len(packet) >= 20:
        header = (packet[0] & 0x0F) * 4
        protocol, later_fragment = packet[9], bool(packet[6] & 0x1F or packet[7])
        address = packet[12:16] if reply else packet[16:20]
    elif version == 6 and len(packet) >= 40:
        protocol, header, later_fragment = _ipv6_upper(packet)
        address = packet[8:24] if reply else packet[24:40]
    else:  # not IP: the gateway drops it before it gets here
        return b"\x00" + bytes(4)
    prefix = bytes((protocol,)) + address
    if protocol == TCP or protocol == UDP:
        if later_fragment or len(packet) < header + 4:
            return prefix + b"\xff\xff\xff"
        at = header if reply else header + 2
        return prefix + packet[at:at + 2]
    if reply and protocol in _ICMP_ERRORS and not later_fragment and len(packet) > header \
            and packet[header] in _ICMP_ERRORS[protocol]:
        return b""
    return prefix


def _ipv6_upper(packet: bytes) -> tuple[int, int, bool]:
    """The upper-layer protocol after the extension headers, its offset, and whether the
    packet is a fragment after the first (an unreadable chain: what was read, unknown)."""
    protocol, offset, later = packet[6], 40, False
    for _ in range(_MAX_EXTENSIONS):
        if len(packet) < offset + 8:
            break
        if protocol in _IPV6_EXTENSIONS:
            protocol, offset = packet[offset], offset + (packet[offset + 1] + 1) * 8
        elif protocol == _IPV6_FRAGMENT:
            later = later or bool(int.from_bytes(packet[offset + 2:offset + 4], "big") >> 3)
            protocol, offset = packet[offset], offset + 8
        elif protocol == _IPV6_AH:
            protocol, offset = packet[offset], offset + (packet[offset + 1] + 2) * 4
        else:
            break
    return protocol, offset, later


def decode_key(key: bytes) -> tuple[int, Address, int | None]:
    """The inverse of ``flow_key`` (and of the inline IPv4 keys)."""
    protocol, rest = key[0], key[1:]
    size = 4 if len(rest) in (4, 6, 7) else 16
    address = ipaddress.ip_address(rest[:size])
    port_bytes = rest[size:]
    if not port_bytes:
        return protocol, address, None
    if len(port_bytes) == 3:
        return protocol, address, PORT_UNKNOWN
    return protocol, address, int.from_bytes(port_bytes, "big")


@dataclass
class AccessPolicy:
    """Everything the gateway needs to decide: the rules by group and by user, who is in
    which group, the default, and the store's revision it was read at."""

    default: str = "all-vpc"
    group_rules: Mapping[str, Sequence[Rule]] = field(default_factory=dict)
    user_rules: Mapping[str, Sequence[Rule]] = field(default_factory=dict)
    members: Mapping[str, Sequence[str]] = field(default_factory=dict)  # user -> groups
    revision: int = 0
    hits: dict[int | str, Hits] = field(default_factory=dict)
    _compiled: dict[tuple[int, ...], CompiledRules] = field(default_factory=dict)

    def rules_of(self, user: str) -> list[Rule]:
        found = {r.id: r for r in self.user_rules.get(user, ())}
        for group in self.members.get(user, ()):
            found.update((r.id, r) for r in self.group_rules.get(group, ()))
        return sorted(found.values(), key=lambda r: r.order)

    def compiled_for(self, user: str) -> CompiledRules | None:
        """The user's compiled set (shared by users with the same rules); None when nothing
        restricts them (no rules, default all-vpc): the data path's checks are unchanged."""
        rules = self.rules_of(user)
        if not rules and self.default == "all-vpc":
            return None
        key = tuple(r.id for r in rules)
        compiled = self._compiled.get(key)
        if compiled is None:
            compiled = self._compiled[key] = CompiledRules(
                rules, self.default == "all-vpc", self.hits)
        return compiled

    def check(self, user: str, protocol: int, address: Address, port: int | None) -> Hits:
        """What the data path decides for this packet of ``user`` (inside the VPC)."""
        compiled = self.compiled_for(user)
        if compiled is None:
            return self.hits.setdefault("default-allow", Hits(True, None))
        return compiled.decide(protocol, address, port)

    def succeeded_by(self, newer: AccessPolicy) -> AccessPolicy:
        """``newer`` keeping this policy's hit counters of the rules it still has and of the
        default (rule ids are never reused; a deleted rule's counter goes with it)."""
        live = {rule.id for rules in (*newer.group_rules.values(), *newer.user_rules.values())
                for rule in rules}
        newer.hits = {key: hit for key, hit in self.hits.items()
                      if isinstance(key, str) or key in live}
        return newer
