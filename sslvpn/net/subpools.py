"""Splitting the fleet's client pools into one sub-pool per node (pure: no store, no I/O).

A node hands out addresses only from its own sub-pool, and the VPC routes each sub-pool to
its node, so two nodes can never give a client the same address and every reply finds the
node that holds the session. ``plan_subpools`` decides a new node's sub-pools: the operator's
choice checked (inside the fleet pool, no overlap with another node, large enough), or the
first free ``CARVE_PREFIX`` block of the fleet pool. Every refusal is a `SubpoolError` with a
one-line message for the CLI, the API and the portal alike.

IPv6 mirrors IPv4: the gateway gives the client with host number n of the IPv4 pool host n of
the IPv6 pool, so a node's default IPv6 sub-pool is the block of the fleet's IPv6 pool that
holds the same host numbers as its IPv4 sub-pool (``mirror6``). A client keeps the same
IPv4-to-IPv6 pairing whichever node it lands on.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

CARVE_PREFIX = 26  # a carved sub-pool: 62 addresses, a gateway and 61 clients
MIN_PREFIX = 29  # the smallest sub-pool: a gateway and 5 clients (as the fleet pool's minimum)


class SubpoolError(ValueError):
    """A sub-pool was refused; the message is one line naming the values."""


@dataclass(frozen=True)
class NodePools:
    """One node's sub-pools; ``pool6`` None means the mirror in the fleet's IPv6 pool."""

    name: str
    pool: ipaddress.IPv4Network
    pool6: ipaddress.IPv6Network | None = None


@dataclass(frozen=True)
class Fleet:
    """The fleet-wide client pools the sub-pools are cut from."""

    pool: ipaddress.IPv4Network
    pool6: ipaddress.IPv6Network | None = None


def mirror6(pool: ipaddress.IPv4Network, fleet: Fleet) -> ipaddress.IPv6Network | None:
    """The IPv6 block holding the same host numbers as ``pool`` (None without an IPv6 pool)."""
    if fleet.pool6 is None:
        return None
    offset = int(pool.network_address) - int(fleet.pool.network_address)
    start = int(fleet.pool6.network_address) + offset
    return ipaddress.IPv6Network((start, 128 - (32 - pool.prefixlen)))


def effective_pool6(node: NodePools, fleet: Fleet) -> ipaddress.IPv6Network | None:
    """The IPv6 sub-pool a node serves: its own, else the mirror (None: no IPv6 pool)."""
    if fleet.pool6 is None:
        return None
    return node.pool6 if node.pool6 is not None else mirror6(node.pool, fleet)


def plan_subpools(
    fleet: Fleet, nodes: Sequence[NodePools], *, pool: str | None, pool6: str | None
) -> tuple[ipaddress.IPv4Network, ipaddress.IPv6Network | None]:
    """The checked sub-pools of a new node beside ``nodes`` (``pool6`` None: the mirror).

    Returns the IPv4 sub-pool and the IPv6 one to store (None when it is the mirror).
    """
    chosen = carve(fleet, nodes) if pool is None else check_pool(pool, fleet, nodes)
    if pool6 is None:
        mirrored = mirror6(chosen, fleet)
        if mirrored is not None:
            _refuse_overlap6(mirrored, fleet, nodes)
        return chosen, None
    return chosen, check_pool6(pool6, chosen, fleet, nodes)


def carve(fleet: Fleet, nodes: Sequence[NodePools]) -> ipaddress.IPv4Network:
    """The lowest ``CARVE_PREFIX`` block of the fleet pool that no node overlaps, in IPv4 or
    through its IPv6 mirror (the whole fleet pool when it is smaller than one block)."""
    prefix = max(CARVE_PREFIX, fleet.pool.prefixlen)
    taken6 = [p for p in (effective_pool6(node, fleet) for node in nodes) if p is not None]
    for block in fleet.pool.subnets(new_prefix=prefix):
        mirrored = mirror6(block, fleet)
        if any(block.overlaps(node.pool) for node in nodes):
            continue
        if mirrored is None or not any(mirrored.overlaps(other) for other in taken6):
            return block
    raise SubpoolError(
        f"the fleet pool {fleet.pool} has no free /{prefix} left; give a smaller pool or "
        "widen the fleet pool"
    )


def check_pool(
    text: str, fleet: Fleet, nodes: Sequence[NodePools]
) -> ipaddress.IPv4Network:
    """An operator's IPv4 sub-pool, if it fits the fleet pool beside the other nodes."""
    pool = _network(text, "pool")
    if not isinstance(pool, ipaddress.IPv4Network):
        raise SubpoolError(f"pool {text} is not an IPv4 network")
    if pool.prefixlen > MIN_PREFIX:
        raise SubpoolError(f"pool {pool} is too small: a node needs a /{MIN_PREFIX} or larger")
    if not pool.subnet_of(fleet.pool):
        raise SubpoolError(f"pool {pool} is outside the fleet pool {fleet.pool}")
    for node in nodes:
        if pool.overlaps(node.pool):
            raise SubpoolError(f"pool {pool} overlaps node {node.name}'s pool {node.pool}")
    return pool


