"""The gateway's own queries: cheap reads on the handshake path and batched accounting writes.

A running gateway asks the store the same few questions thousands of times, so these read
only the columns they need (no ORM objects, statements built once) and write a whole batch
of accounting records (session opened, byte counters, session ended, address leases) with a
few executemany statements inside the caller's one transaction. Like `queries`, every
function takes the `Session` first and never commits.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import (
    Executable,
    Table,
    and_,
    bindparam,
    delete,
    false,
    func,
    insert,
    not_,
    or_,
    select,
    update,
)
from sqlmodel import Session, col

from sslvpn.store import node_queries, traffic_queries
from sslvpn.store.models import (
    AddressLease,
    Certificate,
    GatewaySettings,
    User,
    VpnSessionRecord,
)
from sslvpn.store.traffic_queries import TrafficCounted as TrafficCounted

CHUNK = 500  # serials per IN (...) list, far below every backend's parameter limit


class Standing(NamedTuple):
    """What decides whether a certificate may connect (``user_name`` None: no owner)."""

    kind: str
    status: str
    device: str
    user_name: str | None
    user_disabled: bool
    overlap_until: datetime | None = None  # a renewed certificate: valid until then


class LeaseStored(NamedTuple):
    """``address`` is now ``serial``'s lease, taken from any other certificate."""

    serial: str
    address: str


class SessionOpened(NamedTuple):
    session_id: str
    user_name: str
    certificate_serial: str
    real_address: str
    vpn_address: str
    protocol: str
    connected_at: datetime
    tls_group: str | None = None
    client_version: str | None = None  # peer-info facts, see VpnSessionRecord
    client_platform: str | None = None
    client_gui: str | None = None


class SessionCounted(NamedTuple):
    """The running byte totals of an open session."""

    session_id: str
    bytes_in: int
    bytes_out: int


class SessionEnded(NamedTuple):
    session_id: str
    at: datetime
    reason: str
    bytes_in: int
    bytes_out: int


Record = LeaseStored | SessionOpened | SessionCounted | SessionEnded | TrafficCounted

# built once: building a statement costs more than running this one (indexed, two rows)
_STANDINGS = (
    select(col(Certificate.serial), col(Certificate.kind), col(Certificate.status),
           col(Certificate.device), col(User.name), col(User.disabled),
           col(Certificate.overlap_until))
    .join(User, col(Certificate.user_id) == col(User.id), isouter=True)
    .where(col(Certificate.serial).in_(bindparam("serials", expanding=True)))
)
_GOOD = and_(col(Certificate.kind) == "client", col(Certificate.status) == "valid",
             col(User.id).is_not(None), col(User.disabled) == false(),
             or_(col(Certificate.overlap_until).is_(None),
                 col(Certificate.overlap_until) > bindparam("now")))
_NOT_GOOD = _STANDINGS.where(not_(_GOOD))
_KNOWN = select(col(Certificate.serial)).where(
    col(Certificate.serial).in_(bindparam("serials", expanding=True))
)
_SESSION_SETTING = select(col(GatewaySettings.max_sessions_per_user)).where(
    col(GatewaySettings.name) == bindparam("name"))
_OWNER_LIMITS = (
    select(col(Certificate.serial), col(User.name), col(User.max_sessions))
    .join(User, col(Certificate.user_id) == col(User.id))
    .where(col(Certificate.serial).in_(bindparam("serials", expanding=True)))
)
_LIVE_SESSIONS = (
    select(col(VpnSessionRecord.user_name), col(VpnSessionRecord.certificate_serial),
           func.count())
    .where(col(VpnSessionRecord.disconnected_at).is_(None),
           col(VpnSessionRecord.user_name).in_(bindparam("owners", expanding=True)))
    .group_by(col(VpnSessionRecord.user_name), col(VpnSessionRecord.certificate_serial))
)


def standings(s: Session, *, serials: Collection[str]) -> dict[str, Standing]:
    """The standing of every known certificate among ``serials`` (lowercase hex)."""
    return _standings(s, _STANDINGS, serials)


def not_in_good_standing(
    s: Session, *, serials: Collection[str], now: datetime
) -> dict[str, Standing | None]:
    """Among ``serials``, the certificates that may not connect at ``now`` (None: unknown).

    The revocation sweep asks this for every live session every few seconds, so the
    database filters: only the few refused rows come back, plus a count per chunk.
    """
    wanted = sorted({serial.lower() for serial in serials})
    found: dict[str, Standing | None] = dict(_standings(s, _NOT_GOOD, wanted, now))
    connection = s.connection()
    for start in range(0, len(wanted), CHUNK):
        chunk = wanted[start:start + CHUNK]
        count = connection.execute(select(func.count()).select_from(_KNOWN.subquery()),
                                   {"serials": chunk}).scalar_one()
        if count < len(chunk):
            known = set(connection.execute(_KNOWN, {"serials": chunk}).scalars())
            found.update((serial, None) for serial in chunk if serial not in known)
    return found


