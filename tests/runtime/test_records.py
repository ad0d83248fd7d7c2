"""The accounting write-behind queue against a store that fails: nothing is given up."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from sslvpn.runtime import records as records_module
from sslvpn.runtime.policy import LeaseStored, Record, SessionCounted, SessionEnded
from sslvpn.runtime.records import RecordWriter
from sslvpn.store import RejectedError, StoreError
from tests.runtime.test_gateway_accounting import background, until

FULL = StoreError("database error: database or disk is full")


class FakeStore:
    """Takes batches (in the writer's thread); fails the first ``failures`` writes with
    ``error``, or every write while ``down``; refuses any batch holding ``poison``."""

    def __init__(self, failures: int = 0, *, down: bool = False,
                 poison: Record | None = None) -> None:
        self.failures = failures
        self.down = down
        self.poison = poison
        self.attempts: list[float] = []
        self.stored: list[Record] = []

    def write(self, batch: Sequence[Record]) -> None:
        self.attempts.append(time.monotonic())
        if self.down or self.failures:
            self.failures = max(0, self.failures - 1)
            raise FULL
        if self.poison is not None and self.poison in batch:
            raise RejectedError("database refused the data: CHECK constraint failed")
        self.stored.extend(batch)


def leases(count: int) -> list[Record]:
    return [LeaseStored(f"{n:02x}", f"10.8.0.{n + 2}") for n in range(count)]


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(records_module, "RETRY_FIRST", 0.01)
    monkeypatch.setattr(records_module, "RETRY_MAX", 0.04)


async def test_records_are_kept_until_the_store_takes_them(
    fast_retries: None, caplog: pytest.LogCaptureFixture
) -> None:
    store = FakeStore(failures=8)
    writer = RecordWriter(store.write, interval=0.01)
    first, later = leases(3), leases(5)[3:]
    for record in first:
        writer.add(record)
    async with background(writer.run()):
        await until(lambda: writer.failures >= 2)
        for record in later:  # added during the outage: behind the older ones
            writer.add(record)
        await until(lambda: len(store.stored) == 5)
    assert store.stored == first + later  # in order, each once
    assert writer.failures == 8 and writer.failing_since is None and writer.pending == 0
    assert caplog.text.count("writing accounting records failed") == 1  # not once per retry
    assert caplog.text.count("written again after") == 1
    assert "Traceback" not in caplog.text


async def test_retries_back_off_to_a_ceiling(fast_retries: None) -> None:
    store = FakeStore(down=True)
    writer = RecordWriter(store.write, interval=0.01)
    writer.add(leases(1)[0])
    delays = []
    async with background(writer.run()):
        for attempt in range(1, 6):
            await until(lambda: writer.failures >= attempt)  # noqa: B023 (awaited at once)
            delays.append(writer.retry_delay)
    gaps = [b - a for a, b in itertools.pairwise(store.attempts[:5])]  # after delays[:4]
    assert delays == [0.01, 0.02, 0.04, 0.04, 0.04]
    assert all(gap >= delay * 0.9 for gap, delay in zip(gaps, delays[:4], strict=True))
    assert writer.pending == 1 and store.stored == []


async def test_a_refused_record_is_skipped_alone(caplog: pytest.LogCaptureFixture) -> None:
    records = leases(9)
    store = FakeStore(poison=records[6])
    writer = RecordWriter(store.write)
    for record in records:
        writer.add(record)
    assert await writer.flush()
    assert store.stored == records[:6] + records[7:]
    assert writer.rejected == 1 and writer.failures == 0
    assert caplog.text.count("refused an accounting record (LeaseStored 06)") == 1
    assert len(store.attempts) <= 2 + 2 * 4  # halving, not one write per record
    writer.add(LeaseStored("ff", "10.8.0.200"))
    assert await writer.flush()
    assert store.stored[-1] == LeaseStored("ff", "10.8.0.200")
    assert len(store.attempts) <= 2 + 2 * 4 + 1  # back to whole batches


async def test_a_full_queue_drops_the_newest_and_counts_them(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(records_module, "MAX_PENDING", 3)
    store = FakeStore(down=True)
    writer = RecordWriter(store.write)
    records = leases(5)
    for record in records:
        writer.add(record)
    assert (writer.pending, writer.dropped) == (3, 2)
    assert not await writer.flush()
    assert caplog.text.count("accounting queue full") == 1
    store.down = False
    assert await writer.flush()
    assert store.stored == records[:3]  # the oldest: an exact prefix of what happened
    assert "room again; 2 records were dropped" in caplog.text


async def test_a_sessions_newer_counters_replace_its_unwritten_ones() -> None:
    store = FakeStore(failures=1)
    writer = RecordWriter(store.write)
    for n in range(1, 4):
        writer.add(SessionCounted("udp-1", n, n))
        writer.add(SessionCounted("udp-2", 10 * n, 0))
    assert writer.pending == 2
    assert not await writer.flush()  # taken and failed: kept as they were taken
    writer.add(SessionCounted("udp-1", 4, 4))
    ended = SessionEnded("udp-1", datetime.now(UTC), "bye", 5, 5)
    writer.add(ended)
    writer.add(SessionCounted("udp-2", 40, 0))
    assert writer.pending == 5
    assert await writer.flush()
    assert store.stored == [SessionCounted("udp-1", 3, 3), SessionCounted("udp-2", 30, 0),
                            SessionCounted("udp-1", 4, 4), ended,
                            SessionCounted("udp-2", 40, 0)]


async def test_drain_waits_for_a_store_that_comes_back(fast_retries: None) -> None:
    store = FakeStore(failures=4)
    writer = RecordWriter(store.write)
    for record in leases(3):
        writer.add(record)
    assert await writer.drain(10) == 0
    assert store.stored == leases(3)


async def test_drain_gives_up_after_its_timeout_and_says_so(
    fast_retries: None, caplog: pytest.LogCaptureFixture
) -> None:
    store = FakeStore(down=True)
    writer = RecordWriter(store.write)
    for record in leases(3):
        writer.add(record)
    started = time.monotonic()
    assert await writer.drain(0.3) == 3
    assert time.monotonic() - started < 5
    assert len(store.attempts) >= 3
    assert "3 accounting records were not written" in caplog.text


async def test_a_cancelled_flush_still_books_its_write() -> None:
    written: list[list[Record]] = []
    release = threading.Event()

    def slow_write(batch: Sequence[Record]) -> None:
        release.wait(10)
        written.append(list(batch))

    writer = RecordWriter(slow_write)
    first, second = LeaseStored("a1", "10.8.0.2"), LeaseStored("b2", "10.8.0.3")
    for record in (first, second):  # the second waits behind the first's write
        writer.add(record)
        flush = asyncio.create_task(writer.flush())
        await asyncio.sleep(0)
        flush.cancel()  # as when the gateway shuts down mid-flush
        with contextlib.suppress(asyncio.CancelledError):
            await flush
    release.set()
    assert await writer.drain(10) == 0
    assert written == [[first], [second]]  # each once: the first was not written again
