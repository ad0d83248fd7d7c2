"""The write-behind queue for the gateway's accounting: nothing recorded is dropped while the
store is briefly unable to take it.

``RecordWriter`` collects the gateway's accounting records (sessions opened, byte counters,
sessions ended, address leases) on the event loop and writes them in batches, one
transaction each, from one worker thread: a handshake never waits for a commit (SQLite runs
synchronous=FULL, so every commit is an fsync), and the records land in order.

A record leaves the queue only once the store took it. When the store fails (a full disk, a
read-only or locked database, PostgreSQL down) the batch is retried with exponential backoff
for as long as it takes; the failure is logged once when it starts and once when it ends.
Memory stays bounded: a session's newer byte counters replace its unwritten older ones, and
beyond ``MAX_PENDING`` records the newest are dropped (counted in ``dropped``), so the store
keeps an exact prefix of what happened rather than sessions missing their beginning. A record
the store refuses for what it holds (a constraint, a value out of range: ``RejectedError``)
would block every later one, so a refused batch is halved until the one record is found,
which is skipped alone, logged and counted in ``rejected``. ``drain`` is the shutdown path:
it keeps trying for a bounded time and says how many records were not written.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from sslvpn.runtime.policy import Record, SessionCounted, SessionEnded
from sslvpn.store import RejectedError, StoreError

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 0.2  # seconds a record may wait before its batch is written
FLUSH_SIZE = 1000  # this many waiting records are written at once
BATCH_LIMIT = 5000  # records per transaction at most: a backlog is written in several
MAX_PENDING = 100_000  # records queued at most (~50 MB); newer ones are dropped, counted
RETRY_FIRST = 0.2  # seconds before the first retry of a failed write; doubled each time
RETRY_MAX = 5.0  # seconds between retries at most


class _Counted:
    """A session's newest unwritten byte counters; a newer sample replaces it in place."""

    __slots__ = ("record",)

    def __init__(self, record: SessionCounted) -> None:
        self.record = record