def refused_open_sessions(s: Session, *, gateway_name: str, node: str | None,
                          now: datetime) -> dict[str, Standing | None]:
    """The open session records of ``node`` (None: the single implicit node) whose
    certificate may not connect at ``now`` (None: unknown), by session id: the whole node's
    revocation sweep in one query, for a supervisor sweeping for its workers."""
    records = _table(VpnSessionRecord)
    mine = records.c.node.is_(None) if node is None else records.c.node == node
    query = (
        select(records.c.session_id, col(Certificate.serial), col(Certificate.kind),
               col(Certificate.status), col(Certificate.device), col(User.name),
               col(User.disabled), col(Certificate.overlap_until))
        .select_from(records)
        .join(Certificate, col(Certificate.serial) == records.c.certificate_serial,
              isouter=True)
        .join(User, col(Certificate.user_id) == col(User.id), isouter=True)
        .where(records.c.disconnected_at.is_(None), records.c.gateway_name == gateway_name,
               mine, or_(col(Certificate.serial).is_(None), not_(_GOOD)))
    )
    found: dict[str, Standing | None] = {}
    for session_id, serial, kind, status, device, user, disabled, overlap in (
            s.connection().execute(query, {"now": now})):
        found[session_id] = (None if serial is None else
                             Standing(kind, status, device or "", user, bool(disabled), overlap))
    return found


def replaced_open_sessions(s: Session, *, gateway_name: str, node: str | None) -> list[str]:
    """The open session records of ``node`` whose certificate has a newer open record on
    it: a device that reconnected to another worker of the node, whose new session replaces
    the old one as it does within one gateway. Newest by connection time, then record."""
    records = _table(VpnSessionRecord)
    mine = records.c.node.is_(None) if node is None else records.c.node == node
    live = and_(records.c.disconnected_at.is_(None), records.c.gateway_name == gateway_name, mine)
    twice = (select(records.c.certificate_serial).where(live)
             .group_by(records.c.certificate_serial).having(func.count() > 1))
    query = (select(records.c.certificate_serial, records.c.session_id)
             .where(live, records.c.certificate_serial.in_(twice))
             .order_by(records.c.certificate_serial, records.c.connected_at.desc(),
                       records.c.id.desc()))
    replaced: list[str] = []
    newest: str | None = None
    for serial, session_id in s.connection().execute(query):
        if serial == newest:
            replaced.append(session_id)
        newest = serial
    return replaced


def _standings(s: Session, query: Executable, serials: Collection[str],
               now: datetime | None = None) -> dict[str, Standing]:
    found: dict[str, Standing] = {}
    wanted = [serial.lower() for serial in serials]
    connection = s.connection()
    for start in range(0, len(wanted), CHUNK):
        params: dict[str, Any] = {"serials": wanted[start:start + CHUNK]}
        if now is not None:
            params["now"] = now
        rows = connection.execute(query, params)
        for serial, kind, status, device, user, disabled, overlap_until in rows:
            found[serial] = Standing(kind, status, device or "", user, bool(disabled),
                                     overlap_until)
    return found


def session_limits(s: Session, *, serials: Collection[str],
                   gateway_name: str) -> dict[str, tuple[str, int]]:
    """Among ``serials`` (lowercase hex), those whose owner has a limit of live sessions
    (their own or the gateway's default), as serial -> (owner, limit)."""
    connection = s.connection()
    default = connection.execute(_SESSION_SETTING, {"name": gateway_name}).scalar()
    limits: dict[str, tuple[str, int]] = {}
    wanted = sorted(serials)
    for start in range(0, len(wanted), CHUNK):
        for serial, owner, own_limit in connection.execute(
                _OWNER_LIMITS, {"serials": wanted[start:start + CHUNK]}):
            limit = own_limit if own_limit is not None else default
            if limit:  # None or 0: one session per device, no limit per user
                limits[serial] = (owner, limit)
    return limits


def session_limits_reached(s: Session, *,
                           limits: Mapping[str, tuple[str, int]]) -> dict[str, int]:
    """Among the serials of ``limits`` (`session_limits`), those whose owner's limit of live
    sessions a new session would pass, with that limit. A certificate's own earlier session
    does not count (the new one replaces it), and the sessions are those of every node (open
    records). A few queries for any number of serials: a burst of handshakes is read at once."""
    connection = s.connection()
    owners = sorted({owner for owner, _ in limits.values()})
    live: dict[tuple[str, str | None], int] = {}
    for start in range(0, len(owners), CHUNK):
        for owner, serial, count in connection.execute(
                _LIVE_SESSIONS, {"owners": owners[start:start + CHUNK]}):
            live[owner, serial] = count
    per_owner: dict[str, int] = {}
    for (owner, _), count in live.items():
        per_owner[owner] = per_owner.get(owner, 0) + count
    return {serial: limit for serial, (owner, limit) in limits.items()
            if per_owner.get(owner, 0) - live.get((owner, serial), 0) >= limit}


def lease_map(s: Session) -> dict[str, str]:
    """Every remembered lease, as certificate serial -> address."""
    rows = s.execute(select(col(AddressLease.certificate_serial), col(AddressLease.address)))
    return {serial: address for serial, address in rows}


