"""Shared write helpers for the query modules: savepointed inserts and updates.

A constraint failure rolls back only its own savepoint, so the caller's transaction stays
usable and no half-written rows remain; the failure becomes a `StoreError` subclass.
"""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.attributes import flag_modified
from sqlmodel import Session, SQLModel

from sslvpn.store import DuplicateError, NotFoundError, RejectedError, StoreError

_Row = TypeVar("_Row", bound=SQLModel)

# SQLSTATE classes (PostgreSQL) and the matching SQLite message prefixes.
_UNIQUE = ("23505", "UNIQUE constraint failed")
_FOREIGN_KEY = ("23503", "FOREIGN KEY constraint failed")


MAX_ROW_ID = 2**63 - 1  # integer keys are 64-bit: a larger id names no row (SQLite overflows)


def by_id(s: Session, model: type[_Row], row_id: int) -> _Row | None:
    """The row with this integer key, or None; ids from paths and forms can be any size."""
    return s.get(model, row_id) if 0 < row_id <= MAX_ROW_ID else None


def insert(s: Session, row: _Row, what: str) -> _Row:
    """Add one row, or raise a store error naming ``what``."""
    try:
        with s.begin_nested():
            s.add(row)
    except IntegrityError as exc:
        raise integrity_error(exc, what) from None
    return row


def flush(s: Session, what: str) -> None:
    """Write pending changes (e.g. a delete), turning a rejection into a store error.

    Unlike `insert` and `assign`, the failed changes were pending before any savepoint,
    so after an error the caller's whole transaction is rolled back.
    """
    try:
        s.flush()
    except IntegrityError as exc:
        raise integrity_error(exc, what) from None


def assign(s: Session, row: SQLModel, what: str, values: dict[str, Any]) -> None:
    """Change columns of a stored row, or raise a store error naming ``what``.

    The changes are made inside the savepoint (entering it flushes what was already
    pending), so a rejected change rolls back alone and the row keeps its old values.
    """
    try:
        with s.begin_nested():
            for name, value in values.items():
                setattr(row, name, value)
                if isinstance(value, list | dict):
                    flag_modified(row, name)  # JSON changed in place is not detected
    except IntegrityError as exc:
        raise integrity_error(exc, what) from None


def integrity_error(exc: IntegrityError, what: str) -> StoreError:
    """Classify by SQLSTATE or message; never echo bound values (they may be secrets)."""
    code = getattr(exc.orig, "sqlstate", None)
    lines = str(exc.orig).splitlines()
    text = lines[0] if lines else type(exc.orig).__name__
    if code == _UNIQUE[0] or text.startswith(_UNIQUE[1]):
        return DuplicateError(f"{what} already exists")
    if code == _FOREIGN_KEY[0] or text.startswith(_FOREIGN_KEY[1]):
        return NotFoundError(f"{what} refers to a row that does not exist")
    return RejectedError(f"{what} rejected by the database: {text}")
