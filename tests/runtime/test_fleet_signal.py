"""The fleet's signal on real PostgreSQL: a commit anywhere wakes a node at once (a running
gateway ends a revoked session without waiting for its sweep), and a listening connection
that drops is opened again (with a wake-up for what it missed)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from client_profiles import lifecycle
from sslvpn.config import DataPaths
from sslvpn.runtime.fleet_signal import listen_conninfo, listen_for_signals
from sslvpn.store import db, node_queries, queries
from sslvpn.store.db import open_engine
from tests.runtime.loopback import client_config, connected, issue, running_service

pytestmark = pytest.mark.postgres


class Wakes:
    """What the gateway's ``wake_sweep`` would see: how many signals, and when."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.changed = asyncio.Event()

    def __call__(self) -> None:
        self.times.append(time.monotonic())
        self.changed.set()

    async def wait_for(self, count: int, timeout: float = 10.0) -> float:
        async with asyncio.timeout(timeout):
            while len(self.times) < count:
                self.changed.clear()
                await self.changed.wait()
        return self.times[count - 1]


@pytest.fixture
def engine(postgres_url: str) -> Iterator[Engine]:
    engine = open_engine(postgres_url)
    yield engine
    engine.dispose()


@contextlib.asynccontextmanager
async def listener(engine: Engine, wakes: Wakes) -> AsyncIterator[None]:
    conninfo = listen_conninfo(engine.url)
    assert conninfo is not None
    task = asyncio.create_task(listen_for_signals(conninfo, wakes))
    try:
        await wakes.wait_for(1)  # listening: the first wake-up comes with the connection
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _signal(engine: Engine) -> float:
    """Commit a signal; the time of the commit."""
    with db.session(engine, write=True) as s:
        node_queries.signal_fleet(s, "certificate revoked")
    return time.monotonic()


def _listeners(engine: Engine) -> list[int]:
    with engine.connect() as connection:
        return list(connection.execute(text(
            "SELECT pid FROM pg_stat_activity WHERE query = :listen"),
            {"listen": f"LISTEN {node_queries.FLEET_CHANNEL}"}).scalars())


async def test_a_commit_anywhere_wakes_the_node_at_once(engine: Engine) -> None:
    wakes = Wakes()
    async with listener(engine, wakes):
        latencies = []
        for count in range(2, 12):
            committed = await asyncio.to_thread(_signal, engine)
            latencies.append(await wakes.wait_for(count) - committed)
    assert max(latencies) < 1.0, latencies


def test_sqlite_has_no_signal_to_listen_for(tmp_path: Path) -> None:
    sqlite = open_engine(f"sqlite:///{tmp_path}/store.db")
    try:
        assert listen_conninfo(sqlite.url) is None
    finally:
        sqlite.dispose()


async def test_a_dropped_listener_connects_again_and_hears_the_next_signal(
    engine: Engine,
) -> None:
    wakes = Wakes()
    async with listener(engine, wakes):
        [pid] = await asyncio.to_thread(_listeners, engine)
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        await wakes.wait_for(2)  # connected again: a wake-up for what it may have missed
        [again] = await asyncio.to_thread(_listeners, engine)
        assert again != pid
        committed = await asyncio.to_thread(_signal, engine)
        assert await wakes.wait_for(3) - committed < 1.0


async def test_a_revocation_committed_anywhere_ends_a_running_gateways_session_at_once(
    tmp_path: Path, empty_postgres_url: str
) -> None:
    """The gateway's periodic sweep is an hour away here: only the signal can end it."""
    paths = DataPaths(tmp_path / "data")
    paths.data_dir.mkdir()
    engine = open_engine(empty_postgres_url)
    try:
        db.upgrade(engine)
        lifecycle.initialise(paths, engine, public_addresses=["127.0.0.1"], port=1194,
                             proto="udp", vpc=["10.10.0.0/24"])
        row = issue(paths, engine, "alice")
        async with running_service(paths, engine, sweep_interval=3600.0) as (service, _):
            assert service.gateway is not None
            gateway = service.gateway
            client = await connected(service, client_config(paths, row, v2=False, tcp=False))

            def revoke() -> float:
                with db.session(engine, write=True) as s:
                    queries.mark_revoked(s, serial=row.serial, reason="keyCompromise",
                                         at=datetime.now(UTC))
                return time.monotonic()

            try:
                committed = await asyncio.to_thread(revoke)
                async with asyncio.timeout(5):
                    while gateway.list_sessions():
                        await asyncio.sleep(0.01)
                assert time.monotonic() - committed < 1.0
            finally:
                client.close_transport()
    finally:
        engine.dispose()