class RecordWriter:
    """Write-behind queue: ``add`` is O(1) on the loop; ``run`` writes every ``interval``
    (at once when ``FLUSH_SIZE`` records wait) and retries with backoff while the store fails.

    For the metrics: ``pending`` records queued, ``dropped`` (queue full), ``rejected``
    (refused by the store), ``failures`` (failed writes), ``failing_since`` (monotonic time
    the current outage began, None while writes work), ``retry_delay`` (seconds to the next
    try while failing).
    """

    def __init__(self, write: Callable[[Sequence[Record]], None],
                 interval: float = FLUSH_INTERVAL) -> None:
        self._write = write
        self.interval = interval
        self._queue: deque[Record | _Counted] = deque()
        self._counted: dict[str, _Counted] = {}  # session id -> counters not yet being written
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._settling: asyncio.Future[bool] | None = None  # the write under way, booked
        self._limit = BATCH_LIMIT  # smaller while a refused record is looked for
        self.retry_delay = RETRY_FIRST
        self._full = False
        self._failures_before = 0  # ``failures`` when the current outage began
        self.failing_since: float | None = None
        self.failures = 0
        self.dropped = 0
        self.rejected = 0

    @property
    def pending(self) -> int:
        return len(self._queue)

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, record: Record) -> None:
        if isinstance(record, SessionCounted):
            held = self._counted.get(record.session_id)
            if held is not None:
                held.record = record
                return
        if len(self._queue) >= MAX_PENDING:
            if not self._full:
                self._full = True
                log.error("accounting queue full (%d records): dropping new ones until the "
                          "store takes the backlog", MAX_PENDING)
            self.dropped += 1
            return
        if isinstance(record, SessionCounted):
            self._queue.append(self._counted.setdefault(record.session_id, _Counted(record)))
        else:
            self._queue.append(record)
            if isinstance(record, SessionEnded):
                self._counted.pop(record.session_id, None)
        if len(self._queue) == FLUSH_SIZE and self.failing_since is None:
            self._wake.set()

    async def run(self) -> None:
        """Flush forever (backing off while the store fails); cancel it, then ``drain``."""
        while True:
            if self.failing_since is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.interval)
            else:
                await asyncio.sleep(self.retry_delay)
            self._wake.clear()
            await self.flush()

    async def flush(self) -> bool:
        """Write everything queued now, batch by batch; False when the store failed (the
        records stay queued). Only cancellation is raised: a cancelled flush's write still
        completes and is booked before the next flush starts."""
        async with self._lock:
            if self._settling is not None:
                await asyncio.shield(self._settling)
            while self._queue:
                if not await self._write_batch():
                    return False
            return True

    async def drain(self, timeout: float) -> int:
        """Shutdown: keep writing (with backoff) until the queue is empty or ``timeout``
        seconds pass, stop the worker thread; returns the records left unwritten (logged)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while not await self.flush():
                    await asyncio.sleep(self.retry_delay)
        left = len(self._queue)
        if left:
            log.error("%d accounting records were not written: the store did not take them "
                      "within %g s of shutdown", left, timeout)
        if self._executor is not None:
            executor, self._executor = self._executor, None
            if left:  # a write stuck in a dead store must not hold the shutdown
                executor.shutdown(wait=False, cancel_futures=True)
            else:
                await asyncio.to_thread(executor.shutdown, wait=True)
        return left

    async def _write_batch(self) -> bool:
        """Write the oldest records; True when the next batch may follow at once."""
        batch = self._take()
        if self._executor is None:  # one thread keeps the batches in order
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="sslvpn-accounting")
        loop = asyncio.get_running_loop()
        writing = loop.run_in_executor(self._executor, self._write, batch)
        settled = self._settling = loop.create_future()
        # booked by the callback, so a flush cancelled mid-write still books its batch
        writing.add_done_callback(lambda done: settled.set_result(self._settle(done, batch)))
        return await asyncio.shield(settled)

    def _take(self) -> list[Record]:
        """The oldest records, up to the batch limit; their counters are no longer replaced
        (what is written is what was taken)."""
        batch: list[Record] = []
        for entry in itertools.islice(self._queue, self._limit):
            if isinstance(entry, _Counted):
                if self._counted.get(entry.record.session_id) is entry:
                    del self._counted[entry.record.session_id]
                batch.append(entry.record)
            else:
                batch.append(entry)
        return batch

    def _settle(self, writing: asyncio.Future[None], batch: list[Record]) -> bool:
        error = asyncio.CancelledError() if writing.cancelled() else writing.exception()
        if error is None:
            self._written(len(batch))
            return True
        if isinstance(error, RejectedError):
            if len(batch) > 1:  # halve until the refused record is alone
                self._limit = max(1, len(batch) // 2)
                return True
            self._queue.popleft()
            self.rejected += 1
            self._limit = BATCH_LIMIT
            log.error("the store refused an accounting record (%s %s), skipped: %s",
                      type(batch[0]).__name__, batch[0][0], error)
            return True
        self.failures += 1
        if self.failing_since is None:
            self.failing_since = time.monotonic()
            self._failures_before = self.failures - 1
            self.retry_delay = RETRY_FIRST
            log.error("writing accounting records failed (%s); keeping %d records and "
                      "retrying with backoff up to every %g s", error, len(self._queue),
                      RETRY_MAX, exc_info=None if isinstance(error, StoreError) else error)
        else:
            self.retry_delay = min(RETRY_MAX, self.retry_delay * 2)
        return False

    def _written(self, count: int) -> None:
        for _ in range(count):
            self._queue.popleft()
        self._limit = min(BATCH_LIMIT, self._limit * 2)
        if self.failing_since is not None:
            log.warning("accounting records are written again after %.1f s of failures "
                        "(%d failed attempts)", time.monotonic() - self.failing_since,
                        self.failures - self._failures_before)
            self.failing_since = None
        if self._full and len(self._queue) < MAX_PENDING:
            self._full = False
            log.warning("accounting queue has room again; %d records were dropped so far",
                        self.dropped)
