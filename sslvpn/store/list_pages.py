"""One page of a long admin list (users, client certificates): a search, one sort column
and a window, with the total that matches; two statements whatever the number of rows, so
the pages stay fast with 10,000 users.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, or_
from sqlmodel import Session, col, select

from sslvpn.store.models import Certificate, User

MAX_PER_PAGE = 200


@dataclass(frozen=True)
class Window:
    """What the reader asked for: a search text, a sort key (from the list's own table),
    its direction and a 1-based page of ``per_page`` rows."""

    search: str = ""
    sort: str = ""
    descending: bool = False
    page: int = 1
    per_page: int = 50

    @property
    def offset(self) -> int:
        return (max(1, self.page) - 1) * self.per_page


USER_SORTS: dict[str, Any] = {
    "name": col(User.name),
    "email": col(User.email),
    "role": col(User.role),
    "created": col(User.created_at),
    "state": col(User.disabled),
}
CERTIFICATE_SORTS: dict[str, Any] = {
    "created": col(Certificate.created_at),
    "owner": col(User.name),
    "device": col(Certificate.device),
    "serial": col(Certificate.serial),
    "status": col(Certificate.status),
    "expires": col(Certificate.not_after),
}


def _matching(column: Any, text: str) -> Any:
    """Case-insensitive substring match; % and _ in the text are literal."""
    return func.lower(column).contains(text.lower(), autoescape=True)


def _ordered(query: Any, sorts: dict[str, Any], window: Window, default: str, tie: Any) -> Any:
    column = sorts.get(window.sort, sorts[default])
    first = column.desc() if window.descending else column.asc()
    return query.order_by(first, tie.desc() if window.descending else tie.asc())


def users_page(s: Session, *, window: Window) -> tuple[list[User], int]:
    """Users whose name or e-mail contains the search text, one page, and how many match."""
    where = []
    if window.search:
        where.append(or_(_matching(User.name, window.search), _matching(User.email, window.search)))
    total = s.exec(select(func.count()).select_from(User).where(*where)).one()
    query = _ordered(select(User).where(*where), USER_SORTS, window, "name", col(User.id))
    rows = s.exec(query.offset(window.offset).limit(window.per_page)).all()
    return list(rows), int(total)


def client_certificates_page(
    s: Session, *, window: Window, status: str | None = None
) -> tuple[list[tuple[Certificate, str | None]], int]:
    """Client certificates (with their owner's name) whose owner, device, serial or subject
    contains the search text, optionally of one status; one page and how many match."""
    where: list[Any] = [Certificate.kind == "client"]
    if status is not None:
        where.append(Certificate.status == status)
    if window.search:
        text = window.search
        where.append(or_(_matching(User.name, text), _matching(Certificate.device, text),
                         _matching(Certificate.serial, text.replace(":", "")),
                         _matching(Certificate.subject_cn, text)))
    joined = select(Certificate, User.name).outerjoin(User, col(Certificate.user_id) == User.id)
    counted = select(func.count()).select_from(Certificate).outerjoin(
        User, col(Certificate.user_id) == User.id)
    total = s.exec(counted.where(*where)).one()
    query = _ordered(joined.where(*where), CERTIFICATE_SORTS, window, "created",
                     col(Certificate.id))
    rows = s.exec(query.offset(window.offset).limit(window.per_page)).all()
    return [(certificate, name) for certificate, name in rows], int(total)

