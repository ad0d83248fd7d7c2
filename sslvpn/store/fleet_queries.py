"""Named queries for one fleet seen from anywhere: every node's live sessions, ends asked of
the node that holds a session, the prompt signal to every node, and ending a down node's
sessions.

A live session is an open session record, marked with its node (None: the single implicit
node). Nothing here reaches another node directly: an end is asked by stamping the record
(``end_requested``) and the node holding it ends the session at its next sweep; the signal
(`node_queries.signal_fleet`, a PostgreSQL ``NOTIFY`` sent at commit) only makes every node
sweep now, so a lost signal delays an end by one sweep and never loses it. A down node's
sessions are ended by a conditional UPDATE (only records still open), so when several
survivors notice at once each record is ended, its lease freed and the audit written exactly
once. Like `queries`, every function takes the `Session` first and never commits.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timedelta

from sqlalchemy import Table, and_, bindparam, delete, or_, select, update
from sqlmodel import Session, col

from sslvpn.store import node_queries, queries
from sslvpn.store.models import AddressLease, Certificate, Node, VpnSessionRecord

NODE_DOWN_REASON = "node down"
CHUNK = 500  # session ids per IN (...) list


def _records() -> Table:
    table: Table = VpnSessionRecord.__table__  # type: ignore[attr-defined]
    return table


def live_sessions(s: Session) -> list[tuple[VpnSessionRecord, str]]:
    """Every open session record of every node with its certificate's device, oldest first."""
    query = (
        select(VpnSessionRecord, col(Certificate.device))
        .join(Certificate, col(Certificate.serial) == col(VpnSessionRecord.certificate_serial),
              isouter=True)
        .where(col(VpnSessionRecord.disconnected_at).is_(None))
        .order_by(col(VpnSessionRecord.connected_at), col(VpnSessionRecord.id))
    )
    return [(record, device or "") for record, device in s.execute(query).all()]


def request_end(
    s: Session,
    *,
    reason: str,
    session_id: str | None = None,
    user_name: str | None = None,
    certificate_serial: str | None = None,
) -> list[str]:
    """Ask the nodes holding the matching live sessions to end them (one of the three
    filters); returns the ids of the live sessions asked, and signals the fleet."""
    table = _records()
    statement = update(table).where(table.c.disconnected_at.is_(None))
    if session_id is not None:
        statement = statement.where(table.c.session_id == session_id)
    elif user_name is not None:
        statement = statement.where(table.c.user_name == user_name)
    elif certificate_serial is not None:
        statement = statement.where(table.c.certificate_serial == certificate_serial.lower())
    else:
        raise ValueError("request_end needs a session id, a user or a certificate")
    statement = statement.values(end_requested=reason[:200]).returning(table.c.session_id)
    asked = list(s.connection().execute(statement).scalars())
    if asked:
        node_queries.signal_fleet(s, "end")
    return asked


def ended_elsewhere(
    s: Session, *, node: str | None, session_ids: Collection[str]
) -> dict[str, str]:
    """Among ``node``'s live ``session_ids``, those the fleet wants ended, with the reason:
    an end was asked, or a survivor ended them while this node was taken for down."""
    table = _records()
    mine = table.c.node.is_(None) if node is None else table.c.node == node
    wanted = or_(
        and_(table.c.disconnected_at.is_(None), table.c.end_requested.is_not(None)),
        table.c.disconnect_reason == NODE_DOWN_REASON,
    )
    query = (
        select(table.c.session_id, table.c.end_requested, table.c.disconnect_reason)
        .where(mine, wanted, table.c.session_id.in_(bindparam("ids", expanding=True)))
    )
    found: dict[str, str] = {}
    ids = sorted(session_ids)
    connection = s.connection()
    for start in range(0, len(ids), CHUNK):
        for session_id, requested, ended in connection.execute(query,
                                                               {"ids": ids[start:start + CHUNK]}):
            found[session_id] = requested or ended
    return found


def ends_wanted(s: Session, *, node: str | None,
                since: datetime | None) -> tuple[dict[str, str], datetime]:
    """What `ended_elsewhere` finds for the whole of ``node`` without its session ids: open
    records with an end asked and, unless ``since`` is None (a first sweep: the node's
    sessions are all newer), records a survivor ended as down at or after ``since``; with
    the database's time now, the next call's ``since``."""
    now = node_queries.database_now(s)
    table = _records()
    mine = table.c.node.is_(None) if node is None else table.c.node == node
    wanted = and_(table.c.disconnected_at.is_(None), table.c.end_requested.is_not(None))
    if since is not None:
        wanted = or_(wanted, and_(table.c.disconnect_reason == NODE_DOWN_REASON,
                                  table.c.disconnected_at >= since))
    query = select(table.c.session_id, table.c.end_requested,
                   table.c.disconnect_reason).where(mine, wanted)
    found = {session_id: requested or ended
             for session_id, requested, ended in s.connection().execute(query)}
    return found, now


def end_down_nodes(s: Session, *, survivor: str, timeout: int) -> dict[str, int]:
    """End the live sessions of every other node whose heartbeat is older than ``timeout``
    seconds (database clock) and free their leases; sessions ended per node.

    Only records still open are updated, so a record is ended once however many survivors
    run this at the same moment: on PostgreSQL a second UPDATE waits for the first one's row
    locks and then finds the rows closed.
    """
    now = node_queries.database_now(s)
    cutoff = now - timedelta(seconds=timeout)
    down = select(col(Node.name)).where(
        col(Node.name) != survivor,
        or_(col(Node.heartbeat_at).is_(None), col(Node.heartbeat_at) < cutoff),
    )
    table = _records()
    ended = s.connection().execute(
        update(table)
        .where(table.c.disconnected_at.is_(None), table.c.node.in_(down.scalar_subquery()))
        .values(disconnected_at=now, disconnect_reason=NODE_DOWN_REASON)
        .returning(table.c.node, table.c.certificate_serial, table.c.vpn_address)
    ).all()
    if not ended:
        return {}
    leases: Table = AddressLease.__table__  # type: ignore[attr-defined]
    s.connection().execute(
        delete(leases).where(leases.c.certificate_serial == bindparam("serial"),
                             leases.c.address == bindparam("address")),
        [{"serial": serial, "address": address} for _, serial, address in ended],
    )
    counts: dict[str, int] = {}
    for node, _, _ in ended:
        counts[node] = counts.get(node, 0) + 1
    for node, count in sorted(counts.items()):
        queries.record_audit(s, actor=f"node {survivor}", action="node.down", target=node,
                             detail=f"sessions_ended={count}", at=now)
    return counts
