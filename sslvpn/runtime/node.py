"""Running as one node of a fleet: which sub-pools this gateway serves, its heartbeat, and
ending the sessions of nodes that stopped beating.

``serve --node NAME`` hands out addresses only from that node's sub-pools; with no node named
and no node in the store, the gateway is the single implicit node and serves the whole pool
as before. The heartbeat stamps the node's row every few seconds through `AsyncStore` (never
a store session on the event loop), with the software version and the address this host uses
towards the VPC (the next hop `sslvpn node routes` prints). A node that finds its row gone was
removed from the fleet: its sub-pool may already be another node's, so it stops. With each
beat a node ends, in the store, the live sessions of every node whose heartbeat is older than
the timeout ("node down"), once however many nodes notice (`fleet_queries.end_down_nodes`).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import socket
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from sslvpn import __version__
from sslvpn.net.subpools import NodePools
from sslvpn.store import NotFoundError, StoreError, fleet_queries, node_queries
from sslvpn.store.async_store import AsyncStore
from sslvpn.store.models import GatewaySettings

if TYPE_CHECKING:  # what a store thread hands node_pools; never opened here
    from sqlmodel import Session

log = logging.getLogger(__name__)

BEATS_PER_TIMEOUT = 3  # two heartbeats may be lost before the others take this node for down
MIN_INTERVAL = 1.0
_PROBE_PORT = 9  # discard; a UDP connect() only asks the routing table, nothing is sent


class NodeUnknown(ValueError):
    """The node to run as is not in the store, or one must be named (one line)."""


def node_pools(s: Session, name: str | None) -> NodePools | None:
    """The sub-pools of node ``name``; None for the single implicit node (whole pool)."""
    if name is None:
        names = [node.name for node in node_queries.list_nodes(s)]
        if names:
            raise NodeUnknown(f"this database has nodes ({', '.join(names)}): "
                              "run `sslvpn serve --node NAME` (or set SSLVPN_NODE)")
        return None
    try:
        node = node_queries.get_node(s, name=name)
    except NotFoundError as exc:
        raise NodeUnknown(f"{exc}; add it with `sslvpn node add {name} ...`") from None
    pool6 = ipaddress.IPv6Network(node.pool6_cidr) if node.pool6_cidr else None
    return NodePools(node.name, ipaddress.IPv4Network(node.pool_cidr), pool6)


def heartbeat_interval(settings: GatewaySettings) -> float:
    return max(MIN_INTERVAL, settings.heartbeat_timeout / BEATS_PER_TIMEOUT)


def vpc_side_addresses(
    networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network],
) -> list[str]:
    """The local address the routing table picks towards the VPC, one per IP version."""
    found: dict[int, str] = {}
    for network in networks:
        if network.version in found:
            continue
        family = socket.AF_INET if network.version == 4 else socket.AF_INET6
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.connect((str(network.network_address), _PROBE_PORT))
                found[network.version] = str(probe.getsockname()[0])
        except OSError:  # no route to that network from here
            continue
    return list(found.values())


def _beat_and_reap(s: Session, *, node: str, timeout: int,
                   vpc_addresses: Sequence[str]) -> bool:
    """Stamp this node's heartbeat, then end the sessions of nodes whose heartbeat is older
    than ``timeout`` (in the same transaction); False when this node was removed."""
    if not node_queries.beat(s, name=node, software_version=__version__,
                             seen_vpc_addresses=vpc_addresses):
        return False
    for down, count in fleet_queries.end_down_nodes(s, survivor=node, timeout=timeout).items():
        log.warning("node %s is down (no heartbeat for %d s): ended its %d live session%s and "
                    "freed their addresses", down, timeout, count, "s" if count != 1 else "")
    return True


async def heartbeat(
    store: AsyncStore,
    *,
    node: str,
    interval: float,
    timeout: int,
    vpc_addresses: Sequence[str],
    on_removed: Callable[[], None],
) -> None:
    """Stamp the node's heartbeat every ``interval`` seconds until cancelled or removed, and
    end the sessions of nodes that stopped beating ``timeout`` seconds ago.

    A store outage only skips beats (the store logs it once); the others then see this node
    as down, which is the truth as far as the fleet can tell.
    """
    beat = functools.partial(_beat_and_reap, node=node, timeout=timeout,
                             vpc_addresses=list(vpc_addresses))
    while True:
        try:
            present = await store.write(lambda s: beat(s))
        except StoreError:  # unavailable (logged by the store) or refused: try again
            present = True
        if not present:
            log.error("node %s was removed from the fleet; stopping (its sub-pool may already "
                      "be another node's)", node)
            on_removed()
            return
        await asyncio.sleep(interval)
