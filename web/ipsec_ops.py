"""Site-to-site IPsec operations shared by the admin pages and the REST API.

Each operation checks what the operator gave with the same pure rules the CLI uses
(`sslvpn.ipsec.policy`, the IKE proposal parser, the rate notation), writes the store in one
transaction and records an audit entry. A refusal raises `Invalid` (bad input) or a
`StoreError` (unknown name, duplicate, still in use), both with a message safe to show; in
either case nothing was written. The tunnel's pre-shared key is never logged or audited.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from sqlmodel import Session

from sslvpn.ipsec.ike.constants import ProtocolId
from sslvpn.ipsec.ike.proposals import DEFAULT_KEYWORD, ProposalError, parse_proposals
from sslvpn.ipsec.peer_config import FORMATS, PeerTunnel, file_name, render
from sslvpn.ipsec.policy import (
    PolicyError,
    check_name,
    check_policy,
    check_psk,
    check_unicast_address,
    parse_cidr,
)
from sslvpn.ipsec.policy import check_bandwidth as policy_bandwidth
from sslvpn.ipsec.tunnel_settings import TunnelSettings
from sslvpn.runtime.control import TUNNEL_ACTIONS, TunnelStatus
from sslvpn.store import NotFoundError
from sslvpn.store import ipsec_queries as q
from sslvpn.store.models import START_ACTION_VALUES, SpdPolicy
from web.pages import audit, portal_of
from web.portal import NoGateway

log = logging.getLogger(__name__)

DEFAULT_IKE = DEFAULT_ESP = DEFAULT_KEYWORD  # every suite we support, strongest first
NOT_RUNNING = "not running"


class Invalid(ValueError):
    """What the operator gave is not acceptable; the message says why."""


def _check_name(name: str, what: str) -> str:
    try:
        return check_name(name, what)
    except PolicyError as exc:
        raise _policy_error(exc) from None


def check_bandwidth(bps: int | None) -> int | None:
    try:
        return policy_bandwidth(bps)
    except PolicyError as exc:
        raise _policy_error(exc) from None


def check_proposals(ike: str, esp: str) -> tuple[str, str]:
    """Both proposal lists, stripped, if our IKE and ESP implementations can offer them."""
    for text, protocol, what in ((ike, ProtocolId.IKE, "IKE"), (esp, ProtocolId.ESP, "ESP")):
        try:
            parse_proposals(text, protocol)
        except ProposalError as exc:
            raise Invalid(f"{what} proposals {text!r}: {exc}") from None
    return ike.strip(), esp.strip()


def _policy_error(exc: PolicyError) -> Invalid:
    return Invalid(str(exc))


# VPN gateways and customer gateways --------------------------------------------------------


async def add_gateway(
    request: web.Request, *, name: str, public_address: str, bandwidth_bps: int | None, via: str,
    nodes: Sequence[str] = (),
) -> None:
    """A VPN gateway; ``nodes`` are the fleet nodes that may carry its tunnels. The portal
    never sets the on-activate command: a shell command run as root is the CLI's to give."""
    _check_name(name, "VPN gateway")
    for node in nodes:
        _check_name(node, "node")
    try:
        address = check_unicast_address(public_address, what="public address")
    except PolicyError as exc:
        raise _policy_error(exc) from None
    check_bandwidth(bandwidth_bps)
    await portal_of(request).write(
        lambda s: q.create_vpn_gateway(
            s, name=name, public_address=address, bandwidth_bps=bandwidth_bps, nodes=nodes
        )
    )
    on = f" nodes={','.join(nodes)}" if nodes else ""
    await audit(request, "ipsec.gateway.create", target=name,
                detail=f"address={address}{on} via={via}")


async def set_bandwidth(
    request: web.Request, *, name: str, bandwidth_bps: int | None, via: str
) -> None:
    check_bandwidth(bandwidth_bps)
    await portal_of(request).write(
        lambda s: q.set_vpn_gateway_bandwidth(s, name=name, bandwidth_bps=bandwidth_bps)
    )
    detail = f"bps={bandwidth_bps} via={via}"
    await audit(request, "ipsec.gateway.bandwidth", target=name, detail=detail)


async def delete_gateway(request: web.Request, *, name: str, via: str) -> None:
    await portal_of(request).write(lambda s: q.delete_vpn_gateway(s, name=name))
    await audit(request, "ipsec.gateway.delete", target=name, detail=f"via={via}")


async def add_customer_gateway(
    request: web.Request, *, name: str, address: str, via: str
) -> None:
    _check_name(name, "customer gateway")
    try:
        normalised = check_unicast_address(address, what="customer gateway address")
    except PolicyError as exc:
        raise _policy_error(exc) from None
    await portal_of(request).write(
        lambda s: q.create_customer_gateway(s, name=name, address=normalised)
    )
    await audit(
        request,
        "ipsec.customer_gateway.create",
        target=name,
        detail=f"address={normalised} via={via}",
    )


