"""The write-behind queue that keeps the gateway's accounting writes off the handshake path.

``RecordWriter`` collects the gateway's accounting records (``sslvpn.runtime.policy.Record``)
on the event loop and writes them in batches, one transaction each, from one worker thread:
a handshake never waits for a commit (SQLite runs synchronous=FULL, so every commit is an
fsync), and the records still land in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from sslvpn.runtime.policy import Record

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 0.2  # seconds a record may wait before its batch is written
FLUSH_SIZE = 1000  # a batch this big is written at once
MAX_PENDING = 200_000  # beyond this (store down for long) new records are dropped, counted
BATCH_ATTEMPTS = 3  # a batch that failed this many flushes in a row is given up


class RecordWriter:
    """Write-behind queue: ``add`` is O(1) on the loop; ``run`` writes a batch every
    ``interval`` (or at once when ``FLUSH_SIZE`` records wait) in one worker thread.

    A failed batch is logged and retried with the next flush, and given up after
    ``BATCH_ATTEMPTS`` failures so a poisoned batch cannot stop accounting for good.
    """

    def __init__(self, write: Callable[[Sequence[Record]], None],
                 interval: float = FLUSH_INTERVAL) -> None:
        self._write = write
        self.interval = interval
        self._pending: list[Record] = []
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._failures = 0
        self._executor: ThreadPoolExecutor | None = None
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, record: Record) -> None:
        if len(self._pending) >= MAX_PENDING:
            if not self.dropped:
                log.error("accounting queue full (%d records): dropping new ones", MAX_PENDING)
            self.dropped += 1
            return
        self._pending.append(record)
        if len(self._pending) == FLUSH_SIZE:
            self._wake.set()

    async def run(self) -> None:
        """Flush forever; cancel it, then ``flush`` once more to write the rest."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        """Write everything queued now (a failure is logged, never raised)."""
        async with self._lock:
            if not self._pending:
                return
            batch, self._pending = self._pending, []
            if self._executor is None:  # one thread keeps the batches in order
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="sslvpn-accounting")
            writing = asyncio.get_running_loop().run_in_executor(self._executor, self._write,
                                                                   batch)
            try:
                await asyncio.shield(writing)  # a cancelled flush (shutdown) still writes
            except asyncio.CancelledError:
                writing.add_done_callback(_report_late_failure)
                raise
            except Exception:  # the store is down or refused the batch: the data path goes on
                self._failures += 1
                if self._failures < BATCH_ATTEMPTS:
                    log.exception("writing %d accounting records failed; will retry",
                                  len(batch))
                    self._pending[:0] = batch
                else:
                    log.exception("writing %d accounting records failed %d times; giving up",
                                  len(batch), self._failures)
                    self._failures = 0
                return
            self._failures = 0

    async def close(self) -> None:
        """Wait (off the loop) for the writes under way and stop the worker thread; call
        it after the last ``flush``."""
        if self._executor is not None:
            executor, self._executor = self._executor, None
            await asyncio.to_thread(executor.shutdown, wait=True)


def _report_late_failure(writing: asyncio.Future[None]) -> None:
    """A batch whose flush was cancelled: its failure can only be logged."""
    if not writing.cancelled() and writing.exception() is not None:
        log.error("writing accounting records failed", exc_info=writing.exception())
