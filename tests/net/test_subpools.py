"""Sub-pool carving and validation: no two nodes overlap, every sub-pool lies in the fleet
pool and is large enough, and the IPv6 sub-pool mirrors the IPv4 host numbers."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Address, IPv6Network

import pytest

from sslvpn.net.subpools import (
    Fleet,
    NodePools,
    SubpoolError,
    carve,
    check_fleet,
    effective_pool6,
    mirror6,
    plan_subpools,
    worker_slices,
)

FLEET = Fleet(IPv4Network("10.8.0.0/24"))
FLEET6 = Fleet(IPv4Network("10.8.0.0/24"), IPv6Network("fd00:8::/64"))


def _node(name: str, pool: str, pool6: str | None = None) -> NodePools:
    return NodePools(name, IPv4Network(pool), IPv6Network(pool6) if pool6 else None)


def test_carving_takes_the_lowest_free_26_until_the_fleet_pool_is_full() -> None:
    nodes: list[NodePools] = []
    for expected in ("10.8.0.0/26", "10.8.0.64/26", "10.8.0.128/26", "10.8.0.192/26"):
        pool, pool6 = plan_subpools(FLEET, nodes, pool=None, pool6=None)
        assert (str(pool), pool6) == (expected, None)
        nodes.append(NodePools(f"n{len(nodes)}", pool))
    with pytest.raises(SubpoolError, match=r"^the fleet pool 10\.8\.0\.0/24 has no free /26 left"):
        carve(FLEET, nodes)


def test_carving_fills_a_gap_and_steps_around_a_node_given_its_own_pool() -> None:
    nodes = [_node("a", "10.8.0.0/26"), _node("b", "10.8.0.96/27"), _node("c", "10.8.0.128/26")]
    assert carve(FLEET, nodes) == IPv4Network("10.8.0.192/26")
    assert carve(FLEET, nodes[1:]) == IPv4Network("10.8.0.0/26")


def test_a_fleet_pool_smaller_than_a_26_is_carved_whole_for_one_node() -> None:
    small = Fleet(IPv4Network("10.9.0.0/28"))
    assert carve(small, []) == IPv4Network("10.9.0.0/28")
    with pytest.raises(SubpoolError, match="no free /28 left"):
        carve(small, [_node("a", "10.9.0.0/28")])


@pytest.mark.parametrize(("given", "message"), [
    ("10.8.0.32/27", "pool 10.8.0.32/27 overlaps node a's pool 10.8.0.0/26"),
    ("10.8.0.0/24", "pool 10.8.0.0/24 overlaps node a's pool 10.8.0.0/26"),
    ("10.9.0.0/26", "pool 10.9.0.0/26 is outside the fleet pool 10.8.0.0/24"),
    ("10.8.0.0/23", "pool 10.8.0.0/23 is outside the fleet pool 10.8.0.0/24"),
    ("10.8.0.64/30", "pool 10.8.0.64/30 is too small: a node needs a /29 or larger"),
    ("10.8.0.65/26", "pool '10.8.0.65/26' is not a network in CIDR form"),
    ("fd00:8::/120", "pool fd00:8::/120 is not an IPv4 network"),
    ("nonsense", "pool 'nonsense' is not a network in CIDR form"),
])
def test_a_given_pool_is_refused_with_one_line_naming_the_values(given: str, message: str) -> None:
    with pytest.raises(SubpoolError) as refused:
        plan_subpools(FLEET, [_node("a", "10.8.0.0/26")], pool=given, pool6=None)
    assert str(refused.value) == message


def test_a_given_pool_that_fits_is_kept_and_the_smallest_is_a_29() -> None:
    pool, _ = plan_subpools(FLEET, [_node("a", "10.8.0.0/26")], pool="10.8.0.64/29", pool6=None)
    assert pool == IPv4Network("10.8.0.64/29")


def test_the_ipv6_mirror_holds_the_same_host_numbers() -> None:
    mirrored = mirror6(IPv4Network("10.8.0.64/26"), FLEET6)
    assert mirrored == IPv6Network("fd00:8::40/122")
    # 10.8.0.70 is host 6 of the node's pool and host 70 of the fleet's: the gateway gives it
    # host 6 of the node's IPv6 pool, which is host 70 (0x46) of the fleet's, as one node would
    assert mirrored.network_address + 6 == IPv6Address("fd00:8::46")
    assert mirror6(IPv4Network("10.8.0.64/26"), FLEET) is None
    node = _node("a", "10.8.0.128/26")
    assert effective_pool6(node, FLEET6) == IPv6Network("fd00:8::80/122")
    assert effective_pool6(node, FLEET) is None


def test_an_ipv6_pool_given_is_checked_like_the_ipv4_one() -> None:
    nodes = [_node("a", "10.8.0.0/26"), _node("b", "10.8.0.64/26", "fd00:8::1:0/112")]
    chosen = plan_subpools(FLEET6, nodes, pool="10.8.0.128/26", pool6="fd00:8::2:0/112")
    assert chosen == (IPv4Network("10.8.0.128/26"), IPv6Network("fd00:8::2:0/112"))
    refusals = {
        "fd00:8::/120": "IPv6 pool fd00:8::/120 overlaps node a's IPv6 pool fd00:8::/122",
        "fd00:8::1:0/120": "IPv6 pool fd00:8::1:0/120 overlaps node b's IPv6 pool fd00:8::1:0/112",
        "fd00:9::/112": "IPv6 pool fd00:9::/112 is outside the fleet IPv6 pool fd00:8::/64",
        "fd00:8::3:0/123": "IPv6 pool fd00:8::3:0/123 is too small: it needs as many addresses "
                           "as 10.8.0.128/26",
        "10.8.0.0/26": "IPv6 pool 10.8.0.0/26 is not an IPv6 network",
    }
    for given, message in refusals.items():
        with pytest.raises(SubpoolError) as refused:
            plan_subpools(FLEET6, nodes, pool="10.8.0.128/26", pool6=given)
        assert str(refused.value) == message
    with pytest.raises(SubpoolError, match="^IPv6 pool fd00:8::/112 given, but the fleet has no"):
        plan_subpools(FLEET, [], pool=None, pool6="fd00:8::/112")


def test_carving_skips_a_block_whose_ipv6_mirror_another_node_holds() -> None:
    # b took the IPv6 block that mirrors 10.8.0.64/26, so carving passes over that block
    nodes = [_node("a", "10.8.0.0/26"), _node("b", "10.8.0.192/26", "fd00:8::40/122")]
    assert carve(FLEET6, nodes) == IPv4Network("10.8.0.128/26")
    with pytest.raises(SubpoolError, match="overlaps node b's IPv6 pool fd00:8::40/122"):
        plan_subpools(FLEET6, nodes, pool="10.8.0.64/26", pool6=None)


def test_a_fleet_pool_change_must_still_hold_every_node() -> None:
    nodes = [_node("a", "10.8.0.0/26"), _node("b", "10.8.0.64/26", "fd00:8::1:0/112")]
    check_fleet(Fleet(IPv4Network("10.8.0.0/16"), IPv6Network("fd00:8::/64")), nodes)
    with pytest.raises(SubpoolError, match=r"^pool 10\.8\.0\.0/25 does not hold node a"):
        check_fleet(Fleet(IPv4Network("10.8.0.0/25")), [_node("a", "10.8.0.128/26")])
    with pytest.raises(SubpoolError, match=r"^IPv6 pool \(none\) does not hold node b's"):
        check_fleet(Fleet(IPv4Network("10.8.0.0/24")), nodes)


def test_worker_slices_split_a_node_pool_and_mirror_its_ipv6_block() -> None:
    pool, pool6 = IPv4Network("10.8.0.0/24"), IPv6Network("fd00::/120")
    assert worker_slices(pool, pool6, 2) == [
        (IPv4Network("10.8.0.0/25"), IPv6Network("fd00::/121")),
        (IPv4Network("10.8.0.128/25"), IPv6Network("fd00::80/121")),
    ]
    # three workers take three of four blocks (each is a CIDR block its TUN routes)
    assert [s for s, _ in worker_slices(pool, None, 3)] == [
        IPv4Network("10.8.0.0/26"), IPv4Network("10.8.0.64/26"), IPv4Network("10.8.0.128/26")]
    assert worker_slices(pool, None, 1) == [(pool, None)]


def test_worker_slices_refuse_slices_smaller_than_a_29() -> None:
    assert len(worker_slices(IPv4Network("10.8.0.0/24"), None, 32)) == 32
    with pytest.raises(SubpoolError, match="too small for 33 workers"):
        worker_slices(IPv4Network("10.8.0.0/24"), None, 33)