async def delete_customer_gateway(request: web.Request, *, name: str, via: str) -> None:
    await portal_of(request).write(lambda s: q.delete_customer_gateway(s, name=name))
    await audit(request, "ipsec.customer_gateway.delete", target=name, detail=f"via={via}")


# Tunnels -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TunnelRequest:
    """A new tunnel as the operator described it; the PSK stays out of repr."""

    name: str
    gateway: str
    customer_gateway: str
    psk: str
    ike_proposals: str = DEFAULT_IKE
    esp_proposals: str = DEFAULT_ESP
    start_action: str = "initiate"
    settings: dict[str, Any] = field(default_factory=dict)  # TunnelSettings names

    def __repr__(self) -> str:
        return f"TunnelRequest(name={self.name!r})"


def check_settings(values: dict[str, Any], base: TunnelSettings | None = None) -> TunnelSettings:
    """``values`` (numbers, or strings like ``30s``) over ``base``, checked as the CLI does."""
    try:
        return (base or TunnelSettings()).changed(**values)
    except PolicyError as exc:
        raise _policy_error(exc) from None


def _check_start(start_action: str) -> None:
    if start_action not in START_ACTION_VALUES:
        raise Invalid(f"start action must be one of {', '.join(START_ACTION_VALUES)}")


async def add_tunnel(request: web.Request, wanted: TunnelRequest, *, via: str) -> None:
    """Unknown gateway names are reported before anything about the key or proposals."""
    _check_name(wanted.name, "tunnel")
    _check_start(wanted.start_action)

    def both_exist(s: Session) -> None:
        q.get_vpn_gateway(s, name=wanted.gateway)
        q.get_customer_gateway(s, name=wanted.customer_gateway)

    portal = portal_of(request)
    await portal.read(both_exist)
    try:
        psk = check_psk(wanted.psk)
    except PolicyError as exc:
        raise _policy_error(exc) from None
    ike, esp = check_proposals(wanted.ike_proposals, wanted.esp_proposals)
    settings = check_settings(wanted.settings)
    await portal.write(
        lambda s: q.create_tunnel(
            s,
            name=wanted.name,
            gateway=wanted.gateway,
            customer_gateway=wanted.customer_gateway,
            psk=psk,
            ike_proposals=ike,
            esp_proposals=esp,
            start_action=wanted.start_action,
            settings=settings.as_dict(),
        )
    )
    detail = (
        f"gateway={wanted.gateway} customer_gateway={wanted.customer_gateway} "
        f"ike={ike} esp={esp} start={wanted.start_action} via={via}"
    )
    await audit(request, "ipsec.tunnel.create", target=wanted.name, detail=detail)


async def set_admin_up(request: web.Request, *, name: str, up: bool, via: str) -> None:
    """Flip the operator's switch; the running IPsec service follows the store."""
    await portal_of(request).write(lambda s: q.set_tunnel_admin_up(s, name=name, up=up))
    await audit(request, f"ipsec.tunnel.{'up' if up else 'down'}", target=name, detail=f"via={via}")


async def set_tunnel(
    request: web.Request, *, name: str, settings: dict[str, Any], start_action: str | None,
    via: str,
) -> TunnelSettings:
    """Change timers (merged over the stored ones) and/or the start action; the running
    service applies them to new SAs without renegotiating."""
    if start_action is not None:
        _check_start(start_action)
    stored = await portal_of(request).read(lambda s: q.tunnel_timers(q.get_tunnel(s, name=name)))
    merged = check_settings(settings, TunnelSettings(**stored))
    await portal_of(request).write(
        lambda s: q.set_tunnel(s, name=name, settings=merged.as_dict(), start_action=start_action)
    )
    changed = ", ".join(f"{k}={v}" for k, v in sorted(settings.items()))
    detail = f"{changed} start={start_action or '-'} via={via}"
    await audit(request, "ipsec.tunnel.settings", target=name, detail=detail)
    return merged


class GatewayRefused(RuntimeError):
    """The running gateway could not do an operator action; the message says why."""


async def tunnel_action(request: web.Request, *, name: str, action: str, via: str) -> str:
    """Rekey, restart or take down a running tunnel through the gateway (its answer)."""
    if action not in TUNNEL_ACTIONS:
        raise Invalid(f"action must be one of {', '.join(TUNNEL_ACTIONS)}")
    await portal_of(request).read(lambda s: q.get_tunnel(s, name=name))
    try:
        done = await portal_of(request).ask_gateway(lambda c: c.tunnel_action(name, action))
    except NoGateway as exc:
        raise GatewayRefused(str(exc)) from None
    except Exception as exc:  # refused (ValueError, ControlError) or silent: say so
        raise GatewayRefused(str(exc) or "the gateway did not answer") from None
    verb = "terminate" if action == "down" else action  # "down" is the admin switch's
    await audit(request, f"ipsec.tunnel.{verb}", target=name, detail=f"via={via}")
    return done


