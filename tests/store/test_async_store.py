"""AsyncStore: store calls from an event loop are threaded, bounded in time, outage-aware."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlmodel import Session

from sslvpn.store import NotFoundError, StoreError, StoreUnavailable
from sslvpn.store.async_store import AsyncStore
from sslvpn.store.db import open_engine, upgrade


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Engine:
    engine = open_engine(f"sqlite:///{tmp_path / 'store.db'}")
    upgrade(engine)
    return engine


def _one(s: Session) -> int:
    return int(s.exec(text("SELECT 1")).one()[0])  # type: ignore[call-overload]


async def test_read_and_write_run_off_the_loop(sqlite_engine: Engine) -> None:
    store = AsyncStore(sqlite_engine)
    loop_thread = threading.get_ident()
    seen: list[int] = []

    def work(s: Session) -> int:
        seen.append(threading.get_ident())
        return _one(s)

    assert await store.read(work) == 1
    assert await store.write(work) == 1
    assert seen and loop_thread not in seen
    assert store.available
    await store.close()


async def test_answers_pass_through_and_faults_become_unavailable(
        sqlite_engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    store = AsyncStore(sqlite_engine)

    def missing(_engine: Engine) -> None:
        raise NotFoundError("no such user")

    def broken(_engine: Engine) -> None:
        raise StoreError("database error: disk I/O error")

    with pytest.raises(NotFoundError):
        await store.call(missing)
    assert store.available
    with caplog.at_level(logging.WARNING, logger="sslvpn.store.async_store"):
        for _ in range(3):
            with pytest.raises(StoreUnavailable):
                await store.call(broken, writes=False)
        assert not store.available
        assert await store.read(_one) == 1
    assert store.available
    messages = [r.getMessage() for r in caplog.records]
    assert sum("unavailable" in m for m in messages) == 1  # once, not once per failed call
    assert sum("available again" in m for m in messages) == 1
    assert store.outages == 1
    await store.close()


async def test_a_hung_store_costs_the_caller_only_the_timeout(sqlite_engine: Engine) -> None:
    store = AsyncStore(sqlite_engine, timeout=0.2, threads=2)
    release = threading.Event()

    def hang(_engine: Engine) -> str:
        release.wait(30)
        return "late"

    started = time.monotonic()
    for _ in range(2):
        with pytest.raises(StoreUnavailable):
            await store.call(hang, writes=False)
    assert time.monotonic() - started < 2
    # every thread is stuck: the next call fails at once instead of queueing behind them
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        await store.read(_one)
    assert time.monotonic() - started < 0.1
    release.set()
    deadline = time.monotonic() + 10
    while True:  # the stuck threads come back once the store answers
        try:
            assert await store.read(_one) == 1
            break
        except StoreUnavailable:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
    assert store.available
    await store.close()


async def test_busy_threads_just_after_an_outage_are_not_a_second_outage(
        sqlite_engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    """Calls that waited out an outage finish together with the first new ones: every
    thread busy then is a store that answers, so a new call queues instead of failing and
    the log says down once and back once (it flapped in the portal outage test)."""
    store = AsyncStore(sqlite_engine, timeout=0.3, threads=2, owner="the test")
    release = threading.Event()

    def hang(_engine: Engine) -> str:
        release.wait(30)
        return "late"

    for _ in range(2):
        with pytest.raises(StoreUnavailable):
            await store.call(hang, writes=False)
    release.set()
    deadline = time.monotonic() + 10
    while not store.available:
        assert time.monotonic() < deadline
        with contextlib.suppress(StoreUnavailable):
            await store.read(_one)
        await asyncio.sleep(0.01)

    def slow(_engine: Engine) -> str:
        time.sleep(0.1)
        return "slow"

    busy = [asyncio.ensure_future(store.call(slow, writes=False)) for _ in range(2)]
    await asyncio.sleep(0.02)  # both threads are taken now
    assert await store.read(_one) == 1
    assert [await call for call in busy] == ["slow", "slow"]
    said = [r.getMessage() for r in caplog.records]
    assert sum("unavailable to the test" in m for m in said) == 1, said
    assert sum("available again to the test" in m for m in said) == 1, said
    await store.close()


async def test_a_read_that_waited_behind_stuck_writes_is_no_news(
        sqlite_engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    """Writes stuck on SQLite's write lock hold every thread; a read queued behind them
    times out without ever running. That says nothing about reads, so a read that works
    next must not announce the store back while writes still fail (the portal flapped
    between down and back under a 20 s write lock)."""
    store = AsyncStore(sqlite_engine, timeout=0.3, threads=1, owner="the test")
    release = threading.Event()

    def stuck_write(_engine: Engine) -> str:
        release.wait(30)
        return "late"

    assert await store.read(_one) == 1  # the store answered just now: calls may queue
    write = asyncio.ensure_future(store.call(stuck_write))
    await asyncio.sleep(0.02)  # the only thread is held by the write from now on
    with pytest.raises(StoreUnavailable):
        await store.read(_one)  # queued behind the stuck write: it never ran
    with pytest.raises(StoreUnavailable):
        await write
    release.set()
    deadline = time.monotonic() + 10
    while True:  # until the released thread has taken the queued read and is free again
        assert time.monotonic() < deadline
        with contextlib.suppress(StoreUnavailable):
            assert await store.read(_one) == 1
            break
        await asyncio.sleep(0.01)
    assert not store.available  # a read that works is no news while writes failed
    assert await store.write(_one) == 1
    assert store.available
    said = [r.getMessage() for r in caplog.records]
    assert sum("unavailable to the test" in m for m in said) == 1, said
    assert sum("available again to the test" in m for m in said) == 1, said
    await store.close()


async def test_a_locked_sqlite_file_is_a_timeout_not_a_stall(
        sqlite_engine: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = AsyncStore(sqlite_engine, timeout=0.3, owner="the test")
    holder = sqlite3.connect(tmp_path / "store.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await store.write(_one)
        assert time.monotonic() - started < 1.5
        assert not store.available
        # readers go on under a write lock (WAL), but that says nothing about writes: the
        # store stays unavailable, and the log does not flap between down and back
        assert await store.read(_one) == 1
        assert not store.available
        with pytest.raises(StoreUnavailable):
            await store.write(_one)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    deadline = time.monotonic() + 15
    while not store.available:  # the waiting writers get the lock; a new write proves it
        assert time.monotonic() < deadline
        try:
            await store.write(_one)
        except StoreUnavailable:
            await asyncio.sleep(0.05)
    said = [r.getMessage() for r in caplog.records]
    assert sum("unavailable to the test" in m for m in said) == 1, said
    assert sum("available again to the test" in m for m in said) == 1, said
    await store.close()


async def test_a_call_cancelled_as_its_work_finishes_is_still_cancelled(
        sqlite_engine: Engine) -> None:
    """A shutdown that cancels a caller just as its store call ends must not be swallowed
    (asyncio.wait_for on 3.11 returned the result instead, and the caller looped on)."""
    store = AsyncStore(sqlite_engine, threads=1)
    loop = asyncio.get_running_loop()

    def work(_engine: Engine) -> str:
        loop.call_soon_threadsafe(caller.cancel)  # reaches the loop before the result does
        return "done"

    caller = asyncio.create_task(store.call(work))
    await asyncio.sleep(0)  # the caller submits the work
    store._workers.shutdown(wait=True)  # block the loop until cancel and result are queued
    with pytest.raises(asyncio.CancelledError):
        await caller
    await store.close()


def test_a_call_stuck_in_a_hung_store_does_not_hold_up_the_exit(tmp_path: Path) -> None:
    """serve stopping on SIGTERM while PostgreSQL hangs: its store threads must not keep the
    process alive (an executor's threads are joined at exit, for as long as the hang lasts)."""
    script = tmp_path / "stuck.py"
    script.write_text(
        "import asyncio, threading\n"
        "from sqlalchemy import create_engine\n"
        "from sslvpn.store import StoreUnavailable\n"
        "from sslvpn.store.async_store import AsyncStore\n"
        "async def main():\n"
        "    store = AsyncStore(create_engine('sqlite://'), timeout=0.1)\n"
        "    try:\n"
        "        await store.call(lambda engine: threading.Event().wait())  # hangs for good\n"
        "    except StoreUnavailable:\n"
        "        print('gave up', flush=True)\n"
        "    await store.close()\n"
        "asyncio.run(main())\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert (done.returncode, done.stdout) == (0, "gave up\n"), done.stderr
