"""Named queries for site-to-site IPsec: VPN gateways, customer gateways, tunnels, SPD policies.

Same conventions as `sslvpn.store.queries`: `Session` first, keyword-only arguments, flush but
never commit. Objects are addressed by their unique names. Unknown names raise
`NotFoundError`, duplicates `DuplicateError`, deleting something still in use
`ConflictError`; every message is safe to show and never contains a PSK.

Value checks that need no database (CIDR syntax, overlaps, unicast addresses, PSK strength,
proposal syntax) are pure functions in `sslvpn.ipsec.policy`; the faces (CLI, portal) run
them first, using `policies_on_gateway` for the overlap rules, then call these queries.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, SQLModel, col, select

from sslvpn.store import ConflictError, NotFoundError
from sslvpn.store.models import (
    START_ACTION_VALUES,
    TUNNEL_TIMER_COLUMNS,
    CustomerGateway,
    GatewaySettings,
    SpdPolicy,
    VpnGateway,
    VpnTunnel,
)
from sslvpn.store.node_queries import database_now, get_node, list_nodes
from sslvpn.store.queries import get_settings
from sslvpn.store.rows import assign, insert, integrity_error

# VPN gateways --------------------------------------------------------------------------


def create_vpn_gateway(
    s: Session,
    *,
    name: str,
    public_address: str,
    bandwidth_bps: int | None = None,
    nodes: Sequence[str] = (),
    on_activate: str | None = None,
) -> VpnGateway:
    """A gateway; ``nodes`` (fleet nodes that exist) may carry its tunnels, one at a time."""
    for node in nodes:
        get_node(s, name=node)
    if len(set(nodes)) != len(nodes):
        raise ConflictError("a node is named twice")
    row = VpnGateway(name=name, public_address=public_address, bandwidth_bps=bandwidth_bps,
                     nodes=list(nodes), on_activate=on_activate)
    return insert(s, row, f"VPN gateway {name!r}")


def get_vpn_gateway(s: Session, *, name: str) -> VpnGateway:
    row = s.exec(select(VpnGateway).where(VpnGateway.name == name)).first()
    if row is None:
        raise NotFoundError(f"no VPN gateway named {name!r}")
    return row


def list_vpn_gateways(s: Session) -> list[VpnGateway]:
    return list(s.exec(select(VpnGateway).order_by(col(VpnGateway.name))))


def set_vpn_gateway_bandwidth(s: Session, *, name: str, bandwidth_bps: int | None) -> VpnGateway:
    """Change (or lift, with None) the gateway's cap; running tunnels keep their SAs."""
    row = get_vpn_gateway(s, name=name)
    assign(s, row, f"VPN gateway {name!r}", {"bandwidth_bps": bandwidth_bps})
    return row


def delete_vpn_gateway(s: Session, *, name: str) -> None:
    """Remove a gateway that no tunnel uses any more."""
    row = get_vpn_gateway(s, name=name)
    used = _tunnel_names(s, col(VpnTunnel.gateway_id) == row.id)
    if used:
        raise ConflictError(f"VPN gateway {name!r} still has tunnels: {', '.join(used)}")
    _remove(s, row, f"VPN gateway {name!r}")


def client_pools(s: Session) -> list[str]:
    """The remote-access client pools (IPv4, IPv6) that no IPsec range may overlap."""
    try:
        settings = get_settings(s)
    except NotFoundError:
        return []
    return [pool for pool in (settings.pool_cidr, settings.pool6_cidr) if pool]


# Customer gateways ---------------------------------------------------------------------


def create_customer_gateway(s: Session, *, name: str, address: str) -> CustomerGateway:
    return insert(s, CustomerGateway(name=name, address=address), f"customer gateway {name!r}")


def get_customer_gateway(s: Session, *, name: str) -> CustomerGateway:
    row = s.exec(select(CustomerGateway).where(CustomerGateway.name == name)).first()
    if row is None:
        raise NotFoundError(f"no customer gateway named {name!r}")
    return row


def list_customer_gateways(s: Session) -> list[CustomerGateway]:
    return list(s.exec(select(CustomerGateway).order_by(col(CustomerGateway.name))))


