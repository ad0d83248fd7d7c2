"""Users and certificates pages at 10,000 users: search, sort and paging are done by the
store (two statements), so a page stays fast and every user is on exactly one page."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import insert

from sslvpn.store.models import Certificate, User
from tests.web.conftest import Site, login

PEOPLE = 10_000
PAGE_BUDGET = 1.5  # seconds for one page on a loaded 2-core test machine (measured ~0.1)
NAME_CELL = re.compile(r'<td data-label="Name">([^<]+)</td>')
OWNER_CELL = re.compile(r'<td data-label="Owner">([^<]+)</td>')


def add_many(site: Site) -> None:
    """10,000 users with an e-mail each and a valid certificate, in two bulk inserts."""
    now = datetime.now(UTC)
    with site.engine.begin() as connection:
        connection.execute(insert(User), [
            {"name": f"u{i:05d}", "email": f"person{i}@example.test", "role": "user",
             "created_at": now, "disabled": i % 3 == 0} for i in range(PEOPLE)])
        ids = dict(connection.execute(User.__table__.select().with_only_columns(  # type: ignore[attr-defined]
            User.__table__.c.name, User.__table__.c.id)).all())  # type: ignore[attr-defined]
        connection.execute(insert(Certificate), [
            {"serial": f"{i:032x}", "subject_cn": f"u{i:05d}.phone", "user_id": ids[f"u{i:05d}"],
             "device": "phone", "kind": "client", "status": "valid", "cert_pem": "-",
             "fingerprint_sha256": "00", "not_before": now, "created_at": now,
             "not_after": now + timedelta(days=i % 400 + 1)} for i in range(PEOPLE)])


@pytest.fixture
async def crowded(client: TestClient, site: Site) -> TestClient:
    """The admin's browser on a portal with 10,000 more users."""
    add_many(site)
    await login(client, "root")
    return client


async def timed(client: TestClient, path: str) -> str:
    """The page at ``path``, which must come within the budget."""
    start = time.perf_counter()
    response = await client.get(path)
    elapsed = time.perf_counter() - start
    assert response.status == 200, path
    assert elapsed < PAGE_BUDGET, (path, elapsed)
    return await response.text()


async def test_ten_thousand_users_page_fast_and_every_one_once(crowded: TestClient) -> None:
    client = crowded
    first = await timed(client, "/admin/users")
    names = NAME_CELL.findall(first)
    assert len(names) == 50 and names == sorted(names) and names[0] == "alice"
    assert f"Users 1–50 of {PEOPLE + 3}" in first and ">person0@example.test</a>" in first
    last_page = -(-(PEOPLE + 3) // 50)
    assert f"Page 1 of {last_page}" in first and 'rel="next"' in first
    seen = list(names)
    for page in range(2, last_page + 1, 40):  # a sample of pages, the last among them
        text = await timed(client, f"/admin/users?page={page}")
        seen += NAME_CELL.findall(text)
    text = await timed(client, f"/admin/users?page={last_page}")
    tail = NAME_CELL.findall(text)
    assert tail == ["u09997", "u09998", "u09999"] and f"Users 10001–10003 of {PEOPLE + 3}" in text
    assert 'rel="next"' not in text
    assert len(seen) == len(set(seen))  # no one on two pages

    found = await timed(client, "/admin/users?q=PERSON4242%40")  # e-mail, any case
    assert NAME_CELL.findall(found) == ["u04242"]
    assert "Users 1–1 of 1" in found
    wild = await timed(client, "/admin/users?q=%25")  # % is a character, not a wildcard
    assert NAME_CELL.findall(wild) == [] and "No users match" in wild
    backwards = await timed(client, "/admin/users?sort=name&dir=desc")
    assert NAME_CELL.findall(backwards)[:2] == ["u09999", "u09998"]
    assert 'aria-sort="descending"><a href="/admin/users?sort=name&amp;dir=asc">Name ▼' in backwards
    junk = await timed(client, "/admin/users?sort=password_hash&page=-3&dir=sideways")
    assert NAME_CELL.findall(junk) == names  # unknown input: the default view


async def test_ten_thousand_certificates_search_sort_and_page(crowded: TestClient) -> None:
    client = crowded
    newest = await timed(client, "/admin/certificates")
    assert f"Certificates 1–50 of {PEOPLE}" in newest and len(OWNER_CELL.findall(newest)) == 50
    soonest = await timed(client, "/admin/certificates?sort=expires&dir=asc&page=2")
    assert "Certificates 51–100 of" in soonest
    by_serial = await timed(client, f"/admin/certificates?q={4242:032x}")
    assert OWNER_CELL.findall(by_serial) == ["u04242"]
    assert 'href="/admin/certificates/' + f"{4242:032x}" + '/profile.ovpn"' in by_serial
    owners = await timed(client, "/admin/certificates?q=u0424&sort=owner&status=valid")
    assert OWNER_CELL.findall(owners) == [f"u0424{d}" for d in range(10)]
    revoked = await timed(client, "/admin/certificates?status=revoked")
    assert "No certificates match" in revoked
