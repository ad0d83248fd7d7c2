"""The fleet's nodes as the CLI, the REST API and the portal manage them.

`add_node` checks a new node's name, addresses and sub-pools (the pure rules in
`sslvpn.net.subpools`) against the fleet pools and every other node under the store's writer
lock, so two operators adding nodes at once cannot get overlapping sub-pools; `remove_node`
refuses while the node has live sessions unless forced; `node_statuses` and `route_entries`
are what `node list` and `node routes` show. Every refusal is a `LifecycleError` (or a
`StoreError` for unknown and duplicate names) with one line safe to show, and every change
leaves an audit entry.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session

from client_profiles.pkifiles import LifecycleError
from sslvpn.net.subpools import Fleet, NodePools, SubpoolError, effective_pool6, plan_subpools
from sslvpn.store import node_queries, queries
from sslvpn.store.db import session
from sslvpn.store.models import GatewaySettings, Node

NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
NODE_NAME_RULE = "letters, digits, '.', '_' or '-', starting with a letter or digit, at most 64"
_HOST = re.compile(r"[A-Za-z0-9.:_-]{1,253}")
REMOVED_REASON = "node removed"


@dataclass(frozen=True)
class NodeStatus:
    """One node as `node list` shows it; ``state`` is "up" or "down" from its heartbeat."""

    name: str
    public_addresses: tuple[str, ...]
    pool: str
    pool6: str | None
    state: str
    sessions: int
    software_version: str | None
    last_seen: datetime | None

    @property
    def pools(self) -> str:
        """Its sub-pools in words, e.g. "10.8.0.0/26 and fd00:8::/122"."""
        return self.pool if self.pool6 is None else f"{self.pool} and {self.pool6}"

    def as_json(self) -> dict[str, Any]:
        """The JSON object `node list --json` and the REST API give."""
        return {**asdict(self), "public_addresses": list(self.public_addresses),
                "last_seen": self.last_seen.isoformat() if self.last_seen else None}


@dataclass(frozen=True)
class RouteEntry:
    """A VPC route-table entry: ``destination`` via ``next_hop`` (None: not known yet)."""

    node: str
    destination: str
    next_hop: str | None


def fleet_of(settings: GatewaySettings) -> Fleet:
    """The fleet-wide pools from the stored settings."""
    pool = ipaddress.IPv4Network(settings.pool_cidr)
    pool6 = ipaddress.IPv6Network(settings.pool6_cidr) if settings.pool6_cidr else None
    return Fleet(pool=pool, pool6=pool6)


def pools_of(node: Node) -> NodePools:
    pool6 = ipaddress.IPv6Network(node.pool6_cidr) if node.pool6_cidr else None
    return NodePools(node.name, ipaddress.IPv4Network(node.pool_cidr), pool6)


def add_node(
    engine: Engine,
    *,
    name: str,
    public_addresses: Sequence[str],
    pool: str | None = None,
    pool6: str | None = None,
    vpc_addresses: Sequence[str] = (),
    actor: str,
    source_address: str | None = None,
) -> NodeStatus:
    """Add a node; without ``pool`` its sub-pool is carved from the fleet pool."""
    if not NODE_NAME.fullmatch(name):
        raise LifecycleError(f"node name {name!r} is not allowed: {NODE_NAME_RULE}")
    addresses = [a.strip() for a in public_addresses]
    if not addresses or not all(_HOST.fullmatch(a) for a in addresses):
        raise LifecycleError("give at least one public address (a DNS name or IP address)")
    hops = _vpc_addresses(vpc_addresses)
    with session(engine, write=True) as s:
        fleet = fleet_of(queries.get_settings(s))
        others = [pools_of(node) for node in node_queries.list_nodes(s)]
        try:
            chosen, chosen6 = plan_subpools(fleet, others, pool=pool, pool6=pool6)
        except SubpoolError as exc:
            raise LifecycleError(str(exc)) from None
        row = node_queries.add_node(
            s, name=name, public_addresses=addresses, pool_cidr=str(chosen),
            pool6_cidr=None if chosen6 is None else str(chosen6), vpc_addresses=hops,
        )
        queries.record_audit(
            s, actor=actor, action="node.add", target=name, source_address=source_address,
            detail=f"pool={chosen} addresses={','.join(addresses)}",
        )
    return _status(row, fleet, up=False, sessions=0)


def remove_node(
    engine: Engine, *, name: str, force: bool = False, actor: str,
    source_address: str | None = None,
) -> int:
    """Remove a node; refused while it has live sessions unless ``force``, which ends them in
    the store. Returns how many sessions were ended."""
    with session(engine, write=True) as s:
        node_queries.get_node(s, name=name)
        live = node_queries.open_session_counts(s).get(name, 0)
        if live and not force:
            raise LifecycleError(
                f"node {name} has {live} live session{'s' if live != 1 else ''}; "
                "stop it first or force the removal"
            )
        ended = queries.close_stale_session_records(
            s, node=name, at=node_queries.database_now(s), reason=REMOVED_REASON
        )
        node_queries.delete_node(s, name=name)
        queries.record_audit(
            s, actor=actor, action="node.remove", target=name, source_address=source_address,
            detail=f"sessions_ended={ended}",
        )
    return ended


def node_statuses(engine: Engine) -> list[NodeStatus]:
    """Every node with its state (from its heartbeat's age) and live session count."""
    with session(engine, write=False) as s:
        settings = queries.get_settings(s)
        nodes = node_queries.list_nodes(s)
        counts = node_queries.open_session_counts(s)
        now = node_queries.database_now(s)
    fleet = fleet_of(settings)
    timeout = timedelta(seconds=settings.heartbeat_timeout)
    return [
        _status(node, fleet, sessions=counts.get(node.name, 0),
                up=node.heartbeat_at is not None and now - node.heartbeat_at <= timeout)
        for node in nodes
    ]


def _status(node: Node, fleet: Fleet, *, up: bool, sessions: int) -> NodeStatus:
    pool6 = effective_pool6(pools_of(node), fleet)
    return NodeStatus(
        name=node.name,
        public_addresses=tuple(node.public_addresses),
        pool=node.pool_cidr,
        pool6=None if pool6 is None else str(pool6),
        state="up" if up else "down",
        sessions=sessions,
        software_version=node.software_version,
        last_seen=node.heartbeat_at,
    )


def route_entries(s: Session) -> list[RouteEntry]:
    """Each node's sub-pools via its VPC-side address (the operator's, else the node's own
    report), as the VPC route table needs them."""
    fleet = fleet_of(queries.get_settings(s))
    entries = []
    for node in node_queries.list_nodes(s):
        hops = [ipaddress.ip_address(a) for a in node.vpc_addresses or node.seen_vpc_addresses]
        pool6 = effective_pool6(pools_of(node), fleet)
        for destination in (node.pool_cidr, pool6):
            if destination is None:
                continue
            version = ipaddress.ip_network(destination).version
            hop = next((str(a) for a in hops if a.version == version), None)
            entries.append(RouteEntry(node.name, str(destination), hop))
    return entries


def node_addresses(s: Session) -> list[list[str]]:
    """Each node's public addresses, in node order (empty: the single implicit node)."""
    return [list(node.public_addresses) for node in node_queries.list_nodes(s)]


def _vpc_addresses(given: Sequence[str]) -> list[str]:
    """At most one IPv4 and one IPv6 unicast address: the node's next hop in the VPC."""
    checked: list[str] = []
    versions = set()
    for text in given:
        try:
            address = ipaddress.ip_address(text.strip())
        except ValueError:
            raise LifecycleError(f"VPC address {text!r} is not an IP address") from None
        if address.is_multicast or address.is_unspecified or address.is_loopback:
            raise LifecycleError(f"VPC address {address} is not a unicast host address")
        if address.version in versions:
            raise LifecycleError(f"give at most one IPv{address.version} VPC address")
        versions.add(address.version)
        checked.append(str(address))
    return checked