def delete_customer_gateway(s: Session, *, name: str) -> None:
    """Remove a customer gateway that no tunnel uses any more."""
    row = get_customer_gateway(s, name=name)
    used = _tunnel_names(s, col(VpnTunnel.customer_gateway_id) == row.id)
    if used:
        raise ConflictError(f"customer gateway {name!r} still has tunnels: {', '.join(used)}")
    _remove(s, row, f"customer gateway {name!r}")


# Tunnels -------------------------------------------------------------------------------


def create_tunnel(
    s: Session,
    *,
    name: str,
    gateway: str,
    customer_gateway: str,
    psk: str,
    ike_proposals: str,
    esp_proposals: str,
    start_action: str = "initiate",
    settings: Mapping[str, Any] | None = None,
) -> VpnTunnel:
    _check_start_action(start_action)
    gateway_id = _id(get_vpn_gateway(s, name=gateway))
    customer_id = _id(get_customer_gateway(s, name=customer_gateway))
    same_pair = _tunnel_names(
        s,
        (col(VpnTunnel.gateway_id) == gateway_id)
        & (col(VpnTunnel.customer_gateway_id) == customer_id),
    )
    if same_pair:  # the peer's address picks the tunnel for incoming IKE: one per pair
        raise ConflictError(
            f"tunnel {same_pair[0]!r} already connects {gateway!r} to {customer_gateway!r}"
        )
    row = VpnTunnel(
        name=name,
        gateway_id=gateway_id,
        customer_gateway_id=customer_id,
        psk=psk,
        ike_proposals=ike_proposals,
        esp_proposals=esp_proposals,
        start_action=start_action,
        **_timers(settings or {}),
    )
    return insert(s, row, f"tunnel {name!r}")


def _check_start_action(start_action: str) -> None:
    if start_action not in START_ACTION_VALUES:
        raise ConflictError(f"start action must be one of {', '.join(START_ACTION_VALUES)}")


