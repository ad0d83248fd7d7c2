"""The portal in a store outage: 503 with Retry-After within 5 s, never a 500, then back.

Two outages: another connection holding SQLite's ``BEGIN EXCLUSIVE`` (writers wait; the
portal's logins, audit rows and API token checks write) and a PostgreSQL server whose
processes are all stopped (nothing answers at all). People get a short page, the API its
JSON error; a login gets the 503 too, never "wrong password". The log says once that the
store is unavailable and once that it is back, with no traceback. `sslvpn portal` answers
the same way.
"""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer

from tests.pgcluster import PostgresCluster, postgres_cluster
from tests.web.conftest import (
    PASSWORDS,
    Browser,
    Site,
    csrf_from,
    login,
    make_site,
    second_browser,
    second_browser_at,
)
from tests.web.test_api import ADMIN_TOKEN, add_tokens, bearer
from web.app import create_app
from web.outage import MESSAGE

ANSWER_WITHIN = 5.0  # seconds: the requirement for any answer during an outage
RECOVERY = 20.0  # seconds for a stuck store call to finish once the store is back
UNAVAILABLE = "the store is unavailable to the portal"
BACK = "the store is available again to the portal"


@dataclass(frozen=True)
class Answer:
    status: int
    seconds: float
    content_type: str
    retry_after: str | None
    body: str


async def timed(request: Awaitable[ClientResponse]) -> Answer:
    started = time.monotonic()
    response = await request
    body = await response.text()
    return Answer(response.status, time.monotonic() - started, response.content_type,
                  response.headers.get("Retry-After"), body)


async def log_in_answer(browser: Browser) -> Answer:
    """What a login with the right password gets."""
    token = await csrf_from(browser, "/login")
    form = {"name": "root", "password": PASSWORDS["root"], "csrf_token": token}
    return await timed(browser.post("/login", data=form, allow_redirects=False))


def assert_page_503(answer: Answer) -> None:
    assert answer.status == 503 and answer.seconds < ANSWER_WITHIN, answer
    assert answer.retry_after is not None and int(answer.retry_after) > 0
    assert answer.content_type == "text/html" and "Try again" in answer.body
    assert "Wrong name or password" not in answer.body and "Traceback" not in answer.body


def assert_api_503(answer: Answer) -> None:
    assert answer.status == 503 and answer.seconds < ANSWER_WITHIN, answer
    assert answer.retry_after is not None and int(answer.retry_after) > 0
    assert answer.content_type == "application/json" and MESSAGE in answer.body


def assert_logged_once(text: str) -> None:
    assert text.count(UNAVAILABLE) == 1 and text.count(BACK) == 1, text
    assert "Traceback" not in text, text


@contextmanager
def sqlite_locked(site: Site) -> Iterator[None]:
    """Another connection holds the database's write lock (as a stuck process would)."""
    holder = sqlite3.connect(str(site.engine.url.database), isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


async def recovered(client: TestClient, probes: dict[str, int]) -> None:
    """Bounded wait until every probe path answers its usual status again."""
    deadline = time.monotonic() + RECOVERY
    while True:
        answers = {}
        for path in probes:
            headers = bearer(ADMIN_TOKEN) if path.startswith("/api/") else None
            answers[path] = (await client.get(path, headers=headers)).status
        if answers == probes:
            return
        assert time.monotonic() < deadline, answers
        await asyncio.sleep(0.1)


@asynccontextmanager
async def served(site: Site) -> AsyncIterator[TestClient]:
    """The portal with its real store budget (the `client` fixture's is patient)."""
    app = create_app(engine=site.engine, paths=site.paths, control=None)
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


@pytest.fixture
async def client(site: Site) -> AsyncIterator[TestClient]:
    async with served(site) as test_client:
        yield test_client


async def test_a_locked_sqlite_store_gets_503s_and_the_portal_comes_back(
    client: TestClient, site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    add_tokens(site)
    csrf = await login(client, "root")
    async with second_browser(client) as stranger:
        with sqlite_locked(site):
            logging_in, creating, listing, adding = await asyncio.gather(
                log_in_answer(stranger),
                timed(client.post("/admin/users", data={"name": "carol", "csrf_token": csrf},
                                  allow_redirects=False)),
                timed(client.get("/api/v1/users", headers=bearer(ADMIN_TOKEN))),
                timed(client.post("/api/v1/users", json={"name": "dave"},
                                  headers=bearer(ADMIN_TOKEN))),
            )
        for page in (logging_in, creating):
            assert_page_503(page)
        for call in (listing, adding):
            assert_api_503(call)
        await recovered(client, {"/api/v1/users": 200, "/admin/users": 200})
        assert (await log_in_answer(stranger)).status == 303
    assert_logged_once(caplog.text)
    assert not [r for r in caplog.records if r.exc_info], caplog.text


@pytest.fixture
def private_postgres() -> Iterator[PostgresCluster]:
    """A cluster of this test's own, which it freezes (never the suite's shared one)."""
    with postgres_cluster() as cluster:
        yield cluster


@pytest.fixture
def postgres_site(tmp_path: Path, private_postgres: PostgresCluster) -> Iterator[Site]:
    made = make_site(tmp_path / "data", private_postgres.url)
    yield made
    made.engine.dispose()


@pytest.fixture
async def postgres_client(postgres_site: Site) -> AsyncIterator[TestClient]:
    async with served(postgres_site) as test_client:
        yield test_client


async def test_a_hung_postgresql_gets_503s_and_the_portal_comes_back(
    postgres_client: TestClient, postgres_site: Site, private_postgres: PostgresCluster,
    caplog: pytest.LogCaptureFixture,
) -> None:
    add_tokens(postgres_site)
    await login(postgres_client, "root")
    with private_postgres.frozen(limit=3 * ANSWER_WITHIN):
        page, call = await asyncio.gather(
            timed(postgres_client.get("/admin/users")),
            timed(postgres_client.get("/api/v1/users", headers=bearer(ADMIN_TOKEN))),
        )
    assert_page_503(page)
    assert_api_503(call)
    await recovered(postgres_client, {"/api/v1/users": 200, "/admin/users": 200})
    assert_logged_once(caplog.text)


async def test_the_portal_command_answers_503_too(site: Site) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from sslvpn.cli import main; main()",
        "--data-dir", str(site.paths.data_dir), "portal", "--listen", "127.0.0.1:0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        first = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
        url = re.fullmatch(r"portal: (http://127\.0\.0\.1:\d+/)\n", first)
        assert url, first
        async with second_browser_at(url.group(1)) as browser:
            with sqlite_locked(site):
                assert_page_503(await log_in_answer(browser))
            deadline = time.monotonic() + RECOVERY
            while (await log_in_answer(browser)).status != 303:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
    finally:
        process.terminate()
        await process.wait()
    assert_logged_once((await process.stderr.read()).decode())

