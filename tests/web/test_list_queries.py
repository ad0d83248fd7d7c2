"""Admin list pages and API lists ask the store a fixed number of statements, however many
rows they show: a page that queried once per user slowed down as users accumulated.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp.test_utils import TestClient
from sqlalchemy import event

from sslvpn.store import db, queries
from web.import_links import token_hash

from .conftest import Site, login

PAGES = ("/admin", "/admin/users", "/admin/certificates", "/admin/sessions", "/admin/audit",
         "/devices", "/admin/api-tokens")
API = ("/api/v1/users", "/api/v1/certificates", "/api/v1/sessions")


def add_people(site: Site, count: int, start: int) -> None:
    """``count`` users, each with a valid and a revoked certificate and an audit entry."""
    now = datetime.now(UTC)
    with db.session(site.engine, write=True) as s:
        for i in range(start, start + count):
            user = queries.create_user(s, name=f"person{i}")
            for status in ("valid", "revoked"):
                row = queries.add_certificate(
                    s, serial=secrets.token_hex(8), subject_cn=f"person{i}", kind="client",
                    not_before=now, not_after=now + timedelta(days=20), fingerprint_sha256="00",
                    cert_pem="-", user_id=user.id, device=f"d{status}")
                row.status = status
            queries.set_user_disabled(s, name=user.name, disabled=i % 2 == 0)
            queries.record_audit(s, actor="test", action="user.create", target=user.name)


@contextmanager
def counted(site: Site) -> Iterator[list[str]]:
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    event.listen(site.engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        event.remove(site.engine, "before_cursor_execute", count)


async def statements_per_path(client: TestClient, site: Site, token: str) -> dict[str, int]:
    counts = {}
    for path in PAGES + API:
        headers = {"Authorization": f"Bearer {token}"} if path in API else {}
        with counted(site) as statements:
            response = await client.get(path, headers=headers)
            assert response.status == 200, path
        counts[path] = len(statements)
    return counts


async def test_list_pages_ask_the_same_statements_for_5_or_50_users(
    client: TestClient, site: Site
) -> None:
    token = "svt_" + secrets.token_urlsafe(16)
    with db.session(site.engine, write=True) as s:
        root = queries.get_user(s, name="root")
        assert root.id is not None
        queries.add_api_token(s, user_id=root.id, name="t", token_hash=token_hash(token))
    await login(client, "root")
    add_people(site, 5, 0)
    few = await statements_per_path(client, site, token)
    add_people(site, 45, 5)
    many = await statements_per_path(client, site, token)
    assert many == few
