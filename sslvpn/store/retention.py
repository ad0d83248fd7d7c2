"""Retention: what the store forgets, and when, in batches small enough never to hold the
writer lock long; and giving the freed pages of an SQLite file back to the disk.

What each setting of `GatewaySettings` prunes (days; 0 keeps forever):

- ``audit_retention_days``: audit entries older than that, and alarm notifications (the
  alarm outbox) written that long ago.
- ``session_retention_days``: session history that *ended* that long ago. A record still
  open (a live session, or one a crashed gateway left open) is never pruned.
- ``import_link_retention_days``: import links used, or expired, that long ago (unused,
  unexpired links stay however old).
- ``disabled_user_retention_days``: users disabled that long ago (``User.disabled_at``) who
  hold no certificate in state ``valid`` (expired ones included: deleting those would call
  for a revocation) and no open session record. Their tokens go with them; their revoked and
  superseded certificates stay, unowned, for the CRL and the history. Each such deletion is
  audited. A disabled user cannot log in or connect, so nothing they did is newer than
  ``disabled_at``.

Each batch is one write transaction deleting at most ``batch`` rows by primary key; the
caller runs `prune` in a thread, never on an event loop. SQLite files are created with
``auto_vacuum=INCREMENTAL`` (`sslvpn.store.db`); `vacuum_incrementally` hands free pages back
in chunks. A database made before that setting existed has to be rebuilt once with VACUUM
(`ensure_incremental_vacuum`, run by `serve` at start, before any client is served).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete, exists, or_
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import col, select

from sslvpn.store import NotFoundError, db, queries, traffic_queries
from sslvpn.store.models import (
    AlarmNotice,
    AuditEntry,
    Certificate,
    GatewaySettings,
    ImportToken,
    User,
    VpnSessionRecord,
    utcnow,
)

log = logging.getLogger(__name__)

BATCH = 500  # rows per write transaction
PAUSE = 0.05  # seconds between batches, so waiting writers get the lock
VACUUM_CHUNK_PAGES = 2048  # pages handed back per write transaction (8 MiB at 4 KiB pages)
INCREMENTAL = 2  # PRAGMA auto_vacuum value
ACTOR = "retention"


@dataclass
class PruneReport:
    """What one pass removed."""

    audit: int = 0
    alarm_notices: int = 0
    sessions: int = 0
    import_links: int = 0
    users: list[str] = field(default_factory=list)
    traffic_minutes: int = 0  # minute buckets of the traffic history folded into hours
    vacuumed_pages: int = 0

    @property
    def total(self) -> int:
        return (self.audit + self.alarm_notices + self.sessions + self.import_links
                + len(self.users))


def prune(
    engine: Engine,
    *,
    gateway_name: str = "default",
    now: datetime | None = None,
    batch: int = BATCH,
    pause: float = PAUSE,
) -> PruneReport:
    """One retention pass with this gateway's settings, then an incremental vacuum."""
    now = now or utcnow()
    settings = _settings(engine, gateway_name)
    report = PruneReport()
    rules: list[tuple[str, Any, int, Any]] = [
        ("audit", AuditEntry, settings.audit_retention_days, _audit_expired),
        ("alarm_notices", AlarmNotice, settings.audit_retention_days, _notice_expired),
        ("sessions", VpnSessionRecord, settings.session_retention_days, _session_ended),
        ("import_links", ImportToken, settings.import_link_retention_days, _link_spent),
    ]
    for attribute, table, days, condition in rules:
        if days > 0:
            removed = _delete_in_batches(engine, table, condition(now - timedelta(days=days)),
                                         batch, pause)
            setattr(report, attribute, removed)
    if settings.disabled_user_retention_days > 0:
        cutoff = now - timedelta(days=settings.disabled_user_retention_days)
        report.users = _prune_users(engine, cutoff, now, batch, pause)
    with db.session(engine, write=True) as s:  # minute buckets into hours, old hours out
        report.traffic_minutes = traffic_queries.roll_up(s, now=now)
    report.vacuumed_pages = vacuum_incrementally(engine)
    if report.total or report.vacuumed_pages:
        log.info("retention: removed %d audit entries, %d ended sessions, %d import links and "
                 "%d disabled users; %d free pages returned to the disk", report.audit,
                 report.sessions, report.import_links, len(report.users), report.vacuumed_pages)
    return report


def _settings(engine: Engine, gateway_name: str) -> GatewaySettings:
    with db.session(engine, write=False) as s:
        try:
            return queries.get_settings(s, name=gateway_name)
        except NotFoundError:
            return GatewaySettings(name=gateway_name)


def _audit_expired(cutoff: datetime) -> ColumnElement[bool]:
    return col(AuditEntry.at) < cutoff


