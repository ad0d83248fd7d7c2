"""SPD lookup (drop when no policy matches) and validation of operator input."""

from __future__ import annotations

import ipaddress

import pytest

from sslvpn.ipsec.policy import (
    FLOW_CACHE_SIZE,
    PolicyError,
    PolicyRule,
    Spd,
    check_policy,
    check_psk,
    check_unicast_address,
    parse_cidr,
)


def a(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def rule(local: str, peer: str) -> PolicyRule:
    return PolicyRule(ipaddress.ip_network(local), ipaddress.ip_network(peer))


@pytest.fixture
def spd() -> Spd[str]:
    table: Spd[str] = Spd()
    table.set_rules("dc1", [rule("10.1.0.0/24", "10.2.0.0/24"), rule("10.9.0.0/24", "10.2.0.0/24")])
    table.set_rules("dc2", [rule("10.1.0.0/24", "172.16.0.0/16"), rule("fd01::/64", "fd00::/64")])
    return table


def test_outbound_picks_the_tunnel_by_peer_range_and_checks_the_source(spd: Spd[str]) -> None:
    assert spd.outbound(a("10.1.0.10"), a("10.2.0.10")) == "dc1"
    assert spd.outbound(a("10.9.0.3"), a("10.2.0.10")) == "dc1"
    assert spd.outbound(a("10.1.0.10"), a("172.16.5.5")) == "dc2"
    assert spd.outbound(a("10.7.0.1"), a("10.2.0.10")) is None  # source not a local range
    assert spd.outbound(a("10.1.0.10"), a("8.8.8.8")) is None  # no policy at all
    assert spd.outbound(a("fd01::5"), a("fd00::1")) == "dc2"
    assert spd.outbound(a("10.1.0.10"), a("fd00::1")) is None  # v4 source, v6 destination


def test_cached_verdicts_follow_rule_changes(spd: Spd[str]) -> None:
    flow = (a("10.1.0.10"), a("10.2.0.10"))
    back = (a("10.2.0.10"), a("10.1.0.10"))
    assert spd.outbound(*flow) == "dc1" and spd.outbound(*flow) == "dc1"
    assert spd.inbound_allowed("dc1", *back) and not spd.inbound_allowed("dc2", *back)
    spd.remove("dc1")
    assert spd.outbound(*flow) is None and not spd.inbound_allowed("dc1", *back)
    spd.set_rules("dc3", [rule("10.1.0.0/24", "10.2.0.0/24")])
    assert spd.outbound(*flow) == "dc3" and spd.inbound_allowed("dc3", *back)


def test_the_flow_cache_stays_bounded(spd: Spd[str]) -> None:
    for i in range(FLOW_CACHE_SIZE + 10):
        source = a("10.1.0.10") if i % 2 else (0x0A070000 + i).to_bytes(4, "big")
        assert spd.outbound(source, a("10.2.0.10")) == ("dc1" if i % 2 else None)
        assert spd.inbound_allowed("dc1", a("10.2.0.10"), source) is bool(i % 2)
    assert len(spd._outbound_cache) <= FLOW_CACHE_SIZE
    assert len(spd._inbound_cache) <= FLOW_CACHE_SIZE


def test_inbound_must_come_from_that_tunnels_peer_range(spd: Spd[str]) -> None:
    assert spd.inbound_allowed("dc1", a("10.2.0.10"), a("10.1.0.10"))
    assert not spd.inbound_allowed("dc2", a("10.2.0.10"), a("10.1.0.10"))  # spoofed by dc2
    assert not spd.inbound_allowed("dc1", a("10.2.0.10"), a("10.5.0.1"))  # outside local
    spd.remove("dc1")
    assert spd.outbound(a("10.1.0.10"), a("10.2.0.10")) is None
    assert not spd.inbound_allowed("dc1", a("10.2.0.10"), a("10.1.0.10"))


def test_parse_cidr_messages() -> None:
    assert str(parse_cidr(" 10.1.0.0/24 ")) == "10.1.0.0/24"
    with pytest.raises(PolicyError, match="did you mean 10.1.0.0/24"):
        parse_cidr("10.1.0.5/24")
    with pytest.raises(PolicyError, match="not a network"):
        parse_cidr("10.1.0/33")


def test_overlap_rules() -> None:
    n = ipaddress.ip_network
    existing = [
        ("dc2", n("10.0.0.0/24"), n("10.3.0.0/16")),
        ("dc1", n("10.0.0.0/24"), n("10.9.0.0/24")),
    ]
    check_policy(n("10.1.0.0/24"), n("10.2.0.0/24"), existing, tunnel="dc1")
    check_policy(n("10.1.0.0/24"), n("10.9.0.0/25"), existing, tunnel="dc1")  # own peer range
    with pytest.raises(PolicyError, match="local range 10.1.0.0/16 overlaps peer range"):
        check_policy(n("10.1.0.0/16"), n("10.1.2.0/24"))
    with pytest.raises(PolicyError, match="peer range 10.3.1.0/24 overlaps 10.3.0.0/16, a peer"):
        check_policy(n("10.1.0.0/24"), n("10.3.1.0/24"), existing, tunnel="dc1")
    with pytest.raises(PolicyError, match="local range 10.3.0.0/24 overlaps .* tunnel 'dc2'"):
        check_policy(n("10.3.0.0/24"), n("10.4.0.0/24"), existing, tunnel="dc1")
    with pytest.raises(PolicyError, match="local range 10.9.0.0/24 overlaps .* tunnel 'dc1'"):
        check_policy(n("10.9.0.0/24"), n("10.4.0.0/24"), existing, tunnel="dc1")
    with pytest.raises(PolicyError, match="peer range 10.0.0.0/16 overlaps 10.0.0.0/24, a local"):
        check_policy(n("10.1.0.0/24"), n("10.0.0.0/16"), existing, tunnel="dc3")
    with pytest.raises(PolicyError, match="IP versions"):
        check_policy(n("10.1.0.0/24"), n("fd00::/64"))


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("0.0.0.0", "unspecified"),  # noqa: S104
        ("224.0.0.5", "multicast"),
        ("127.0.0.1", "loopback"),
        ("169.254.1.1", "link-local"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "multicast|reserved|broadcast"),
        ("::1", "loopback"),
        ("not-an-ip", "not an IP address"),
    ],
)
def test_customer_gateway_address_must_be_usable_unicast(text: str, problem: str) -> None:
    with pytest.raises(PolicyError, match=problem):
        check_unicast_address(text)


def test_usable_addresses_pass_normalised() -> None:
    assert check_unicast_address(" 198.18.0.2") == "198.18.0.2"
    assert check_unicast_address("2001:DB8::1") == "2001:db8::1"


def test_psk_strength_and_the_secret_stays_out_of_errors() -> None:
    assert check_psk("lab-psk-0123456789abcdef") == "lab-psk-0123456789abcdef"
    for weak, why in (("short-psk", "too short"), ("a" * 30, "too weak"), ("x" * 200, "too long")):
        with pytest.raises(PolicyError, match=why) as info:
            check_psk(weak)
        assert weak not in str(info.value)
    with pytest.raises(PolicyError, match="printable"):
        check_psk(" lab-psk-0123456789abcdef")
