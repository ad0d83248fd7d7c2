"""The compiled access rules agree with the plain first-match definition, on real packets."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sslvpn.net.access import (
    ICMP,
    ICMPV6,
    PORT_UNKNOWN,
    TCP,
    UDP,
    AccessError,
    AccessPolicy,
    CompiledRules,
    Hits,
    Rule,
    first_match,
    flow_key,
    validate_rule,
)

V4 = ipaddress.ip_network("10.0.0.0/24")  # small spaces, so random rules overlap
V6 = ipaddress.ip_network("fd00::/120")
HOSTS = 16  # rules and packets meet on the first addresses, so most packets hit a rule


def packet(src: ipaddress.IPv4Address | ipaddress.IPv6Address,
           dst: ipaddress.IPv4Address | ipaddress.IPv6Address, protocol: int,
           sport: int = 40000, dport: int = 0, *, later_fragment: bool = False,
           icmp_type: int = 8) -> bytes:
    """A minimal IPv4 or IPv6 packet; IPv6 fragments carry a fragment header."""
    upper = (struct.pack("!HH", sport, dport) + bytes(16) if protocol in (TCP, UDP)
             else bytes((icmp_type, 0)) + bytes(6))
    if dst.version == 4:
        flags = 0x0010 if later_fragment else 0  # offset 16 * 8 bytes
        header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(upper), 1, flags, 64,
                             protocol, 0, src.packed, dst.packed)
        return header + upper
    next_header, extension = protocol, b""
    if later_fragment:
        extension = struct.pack("!BBHI", protocol, 0, 16 << 3, 1)
        next_header = 44
    body = extension + upper
    return struct.pack("!IHBB16s16s", 6 << 28, len(body), next_header, 64, src.packed,
                       dst.packed) + body


def networks(space: ipaddress.IPv4Network | ipaddress.IPv6Network) -> st.SearchStrategy[
        ipaddress.IPv4Network | ipaddress.IPv6Network]:
    bits = space.max_prefixlen - space.prefixlen

    def build(offset: int, length: int) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        address = space.network_address + offset
        return ipaddress.ip_network(f"{address}/{space.prefixlen + length}", strict=False)

    return st.builds(build, st.integers(0, HOSTS - 1), st.integers(0, bits))


ports = st.one_of(st.none(), st.tuples(st.integers(1, 40), st.integers(0, 10)).map(
    lambda t: (t[0], t[0] + t[1])))


@st.composite
def rules(draw: st.DrawFn) -> list[Rule]:
    count = draw(st.integers(0, 25))
    found = []
    for index in range(count):
        protocol = draw(st.sampled_from(["any", "tcp", "udp", "icmp"]))
        span = draw(ports) if protocol in ("tcp", "udp") else None
        found.append(Rule(id=index + 1, network=draw(networks(draw(st.sampled_from([V4, V6])))),
                          protocol=protocol, ports=span, allow=draw(st.booleans()),
                          priority=draw(st.integers(1, 4))))
    return found


@st.composite
def packets(draw: st.DrawFn) -> tuple[bytes, int, ipaddress.IPv4Address | ipaddress.IPv6Address,
                                      int | None]:
    space = draw(st.sampled_from([V4, V6]))
    dst = space.network_address + draw(st.integers(0, HOSTS - 1))
    src = ipaddress.ip_address("10.8.0.2" if dst.version == 4 else "fd08::2")
    protocol = draw(st.sampled_from([TCP, UDP, ICMP if dst.version == 4 else ICMPV6, 47]))
    port = draw(st.integers(1, 60))
    later = draw(st.booleans()) and protocol in (TCP, UDP)
    expected_port = (PORT_UNKNOWN if later else port) if protocol in (TCP, UDP) else None
    return packet(src, dst, protocol, dport=port, later_fragment=later), protocol, dst, \
        expected_port


@settings(max_examples=150, deadline=None)
@given(rules(), st.lists(packets(), min_size=1, max_size=30), st.booleans())
def test_compiled_agrees_with_first_match(found: list[Rule], sample: list[tuple[
        bytes, int, ipaddress.IPv4Address | ipaddress.IPv6Address, int | None]],
        default_allow: bool) -> None:
    compiled = CompiledRules(found, default_allow, {})
    for data, protocol, dst, port in sample * 2:  # the second pass comes from the flow cache
        rule = first_match(found, protocol, dst, port)
        expected = default_allow if rule is None else rule.allow
        assert compiled.allowed(data) is expected
        decided = compiled.decide(protocol, dst, port)
        assert decided.rule == rule
        if dst.version == 4:  # the gateway's one probe: cached IPv4 TCP/UDP connections only
            if port == PORT_UNKNOWN:  # a later fragment, behind its first fragment's flow
                compiled.allowed(data[:6] + bytes(2) + data[8:])
            known = compiled.known(data)
            connection = protocol in (TCP, UDP) and port != PORT_UNKNOWN
            assert (known is not None) is connection
            assert known is None or (known.rule == rule and known.allow is expected)


@settings(max_examples=150, deadline=None)
@given(rules(), st.lists(packets(), min_size=1, max_size=30), st.booleans())
def test_a_reply_passes_when_its_mirror_would(found: list[Rule], sample: list[tuple[
        bytes, int, ipaddress.IPv4Address | ipaddress.IPv6Address, int | None]],
        default_allow: bool) -> None:
    """Symmetric rules: the reply from the far end's port comes back when first-match lets
    the request go (ICMP echo replies as their requests)."""
    compiled = CompiledRules(found, default_allow, {})
    for _, protocol, far, port in sample * 2:  # the second pass from the flow cache
        if port == PORT_UNKNOWN:
            continue
        client = ipaddress.ip_address("10.8.0.2" if far.version == 4 else "fd08::2")
        reply = packet(far, client, protocol, sport=port or 0, dport=50000, icmp_type=0)
        rule = first_match(found, protocol, far, port)
        expected = default_allow if rule is None else rule.allow
        assert compiled.reply_allowed(reply) is expected
        known = compiled.known_reply(reply)  # the gateway's probe: IPv4 TCP/UDP connections
        assert (known is not None) is (far.version == 4 and protocol in (TCP, UDP))
        assert known is None or (known.rule == rule and known.allow is expected)
        if known is not None:  # a later fragment is never answered from its connection's
            assert compiled.known_reply(packet(far, client, protocol, sport=port or 0,
                                               dport=50000, later_fragment=True)) is None


def test_order_priority_then_deny_first_then_default() -> None:
    host = ipaddress.ip_network("10.0.0.5/32")
    allow = Rule(1, host, "tcp", (5432, 5432), allow=True, priority=10)
    deny_same = Rule(2, host, "any", None, allow=False, priority=10)
    compiled = CompiledRules([allow, deny_same], True, {})
    assert compiled.decide(TCP, ipaddress.ip_address("10.0.0.5"), 5432).rule == deny_same
    earlier = Rule(3, ipaddress.ip_network("10.0.0.0/24"), "tcp", (5432, 5433), priority=5)
    compiled = CompiledRules([allow, deny_same, earlier], True, {})
    assert compiled.decide(TCP, ipaddress.ip_address("10.0.0.5"), 5433).rule == earlier
    assert compiled.decide(UDP, ipaddress.ip_address("10.0.0.9"), 53).rule is None
    assert compiled.decide(UDP, ipaddress.ip_address("10.0.0.9"), 53).allow


def test_port_ranges_are_inclusive_and_fragments_fail_closed() -> None:
    net = ipaddress.ip_network("10.0.0.0/24")
    allow = Rule(1, net, "udp", (1000, 1002))
    deny = Rule(2, net, "tcp", (22, 22), allow=False)
    compiled = CompiledRules([allow, deny], False, {})
    dst = ipaddress.ip_address("10.0.0.1")
    assert [compiled.decide(UDP, dst, p).allow for p in (999, 1000, 1002, 1003)] == [
        False, True, True, False]
    assert compiled.decide(UDP, dst, PORT_UNKNOWN).rule is None  # allow with ports: no
    assert compiled.decide(TCP, dst, PORT_UNKNOWN).rule == deny  # deny with ports: yes


def test_counters_and_ipv6_extension_headers() -> None:
    hits: dict[int | str, Hits] = {}
    rule = Rule(7, ipaddress.ip_network("fd00::/64"), "tcp", (22, 22), allow=False)
    compiled = CompiledRules([rule], True, hits)
    src, dst = ipaddress.ip_address("fd08::2"), ipaddress.ip_address("fd00::9")
    plain = packet(src, dst, TCP, dport=22)
    hop_by_hop = plain[:6] + b"\x00" + plain[7:40] + bytes((TCP, 0)) + bytes(6) + plain[40:]
    assert not compiled.allowed(plain)
    assert not compiled.allowed(hop_by_hop)  # the TCP port is found behind the extension
    assert compiled.allowed(packet(src, dst, TCP, dport=23))
    assert hits[7].packets == 2 and hits["default-allow"].packets == 1


def test_garbage_never_raises() -> None:
    compiled = CompiledRules([Rule(1, V4, "tcp", (1, 5))], False, {})
    for data in (b"", b"\x45", b"\x60" + bytes(5), b"\x4f" + bytes(30), bytes(64),
                 b"\x60" + bytes(5) + b"\x2c" + bytes(33)):
        compiled.allowed(data)
        compiled.reply_allowed(data)
        flow_key(data, reply=False)


def test_icmp_errors_come_back() -> None:
    compiled = CompiledRules([], False, {})
    host, client = ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("10.8.0.2")
    assert compiled.reply_allowed(packet(host, client, ICMP, icmp_type=3))
    assert not compiled.reply_allowed(packet(host, client, ICMP, icmp_type=0))


def test_validation_and_routes() -> None:
    vpc = [ipaddress.ip_network("10.0.0.0/16"), ipaddress.ip_network("fd00::/64")]
    assert validate_rule("10.0.1.5", "tcp", "5432", vpc)[1] == (5432, 5432)
    with pytest.raises(AccessError, match="not inside the VPC networks"):
        validate_rule("10.1.0.0/24", "any", None, vpc)
    with pytest.raises(AccessError, match="ports need"):
        validate_rule("10.0.0.0/24", "icmp", "22", vpc)
    with pytest.raises(AccessError, match="1-65535"):
        validate_rule("10.0.0.0/24", "tcp", "10-2", vpc)
    policy = AccessPolicy(default="nothing", group_rules={"db": [
        Rule(1, ipaddress.ip_network("10.0.1.5/32"), "tcp", (5432, 5432), owner="group db"),
        Rule(2, ipaddress.ip_network("10.0.1.6/32"), owner="group db")]},
        members={"ann": ["db"]})
    compiled = policy.compiled_for("ann")
    assert compiled is not None and compiled is policy.compiled_for("ann")
    assert [str(n) for n in compiled.routes(vpc)] == ["10.0.1.5/32", "10.0.1.6/32"]
    assert not policy.check("bob", ICMP, ipaddress.ip_address("10.0.1.5"), None).allow
    assert AccessPolicy().compiled_for("bob") is None
    assert compiled.allowed(packet(ipaddress.ip_address("10.8.0.2"),
                                   ipaddress.ip_address("10.0.1.6"), ICMP))
    assert set(policy.hits) == {1, 2, "default-deny"}
    newer = policy.succeeded_by(AccessPolicy(default="nothing", group_rules={"db": [
        Rule(1, ipaddress.ip_network("10.0.1.5/32"), "tcp", (5432, 5432), owner="group db")]}))
    assert set(newer.hits) == {1, "default-deny"} and newer.hits[1] is policy.hits[1]
