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

from dataclasses import dataclass

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, SQLModel, col, select

from sslvpn.store import ConflictError, NotFoundError
from sslvpn.store.models import (
    START_ACTION_VALUES,
    CustomerGateway,
    SpdPolicy,
    VpnGateway,
    VpnTunnel,
)
from sslvpn.store.rows import assign, insert, integrity_error

# VPN gateways --------------------------------------------------------------------------


def create_vpn_gateway(
    s: Session, *, name: str, public_address: str, bandwidth_bps: int | None = None
) -> VpnGateway:
    row = VpnGateway(name=name, public_address=public_address, bandwidth_bps=bandwidth_bps)
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
) -> VpnTunnel:
    if start_action not in START_ACTION_VALUES:
        raise ConflictError(f"start action must be one of {', '.join(START_ACTION_VALUES)}")
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
    )
    return insert(s, row, f"tunnel {name!r}")


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
    local_address: str
    remote_address: str
    psk: str
    ike_proposals: str
    esp_proposals: str
    initiate: bool
    admin_up: bool
    bandwidth_bps: int | None
    policies: tuple[tuple[str, str], ...]  # (local CIDR, peer CIDR)

    def __repr__(self) -> str:
        return f"TunnelConfig(name={self.name!r}, remote={self.remote_address!r})"


def tunnel_configs(s: Session) -> list[TunnelConfig]:
    gateways = {g.id: g for g in list_vpn_gateways(s)}
    customers = {c.id: c for c in list_customer_gateways(s)}
    policies: dict[str, list[tuple[str, str]]] = {}
    for name, policy in list_policies(s):
        policies.setdefault(name, []).append((policy.local_cidr, policy.peer_cidr))
    configs = []
    for tunnel in list_tunnels(s):
        gateway = gateways[tunnel.gateway_id]
        configs.append(
            TunnelConfig(
                name=tunnel.name,
                gateway=gateway.name,
                local_address=gateway.public_address,
                remote_address=customers[tunnel.customer_gateway_id].address,
                psk=tunnel.psk,
                ike_proposals=tunnel.ike_proposals,
                esp_proposals=tunnel.esp_proposals,
                initiate=tunnel.start_action == "initiate",
                admin_up=tunnel.admin_up,
                bandwidth_bps=gateway.bandwidth_bps,
                policies=tuple(policies.get(tunnel.name, ())),
            )
        )
    return configs


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
