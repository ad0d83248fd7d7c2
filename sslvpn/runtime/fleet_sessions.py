"""One fleet seen from anywhere: every node's live sessions and kicks, as the faces (CLI,
portal, REST API) use them.

A fleet (a store with nodes) keeps its live sessions in the store, each marked with its node,
so any host lists them all; a kick is asked of the node holding the session through the store
(`fleet_queries.request_end`, which signals every node) and that node ends it at once. With
no node in the store the single implicit node is asked over its control socket, as before:
these functions then answer None. They run in a store thread (they take the `Session`);
a gateway on this host may add what only it knows (idle time, byte counters since the last
accounting write) with `with_local`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

from sslvpn.runtime.control import SessionInfo
from sslvpn.store import fleet_queries, node_queries
from sslvpn.store.models import VpnSessionRecord

if TYPE_CHECKING:  # what a store thread hands these functions; never opened here
    from sqlmodel import Session


def in_fleet(s: Session) -> bool:
    """True when the store has nodes: sessions and kicks then go through the store."""
    return bool(node_queries.list_nodes(s))


def fleet_sessions(s: Session) -> list[SessionInfo] | None:
    """Every node's live sessions, oldest first; None without a fleet."""
    if not in_fleet(s):
        return None
    return [_info(record, device) for record, device in fleet_queries.live_sessions(s)]


def request_kick(s: Session, *, target: str, reason: str) -> list[str] | None:
    """Ask the node holding session ``target`` (else every session of user ``target``) to
    end it; the ids of the live sessions asked, None without a fleet."""
    if not in_fleet(s):
        return None
    return (fleet_queries.request_end(s, session_id=target, reason=reason)
            or fleet_queries.request_end(s, user_name=target, reason=reason))


def still_live(s: Session, *, session_ids: Sequence[str]) -> list[str]:
    """Those of ``session_ids`` still live in the store (a kick not carried out yet)."""
    live = {record.session_id for record, _ in fleet_queries.live_sessions(s)}
    return [session_id for session_id in session_ids if session_id in live]


def with_local(fleet: Sequence[SessionInfo], local: Sequence[SessionInfo]) -> list[SessionInfo]:
    """The fleet's sessions, with what the gateway on this host knows of its own."""
    mine = {info.session_id: info for info in local}
    return [dataclasses.replace(mine[info.session_id], node=info.node)
            if info.session_id in mine else info for info in fleet]


def _info(record: VpnSessionRecord, device: str) -> SessionInfo:
    return SessionInfo(
        session_id=record.session_id,
        user=record.user_name,
        certificate_serial=record.certificate_serial,
        device=device,
        real_address=record.real_address,
        vpn_address=record.vpn_address,
        protocol=record.protocol,
        connected_at=record.connected_at,
        last_activity=None,  # only the node holding it knows
        bytes_in=record.bytes_in,
        bytes_out=record.bytes_out,
        tls_group=record.tls_group,
        node=record.node,
        client_version=record.client_version,
        client_platform=record.client_platform,
        client_gui=record.client_gui,
    )