def _notice_expired(cutoff: datetime) -> ColumnElement[bool]:
    return col(AlarmNotice.at) < cutoff


def _session_ended(cutoff: datetime) -> ColumnElement[bool]:
    return col(VpnSessionRecord.disconnected_at) < cutoff  # NULL (still open) never matches


def _link_spent(cutoff: datetime) -> ColumnElement[bool]:
    return or_(col(ImportToken.used_at) < cutoff, col(ImportToken.expires_at) < cutoff)


def _delete_in_batches(
    engine: Engine, table: Any, condition: ColumnElement[bool], batch: int, pause: float
) -> int:
    """Delete matching rows ``batch`` at a time, one write transaction each."""
    removed = 0
    while True:
        chosen = select(table.id).where(condition).order_by(table.id).limit(batch)
        with db.session(engine, write=True) as s:
            ids = list(s.exec(chosen))
            if ids:
                s.execute(delete(table).where(col(table.id).in_(ids)))
        removed += len(ids)
        if len(ids) < batch:
            return removed
        time.sleep(pause)


def _prune_users(
    engine: Engine, cutoff: datetime, now: datetime, batch: int, pause: float
) -> list[str]:
    """Delete users disabled before ``cutoff`` with no valid certificate or open session."""
    valid = exists().where(col(Certificate.user_id) == User.id, col(Certificate.status) == "valid")
    live = exists().where(
        col(VpnSessionRecord.user_name) == User.name,
        col(VpnSessionRecord.disconnected_at).is_(None),
    )
    chosen = (
        select(User.name)
        .where(col(User.disabled).is_(True), col(User.disabled_at) < cutoff, ~valid, ~live)
        .order_by(col(User.id))
        .limit(batch)
    )
    deleted: list[str] = []
    while True:
        with db.session(engine, write=True) as s:
            names = list(s.exec(chosen))
            for name in names:
                disabled_at = queries.get_user(s, name=name).disabled_at
                queries.delete_user(s, name=name)
                queries.record_audit(
                    s, actor=ACTOR, action="user.delete", target=name, at=now,
                    detail=f"disabled since {disabled_at:%Y-%m-%d} with no valid certificate",
                )
        deleted += names
        if len(names) < batch:
            return deleted
        time.sleep(pause)


def _sqlite_pragma(engine: Engine, pragma: str) -> int:
    with engine.connect() as connection:
        value = connection.exec_driver_sql(f"PRAGMA {pragma}").scalar()
    return int(value or 0)


def vacuum_incrementally(engine: Engine, chunk: int = VACUUM_CHUNK_PAGES) -> int:
    """Give an SQLite file's free pages back to the disk, ``chunk`` pages per transaction.

    Only for files in incremental auto-vacuum mode (others, and PostgreSQL, whose own
    autovacuum reuses space, are left alone); returns the pages handed back.
    """
    if engine.dialect.name != "sqlite" or _sqlite_pragma(engine, "auto_vacuum") != INCREMENTAL:
        return 0
    freed = 0
    while (free := _sqlite_pragma(engine, "freelist_count")) > 0:
        raw = engine.raw_connection()
        try:
            # executescript steps the pragma to the end; execute() would free one page.
            raw.driver_connection.executescript(  # type: ignore[union-attr]
                f"PRAGMA incremental_vacuum({min(free, chunk)})")
        finally:
            raw.close()
        left = _sqlite_pragma(engine, "freelist_count")
        if left >= free:
            break  # nothing moved (another writer holds pages); try again next pass
        freed += free - left
    return freed


def ensure_incremental_vacuum(engine: Engine) -> bool:
    """Rebuild an SQLite file made without incremental auto-vacuum, once; True if it did.

    VACUUM copies the whole database and holds the writer lock while it does (other writers
    wait up to the busy timeout), which is why `serve` calls this before it serves anyone.
    """
    if engine.dialect.name != "sqlite" or _sqlite_pragma(engine, "auto_vacuum") == INCREMENTAL:
        return False
    started = time.monotonic()
    log.warning("rebuilding the database once (VACUUM) so that it can give the space of pruned "
                "rows back to the disk; a large one takes a while")
    raw = engine.raw_connection()
    try:
        connection = raw.driver_connection
        connection.execute("PRAGMA auto_vacuum=INCREMENTAL")  # type: ignore[union-attr]
        connection.execute("VACUUM")  # type: ignore[union-attr]
    except sqlite3.Error as exc:  # e.g. no room for the copy: serve on, try at the next start
        log.warning("the database was not rebuilt (%s); pruned rows' space is reused but the "
                    "file will not shrink; the next start tries again", exc)
        return False
    finally:
        raw.close()
    log.warning("database rebuilt in %.1f s", time.monotonic() - started)
    return True