async def peer_config(request: web.Request, *, name: str, fmt: str, include_psk: bool,
                      via: str) -> str:
    """The customer gateway's side of a tunnel in ``fmt``; showing the PSK is audited."""
    if fmt not in FORMATS:
        raise Invalid(f"format must be one of {', '.join(FORMATS)}")
    stored, addresses = await portal_of(request).read(lambda s: q.peer_side(s, name=name))
    text = render(PeerTunnel.of(stored, addresses), fmt, include_psk=include_psk)
    if include_psk:
        await audit(request, "ipsec.tunnel.psk_shown", target=name,
                    detail=f"format={fmt} via={via}")
    return text


def config_download(name: str, fmt: str, text: str) -> web.Response:
    """A rendered peer configuration as a file to save; never cached (it may hold the PSK)."""
    return web.Response(text=text, content_type="text/plain", charset="utf-8", headers={
        "Content-Disposition": f'attachment; filename="{file_name(name, fmt)}"',
        "Cache-Control": "no-store"})


async def delete_tunnel(request: web.Request, *, name: str, via: str) -> None:
    await portal_of(request).write(lambda s: q.delete_tunnel(s, name=name))
    await audit(request, "ipsec.tunnel.delete", target=name, detail=f"via={via}")


# SPD policies ------------------------------------------------------------------------------


async def add_policy(
    request: web.Request, *, tunnel: str, local_cidr: str, peer_cidr: str, via: str
) -> SpdPolicy:
    """Check syntax and every overlap rule against the tunnel's gateway, then store."""
    try:
        local = parse_cidr(local_cidr, what="local CIDR")
        peer = parse_cidr(peer_cidr, what="peer CIDR")
    except PolicyError as exc:
        raise _policy_error(exc) from None

    def checked_add(s: Session) -> SpdPolicy:
        existing = [
            (other, parse_cidr(mine), parse_cidr(theirs))
            for other, mine, theirs in q.policies_on_gateway(s, tunnel=tunnel)
        ]
        try:
            pools = [parse_cidr(pool) for pool in q.client_pools(s)]
            check_policy(local, peer, existing, tunnel=tunnel, client_pools=pools)
        except PolicyError as exc:
            raise _policy_error(exc) from None
        return q.add_policy(s, tunnel=tunnel, local_cidr=str(local), peer_cidr=str(peer))

    row = await portal_of(request).write(checked_add)
    await audit(request, "ipsec.policy.add", target=tunnel, detail=f"{local} <-> {peer} via={via}")
    return row


async def policy_by_id(request: web.Request, *, tunnel: str, policy_id: int) -> SpdPolicy:
    listed = await portal_of(request).read(lambda s: q.list_policies(s, tunnel=tunnel))
    for _, policy in listed:
        if policy.id == policy_id:
            return policy
    raise NotFoundError(f"tunnel {tunnel!r} has no policy {policy_id}")


async def delete_policy(request: web.Request, *, tunnel: str, policy_id: int, via: str) -> None:
    policy = await policy_by_id(request, tunnel=tunnel, policy_id=policy_id)
    await portal_of(request).write(
        lambda s: q.delete_policy(
            s, tunnel=tunnel, local_cidr=policy.local_cidr, peer_cidr=policy.peer_cidr
        )
    )
    detail = f"{policy.local_cidr} <-> {policy.peer_cidr} via={via}"
    await audit(request, "ipsec.policy.delete", target=tunnel, detail=detail)


# Status ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StatusReport:
    """What the gateway reported per tunnel, or why it could not be asked."""

    by_name: dict[str, TunnelStatus]
    problem: str | None
    owners: dict[str, str] = field(default_factory=dict)  # fleet tunnel -> its last taker

    def of(self, name: str) -> TunnelStatus:
        """A tunnel the gateway does not report is down, with the reason if one is known,
        or carried "elsewhere" by the fleet node that took it last."""
        found = self.by_name.get(name)
        if found is not None:
            return found
        owner = self.owners.get(name)
        return TunnelStatus(
            name=name,
            state="elsewhere" if owner else "down",
            last_error=None if owner else self.problem or NOT_RUNNING,
            node=owner,
            established_at=None,
            spi_in=None,
            spi_out=None,
            bytes_in=0,
            bytes_out=0,
            packets_in=0,
            packets_out=0,
        )


async def tunnel_status(request: web.Request) -> StatusReport:
    """Ask the gateway once, and the store which node took each fleet tunnel; a missing or
    silent gateway leaves every tunnel it would run down."""
    taken = await portal_of(request).read(q.tunnel_owners)
    owners = {name: node for name, (node, _since) in taken.items()}
    try:
        rows = await portal_of(request).ask_gateway(lambda c: c.tunnel_status())
    except NoGateway as exc:
        return StatusReport({}, str(exc), owners)
    except Exception as exc:  # a dead gateway must not take the portal down with it
        log.warning("gateway did not report tunnel status: %r", exc)
        return StatusReport({}, "the gateway did not answer", owners)
    return StatusReport({t.name: t for t in rows}, None, owners)
