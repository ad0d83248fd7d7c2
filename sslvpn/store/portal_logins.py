"""Named queries for portal logins (`PortalLogin`): find, open, touch, end.

The portal's session storage (web/sessions.py) decides when a login has expired; these only
read and write rows. Rows are keyed by the SHA-256 of the browser's id. Like `queries`,
every function takes the `Session` first and never commits.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, func, or_, update
from sqlmodel import Session, col, select

from sslvpn.store.models import PortalKey, PortalLogin


def portal_key(s: Session) -> str:
    """The fleet's login-form key (hex); the migration that made the table made it."""
    row = s.get(PortalKey, 1)
    if row is None:
        raise RuntimeError("the portal key is missing: run the store's migrations")
    return row.secret


def find_login(s: Session, *, id_hash: str) -> PortalLogin | None:
    return s.get(PortalLogin, id_hash)


def open_login(
    s: Session, *, id_hash: str, user_id: int | None, data: dict[str, object], at: datetime,
    replaces: str | None, source_address: str | None = None, per_address: int | None = None,
) -> None:
    """A new login row; the one it ``replaces`` (the browser's previous id) ends with it,
    and so do its source address's least recently used ones beyond ``per_address``."""
    if replaces is not None:
        end_login(s, id_hash=replaces)
    if source_address is not None and per_address is not None:
        kept = (select(PortalLogin.id_hash).where(PortalLogin.source_address == source_address)
                .order_by(col(PortalLogin.last_seen).desc()).limit(per_address - 1))
        s.execute(delete(PortalLogin).where(
            col(PortalLogin.source_address) == source_address,
            col(PortalLogin.id_hash).not_in(kept.scalar_subquery())))
    s.add(PortalLogin(id_hash=id_hash, user_id=user_id, data=data, created_at=at, last_seen=at,
                      source_address=source_address))


def save_login(s: Session, *, id_hash: str, user_id: int | None, data: dict[str, object]) -> None:
    """New data for a live login (a row ended meanwhile stays ended)."""
    s.execute(update(PortalLogin).where(col(PortalLogin.id_hash) == id_hash)
              .values(user_id=user_id, data=data))


def touch_login(s: Session, *, id_hash: str, at: datetime) -> None:
    s.execute(update(PortalLogin).where(col(PortalLogin.id_hash) == id_hash)
              .values(last_seen=at))


def end_login(s: Session, *, id_hash: str) -> None:
    s.execute(delete(PortalLogin).where(col(PortalLogin.id_hash) == id_hash))


def end_user_logins(s: Session, *, user_id: int) -> int:
    """Log a user out everywhere; how many logins ended."""
    done = s.execute(delete(PortalLogin).where(col(PortalLogin.user_id) == user_id))
    return int(done.rowcount or 0)  # type: ignore[attr-defined]


def end_stale_logins(s: Session, *, idle_before: datetime, created_before: datetime,
                     keep: int) -> None:
    """Drop logins idle or open too long, then the least recently used beyond ``keep``."""
    s.execute(delete(PortalLogin).where(or_(col(PortalLogin.last_seen) < idle_before,
                                            col(PortalLogin.created_at) < created_before)))
    count = s.exec(select(func.count()).select_from(PortalLogin)).one()
    if count > keep:
        oldest = select(PortalLogin.id_hash).order_by(col(PortalLogin.last_seen)).limit(
            count - keep)
        s.execute(delete(PortalLogin).where(col(PortalLogin.id_hash).in_(oldest.scalar_subquery())))
