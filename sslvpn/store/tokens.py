"""Queries for the secrets people hold: single-use profile import links and API tokens.

Only SHA-256 hashes of tokens are stored. Conventions as in `sslvpn.store.queries`
(keyword-only, flush but never commit), which re-exports everything here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, update
from sqlmodel import Session, col, select

from sslvpn.store import ConflictError, NotFoundError
from sslvpn.store.models import ApiToken, ImportToken, utcnow
from sslvpn.store.rows import by_id, insert


def _rowcount(result: Any) -> int:
    """UPDATE results are cursor results; the generic Result type hides that."""
    return cast(CursorResult[Any], result).rowcount


# Import tokens (single-use profile download links) --------------------------------------


def add_import_token(
    s: Session,
    *,
    token_hash: str,
    user_id: int,
    certificate_serial: str,
    expires_at: datetime,
    created_at: datetime | None = None,
) -> ImportToken:
    token = ImportToken(
        token_hash=token_hash,
        user_id=user_id,
        certificate_serial=certificate_serial.lower(),
        created_at=created_at or utcnow(),
        expires_at=expires_at,
    )
    return insert(s, token, "import token")


def get_import_token_by_hash(s: Session, *, token_hash: str) -> ImportToken:
    token = s.exec(select(ImportToken).where(ImportToken.token_hash == token_hash)).first()
    if token is None:
        raise NotFoundError("no such import token")
    return token


def mark_import_token_used(
    s: Session,
    *,
    token_hash: str,
    at: datetime,
    used_from: str | None = None,
    user_agent: str | None = None,
) -> ImportToken:
    """Consume a token exactly once, even if two requests race for it.

    Raises `NotFoundError` for an unknown token and `ConflictError` when it was already
    used, was revoked, or has expired at ``at``.
    """
    claimed = s.execute(
        update(ImportToken)
        .where(col(ImportToken.token_hash) == token_hash)
        .where(col(ImportToken.used_at).is_(None))
        .where(col(ImportToken.revoked).is_(False))
        .where(col(ImportToken.expires_at) > at)
        .values(used_at=at, used_from=used_from, user_agent=user_agent)
        .execution_options(synchronize_session=False)
    )
    token = get_import_token_by_hash(s, token_hash=token_hash)
    if _rowcount(claimed) != 1:
        raise ConflictError("import token already used, revoked or expired")
    s.refresh(token)
    return token


def revoke_import_token(s: Session, *, token_id: int, user_id: int | None = None) -> ImportToken:
    """Revoke one token; with ``user_id``, only if that user owns it."""
    token = by_id(s, ImportToken, token_id)
    if token is None or (user_id is not None and token.user_id != user_id):
        raise NotFoundError(f"no import token with id {token_id}")
    token.revoked = True
    s.flush()
    return token


def revoke_import_tokens_for_certificate(s: Session, *, serial: str) -> int:
    """A revoked certificate's outstanding links must stop working; returns how many."""
    result = s.execute(
        update(ImportToken)
        .where(col(ImportToken.certificate_serial) == serial.lower())
        .where(col(ImportToken.used_at).is_(None))
        .where(col(ImportToken.revoked).is_(False))
        .values(revoked=True)
        .execution_options(synchronize_session="fetch")
    )
    return _rowcount(result)


def list_import_tokens(s: Session, *, user_id: int) -> list[ImportToken]:
    """Newest first."""
    query = select(ImportToken).where(ImportToken.user_id == user_id)
    order = (col(ImportToken.created_at).desc(), col(ImportToken.id).desc())
    return list(s.exec(query.order_by(*order)).all())


# API tokens ----------------------------------------------------------------------------


def add_api_token(
    s: Session,
    *,
    user_id: int,
    name: str,
    token_hash: str,
    created_at: datetime | None = None,
    expires_at: datetime | None = None,
    scope: str = "full",
) -> ApiToken:
    token = ApiToken(
        user_id=user_id, name=name, token_hash=token_hash, created_at=created_at or utcnow(),
        expires_at=expires_at, scope=scope,
    )
    return insert(s, token, f"API token {name!r}")


def get_api_token_by_hash(s: Session, *, token_hash: str) -> ApiToken:
    token = s.exec(select(ApiToken).where(ApiToken.token_hash == token_hash)).first()
    if token is None:
        raise NotFoundError("no such API token")
    return token


def touch_api_token(s: Session, *, token_id: int, at: datetime) -> None:
    """Remember when a token was last used (shown to its owner)."""
    s.execute(
        update(ApiToken)
        .where(col(ApiToken.id) == token_id)
        .values(last_used_at=at)
        .execution_options(synchronize_session="fetch")
    )


def list_api_tokens(s: Session, *, user_id: int) -> list[ApiToken]:
    query = select(ApiToken).where(ApiToken.user_id == user_id)
    return list(s.exec(query.order_by(col(ApiToken.name))).all())


def delete_api_token(s: Session, *, token_id: int, user_id: int | None = None) -> None:
    """Delete one token; with ``user_id``, only if that user owns it."""
    token = s.get(ApiToken, token_id)
    if token is None or (user_id is not None and token.user_id != user_id):
        raise NotFoundError(f"no API token with id {token_id}")
    s.delete(token)
    s.flush()