def write_records(
    s: Session, *, records: Sequence[Record], gateway_name: str, now: datetime,
    node: str | None = None,
) -> None:
    """Apply ``records`` with the same end state as one by one, in a few statements.

    Leases and session records are separate tables, so leases go first; session records
    are written ends of sessions opened earlier, opens, counters, other ends, which keeps
    each session's order as long as no session id or address opens twice (a new segment
    starts where one does), and ends a reconnecting client's old session before its new one
    takes the same address (one live session per address is a unique index).
    """
    leases = [r for r in records if isinstance(r, LeaseStored)]
    if leases:
        _store_leases(s, leases, now)
    traffic_queries.add_traffic(s, [r for r in records if isinstance(r, TrafficCounted)])
    for opened, counted, ended in _segments(
            r for r in records if not isinstance(r, LeaseStored | TrafficCounted)):
        new = {item.session_id for item in opened}
        _end_open(s, [item for item in ended if item.session_id not in new])
        if opened:
            _end_overlaps(s, {item.certificate_serial.lower() for item in opened}, now)
            s.connection().execute(insert(_table(VpnSessionRecord)), [
                {**item._asdict(), "certificate_serial": item.certificate_serial.lower(),
                 "gateway_name": gateway_name, "node": node, "bytes_in": 0, "bytes_out": 0}
                for item in opened
            ])
        if counted:
            _update_open(s, [{"sid": i.session_id, "bytes_in": i.bytes_in,
                              "bytes_out": i.bytes_out} for i in counted])
        _end_open(s, [item for item in ended if item.session_id in new])


def _end_overlaps(s: Session, serials: set[str], now: datetime) -> None:
    """A renewal that connects ends the overlap of the certificate it replaced: from now
    the old one is refused, and the sweeps end its sessions on every node."""
    table = _table(Certificate)
    ended = s.connection().execute(
        update(table)
        .where(table.c.superseded_by.in_(sorted(serials)), table.c.status == "valid",
               table.c.overlap_until > now)
        .values(overlap_until=now))
    if ended.rowcount:
        node_queries.signal_fleet(s, "renewal connected")


def _end_open(s: Session, ended: Sequence[SessionEnded]) -> None:
    if ended:
        _update_open(s, [{"sid": i.session_id, "disconnected_at": i.at,
                          "disconnect_reason": i.reason, "bytes_in": i.bytes_in,
                          "bytes_out": i.bytes_out} for i in ended])


_Segment = tuple[list[SessionOpened], list[SessionCounted], list[SessionEnded]]


def _segments(
    records: Iterable[SessionOpened | SessionCounted | SessionEnded],
) -> Iterator[_Segment]:
    """Split where a session id opens again after it was already seen, or an address opens
    again (a session opened and ended here, then the next one at its address)."""
    seen: set[str] = set()
    addresses: set[str] = set()
    segment: _Segment = ([], [], [])
    for record in records:
        if isinstance(record, SessionOpened):
            if record.session_id in seen or record.vpn_address in addresses:
                yield segment
                seen, addresses, segment = set(), set(), ([], [], [])
            addresses.add(record.vpn_address)
            segment[0].append(record)
        elif isinstance(record, SessionCounted):
            segment[1].append(record)
        else:
            segment[2].append(record)
        seen.add(record.session_id)
    yield segment


def _table(model: type[Any]) -> Table:
    table: Table = model.__table__
    return table


def _update_open(s: Session, params: list[dict[str, Any]]) -> None:
    """Update the open record of each session id (ids are unique among open records)."""
    table = _table(VpnSessionRecord)
    values: dict[str, Any] = {name: bindparam(name) for name in params[0] if name != "sid"}
    statement = (
        update(table)
        .where(table.c.session_id == bindparam("sid"), table.c.disconnected_at.is_(None))
        .values(values)
    )
    s.connection().execute(statement, params)


def _store_leases(s: Session, changes: Sequence[LeaseStored], now: datetime) -> None:
    """The same end state as storing the changes one by one, in three statements."""
    final: dict[str, str] = {}  # serial -> address
    holder: dict[str, str] = {}  # address -> serial
    for change in changes:
        serial = change.serial.lower()
        previous_holder = holder.pop(change.address, None)
        if previous_holder is not None and previous_holder != serial:
            del final[previous_holder]
        previous = final.get(serial)
        if previous is not None:
            holder.pop(previous, None)
        final[serial] = change.address
        holder[change.address] = serial
    table = _table(AddressLease)
    connection = s.connection()
    connection.execute(delete(table).where(table.c.certificate_serial == bindparam("serial")),
                       [{"serial": serial} for serial in {c.serial.lower() for c in changes}])
    connection.execute(delete(table).where(table.c.address == bindparam("address")),
                       [{"address": address} for address in {c.address for c in changes}])
    connection.execute(insert(table), [
        {"certificate_serial": serial, "address": address, "updated_at": now}
        for serial, address in final.items()
    ])