def _timers(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Timer columns only (values checked by the faces with `TunnelSettings`)."""
    unknown = set(settings) - set(TUNNEL_TIMER_COLUMNS)
    if unknown:
        raise ConflictError(f"unknown tunnel setting {sorted(unknown)[0]!r}")
    return dict(settings)


def tunnel_timers(row: VpnTunnel) -> dict[str, Any]:
    """The timers stored on a tunnel row, by column name."""
    return {name: getattr(row, name) for name in TUNNEL_TIMER_COLUMNS}


def set_tunnel(
    s: Session, *, name: str, settings: Mapping[str, Any] | None = None,
    start_action: str | None = None,
) -> VpnTunnel:
    """Change a tunnel's timers and/or start action; the running service applies them to
    new SAs without renegotiating the current ones."""
    row = get_tunnel(s, name=name)
    values = _timers(settings or {})
    if start_action is not None:
        _check_start_action(start_action)
        values["start_action"] = start_action
    assign(s, row, f"tunnel {name!r}", values)
    return row


def get_tunnel(s: Session, *, name: str) -> VpnTunnel:
    row = s.exec(select(VpnTunnel).where(VpnTunnel.name == name)).first()
    if row is None:
        raise NotFoundError(f"no tunnel named {name!r}")
    return row


def list_tunnels(s: Session) -> list[VpnTunnel]:
    return list(s.exec(select(VpnTunnel).order_by(col(VpnTunnel.name))))


def delete_tunnel(s: Session, *, name: str) -> None:
    """Remove a tunnel and its SPD policies."""
    row = get_tunnel(s, name=name)
    s.exec(delete(SpdPolicy).where(col(SpdPolicy.tunnel_id) == row.id))
    _remove(s, row, f"tunnel {name!r}")


def set_tunnel_admin_up(s: Session, *, name: str, up: bool) -> VpnTunnel:
    """The operator's up/down switch; the running service follows it."""
    row = get_tunnel(s, name=name)
    assign(s, row, f"tunnel {name!r}", {"admin_up": up})
    return row


# SPD policies --------------------------------------------------------------------------


def add_policy(s: Session, *, tunnel: str, local_cidr: str, peer_cidr: str) -> SpdPolicy:
    row = get_tunnel(s, name=tunnel)
    exists = s.exec(
        select(SpdPolicy).where(
            SpdPolicy.tunnel_id == row.id,
            SpdPolicy.local_cidr == local_cidr,
            SpdPolicy.peer_cidr == peer_cidr,
        )
    ).first()
    if exists is not None:
        raise ConflictError(f"tunnel {tunnel!r} already has policy {local_cidr} <-> {peer_cidr}")
    policy = SpdPolicy(tunnel_id=_id(row), local_cidr=local_cidr, peer_cidr=peer_cidr)
    return insert(s, policy, f"policy {local_cidr} <-> {peer_cidr}")


def list_policies(s: Session, *, tunnel: str | None = None) -> list[tuple[str, SpdPolicy]]:
    """(tunnel name, policy) pairs, optionally of one tunnel."""
    query = select(VpnTunnel.name, SpdPolicy).where(VpnTunnel.id == SpdPolicy.tunnel_id)
    if tunnel is not None:
        query = query.where(VpnTunnel.id == get_tunnel(s, name=tunnel).id)
    query = query.order_by(col(VpnTunnel.name), col(SpdPolicy.id))
    return [(name, policy) for name, policy in s.exec(query)]


def delete_policy(s: Session, *, tunnel: str, local_cidr: str, peer_cidr: str) -> None:
    row = get_tunnel(s, name=tunnel)
    policy = s.exec(
        select(SpdPolicy).where(
            SpdPolicy.tunnel_id == row.id,
            SpdPolicy.local_cidr == local_cidr,
            SpdPolicy.peer_cidr == peer_cidr,
        )
    ).first()
    if policy is None:
        raise NotFoundError(f"tunnel {tunnel!r} has no policy {local_cidr} <-> {peer_cidr}")
    _remove(s, policy, f"policy {local_cidr} <-> {peer_cidr}")


def policies_on_gateway(s: Session, *, tunnel: str) -> list[tuple[str, str, str]]:
    """(tunnel name, local CIDR, peer CIDR) of every policy on ``tunnel``'s VPN gateway."""
    row = get_tunnel(s, name=tunnel)
    query = select(VpnTunnel.name, SpdPolicy.local_cidr, SpdPolicy.peer_cidr).where(
        VpnTunnel.id == SpdPolicy.tunnel_id,
        VpnTunnel.gateway_id == row.gateway_id,
    )
    return [(name, local, peer) for name, local, peer in s.exec(query)]


# What the runtime needs ----------------------------------------------------------------


@dataclass(frozen=True)
class TunnelConfig:
    """Everything the IPsec service needs to run one tunnel, read in one transaction."""

    name: str
    gateway: str
    local_address: str  # where this node speaks from
    remote_address: str
    psk: str
    ike_proposals: str
    esp_proposals: str
    start_action: str  # initiate | wait | trap (start on the first packet)
    admin_up: bool
    bandwidth_bps: int | None
    policies: tuple[tuple[str, str], ...]  # (local CIDR, peer CIDR)
    tunnel_id: int = 0  # the key of its lease among a fleet's nodes
    local_id: str = ""  # IKE identity: the gateway's public address, the same on every node
    nodes: tuple[str, ...] = ()  # empty: the single gateway runs it, no lease
    on_activate: str | None = None
    timers: Mapping[str, Any] = field(default_factory=dict)  # TUNNEL_TIMER_COLUMNS

    @property
    def initiate(self) -> bool:
        return self.start_action == "initiate"

    def __repr__(self) -> str:
        return f"TunnelConfig(name={self.name!r}, remote={self.remote_address!r})"


def tunnel_configs(s: Session, node: str | None = None) -> list[TunnelConfig]:
    """Every tunnel, as node ``node`` would run it: a fleet gateway's tunnels speak from that
    node's own public address (of the peer's IP version) when the gateway names the node."""
    gateways = {g.id: g for g in list_vpn_gateways(s)}
    customers = {c.id: c for c in list_customer_gateways(s)}
    addresses = {n.name: n.public_addresses for n in list_nodes(s)} if node else {}
    policies: dict[str, list[tuple[str, str]]] = {}
    for name, policy in list_policies(s):
        policies.setdefault(name, []).append((policy.local_cidr, policy.peer_cidr))
    configs = []
    for tunnel in list_tunnels(s):
        gateway = gateways[tunnel.gateway_id]
        remote = customers[tunnel.customer_gateway_id].address
        local = gateway.public_address
        if node in gateway.nodes:
            local = _node_address(addresses.get(node, []), remote) or local
        configs.append(
            TunnelConfig(
                name=tunnel.name,
                gateway=gateway.name,
                local_address=local,
                remote_address=remote,
                psk=tunnel.psk,
                ike_proposals=tunnel.ike_proposals,
                esp_proposals=tunnel.esp_proposals,
                start_action=tunnel.start_action,
                admin_up=tunnel.admin_up,
                bandwidth_bps=gateway.bandwidth_bps,
                policies=tuple(policies.get(tunnel.name, ())),
                tunnel_id=_id(tunnel),
                local_id=gateway.public_address,
                nodes=tuple(gateway.nodes),
                on_activate=gateway.on_activate,
                timers=tunnel_timers(tunnel),
            )
        )
    return configs


def peer_side(s: Session, *, name: str) -> tuple[TunnelConfig, tuple[str, ...]]:
    """A tunnel and every address its VPN gateway may speak from: the gateway's public
    address (its IKE identity) and, on a fleet, each of its nodes' (for the peer's
    configuration, which must accept them all)."""
    config = next((c for c in tunnel_configs(s) if c.name == name), None)
    if config is None:
        raise NotFoundError(f"no tunnel named {name!r}")
    nodes = {n.name: n.public_addresses for n in list_nodes(s)}
    found = (_node_address(nodes.get(node, []), config.remote_address) for node in config.nodes)
    addresses = dict.fromkeys([config.local_id, *(a for a in found if a)])
    return config, tuple(addresses)


def _node_address(public_addresses: Sequence[str], remote: str) -> str | None:
    """The node's first public IP of the peer's version (its other entries may be names)."""
    version = ipaddress.ip_address(remote).version
    for entry in public_addresses:
        try:
            if ipaddress.ip_address(entry).version == version:
                return entry
        except ValueError:
            continue
    return None


def set_tunnel_owner(s: Session, *, tunnel_id: int, node: str) -> None:
    """Record that ``node`` took the tunnel's lease (for status; the lock is the truth)."""
    statement = (update(VpnTunnel).where(col(VpnTunnel.id) == tunnel_id)
                 .values(owner_node=node, owner_since=func.now()))
    s.connection().execute(statement)


def stale_nodes(s: Session) -> set[str]:
    """Nodes whose heartbeat is older than the heartbeat timeout, by the database's clock
    (a node that never beat is starting, not stale)."""
    beats = {n.name: n.heartbeat_at for n in list_nodes(s) if n.heartbeat_at is not None}
    if not beats:
        return set()
    try:
        timeout = get_settings(s).heartbeat_timeout
    except NotFoundError:  # a store `init` has not set up yet: the model's default
        timeout = GatewaySettings().heartbeat_timeout
    now = database_now(s)
    return {name for name, at in beats.items() if (now - at).total_seconds() > timeout}


def tunnel_owners(s: Session) -> dict[str, tuple[str, datetime | None]]:
    """Tunnel name -> (node that last took it, since when), for tunnels of fleet gateways."""
    query = select(VpnTunnel.name, VpnTunnel.owner_node, VpnTunnel.owner_since)
    return {name: (owner, since) for name, owner, since in s.exec(query) if owner}


def _tunnel_names(s: Session, condition: object) -> list[str]:
    return list(s.exec(select(VpnTunnel.name).where(condition)))  # type: ignore[arg-type]


def _id(row: VpnGateway | CustomerGateway | VpnTunnel) -> int:
    """The primary key of a row loaded from the database (always set)."""
    if row.id is None:
        raise NotFoundError(f"{type(row).__name__} {row.name!r} is not stored yet")
    return row.id


def _remove(s: Session, row: SQLModel, what: str) -> None:
    """Delete one row, or raise a store error naming ``what``."""
    try:
        with s.begin_nested():
            s.delete(row)
    except IntegrityError as exc:
        raise integrity_error(exc, what) from None