def check_pool6(
    text: str, pool: ipaddress.IPv4Network, fleet: Fleet, nodes: Sequence[NodePools]
) -> ipaddress.IPv6Network:
    """An operator's IPv6 sub-pool for a node whose IPv4 sub-pool is ``pool``."""
    if fleet.pool6 is None:
        raise SubpoolError(f"IPv6 pool {text} given, but the fleet has no IPv6 pool")
    pool6 = _network(text, "IPv6 pool")
    if not isinstance(pool6, ipaddress.IPv6Network):
        raise SubpoolError(f"IPv6 pool {text} is not an IPv6 network")
    if not pool6.subnet_of(fleet.pool6):
        raise SubpoolError(f"IPv6 pool {pool6} is outside the fleet IPv6 pool {fleet.pool6}")
    if pool6.num_addresses < pool.num_addresses:
        raise SubpoolError(f"IPv6 pool {pool6} is too small: it needs as many addresses as {pool}")
    _refuse_overlap6(pool6, fleet, nodes)
    return pool6


def check_fleet(fleet: Fleet, nodes: Sequence[NodePools]) -> None:
    """Refuse fleet pools that would leave a node's sub-pool outside them (settings change)."""
    for node in nodes:
        if not node.pool.subnet_of(fleet.pool):
            raise SubpoolError(
                f"pool {fleet.pool} does not hold node {node.name}'s pool {node.pool}"
            )
        if node.pool6 is None:
            continue
        if fleet.pool6 is None or not node.pool6.subnet_of(fleet.pool6):
            shown = fleet.pool6 or "(none)"
            raise SubpoolError(
                f"IPv6 pool {shown} does not hold node {node.name}'s IPv6 pool {node.pool6}"
            )


def _refuse_overlap6(
    pool6: ipaddress.IPv6Network, fleet: Fleet, nodes: Sequence[NodePools]
) -> None:
    for node in nodes:
        theirs = effective_pool6(node, fleet)
        if theirs is not None and pool6.overlaps(theirs):
            raise SubpoolError(f"IPv6 pool {pool6} overlaps node {node.name}'s IPv6 pool {theirs}")


def _network(text: str, what: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError:
        raise SubpoolError(f"{what} {text!r} is not a network in CIDR form") from None


def worker_slices(
    pool: ipaddress.IPv4Network, pool6: ipaddress.IPv6Network | None, count: int
) -> list[tuple[ipaddress.IPv4Network, ipaddress.IPv6Network | None]]:
    """A node's sub-pools cut into ``count`` slices, one per worker process of that node.

    Each slice is a CIDR block (its TUN's connected route carries VPC replies to the worker
    owning the address), so with a count that is not a power of two the last blocks stay
    unused. IPv6 slices mirror the IPv4 ones inside ``pool6`` exactly as a node's IPv6
    sub-pool mirrors its IPv4 one in the fleet, so a client's pairing never changes.
    """
    if count < 1:
        raise SubpoolError(f"{count} workers: give at least one")
    prefix = pool.prefixlen + (count - 1).bit_length()
    if prefix > MIN_PREFIX:
        raise SubpoolError(f"pool {pool} is too small for {count} workers: each needs a "
                           f"/{MIN_PREFIX} or larger")
    within = Fleet(pool, pool6)
    return [(block, mirror6(block, within))
            for block in list(pool.subnets(new_prefix=prefix))[:count]]
