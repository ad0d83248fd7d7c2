"""What the gateway asks the store (may this certificate connect, the leases) and what it tells
it (accounting), plus the write-behind queue that keeps those writes off the handshake path.

``Policy`` is the narrow interface the gateway depends on (a fake in tests); ``StorePolicy``
answers it from the sslvpn store, so a revocation or a disabled user written by any process
(CLI, portal) is seen by the gateway's next check or sweep. ``RecordWriter`` collects the
gateway's accounting records on the event loop and writes them in batches, one transaction
each, from one worker thread: a handshake never waits for a commit (SQLite runs
synchronous=FULL, so every commit is an fsync), and the records still land in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol, TypeVar

from sqlalchemy import Engine
from sqlmodel import Session

from sslvpn.store import StoreError, db, gateway_queries, queries
from sslvpn.store.gateway_queries import LeaseStored as LeaseStored
from sslvpn.store.gateway_queries import Record as Record
from sslvpn.store.gateway_queries import SessionCounted as SessionCounted
from sslvpn.store.gateway_queries import SessionEnded as SessionEnded
from sslvpn.store.gateway_queries import SessionOpened as SessionOpened
from sslvpn.store.gateway_queries import Standing
from sslvpn.store.models import utcnow

log = logging.getLogger(__name__)

T = TypeVar("T")
WRITE_ATTEMPTS = 3
FLUSH_INTERVAL = 0.2  # seconds a record may wait before its batch is written
FLUSH_SIZE = 1000  # a batch this big is written at once
MAX_PENDING = 200_000  # beyond this (store down for long) new records are dropped, counted
BATCH_ATTEMPTS = 3  # a batch that failed this many flushes in a row is given up


@dataclass(frozen=True)
class Authorization:
    """Who a certificate belongs to and, when it may not connect, why (``refusal``)."""

    user: str
    device: str
    refusal: str | None = None


class Policy(Protocol):
    """The gateway's questions to the store and its accounting (sync, short; ``record`` runs
    in a worker thread)."""

    def authorize(self, serial: str) -> Authorization: ...

    def unauthorized(self, serials: Collection[str]) -> dict[str, str]: ...

    def stored_leases(self) -> dict[str, str]: ...

    def record(self, records: Sequence[Record]) -> None: ...


def _refusal(standing: Standing | None) -> str | None:
    if standing is None:
        return "certificate unknown"
    if standing.kind != "client":
        return "not a client certificate"
    if standing.status != "valid":
        return f"certificate {standing.status}"
    if standing.user_name is None:
        return "certificate has no user"
    if standing.user_disabled:
        return "user disabled"
    return None


class StorePolicy:
    """``Policy`` over the sslvpn store for the gateway named ``gateway_name``."""

    def __init__(self, engine: Engine, *, gateway_name: str = "default") -> None:
        self._engine = engine
        self._gateway_name = gateway_name

    def authorize(self, serial: str) -> Authorization:
        """One indexed read: the certificate joined with its owner."""
        with db.session(self._engine) as s:
            standing = gateway_queries.standings(s, serials=[serial]).get(serial.lower())
        return Authorization(
            user=(standing.user_name or "") if standing else "",
            device=standing.device if standing else "",
            refusal=_refusal(standing),
        )

    def unauthorized(self, serials: Collection[str]) -> dict[str, str]:
        if not serials:
            return {}
        with db.session(self._engine) as s:
            refused = gateway_queries.not_in_good_standing(s, serials=serials)
        result = {}
        for serial in serials:
            lowered = serial.lower()
            if lowered in refused:
                result[serial] = _refusal(refused[lowered]) or "certificate unknown"
        return result

    def stored_leases(self) -> dict[str, str]:
        with db.session(self._engine) as s:
            return gateway_queries.lease_map(s)

    def record(self, records: Sequence[Record]) -> None:
        """Write a batch of accounting records in one transaction (one fsync)."""
        if records:
            self._write(lambda s: gateway_queries.write_records(
                s, records=records, gateway_name=self._gateway_name, now=utcnow()
            ))

    def close_stale_records(self) -> int:
        """Close records a crashed run of this gateway left open."""
        return self._write(lambda s: queries.close_stale_session_records(
            s, gateway_name=self._gateway_name, at=utcnow()
        ))

    def _write(self, work: Callable[[Session], T]) -> T:
        """One write transaction (the store's writer lock), retried when SQLite still says
        "locked" (another writer held the lock for longer than the busy timeout)."""
        for _ in range(WRITE_ATTEMPTS - 1):
            try:
                with db.session(self._engine, write=True) as s:
                    return work(s)
            except StoreError as exc:
                if "locked" not in str(exc):
                    raise
        with db.session(self._engine, write=True) as s:
            return work(s)


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
