"""The store as an event loop may use it: every call in a thread, bounded in time.

A locked SQLite file or a hung PostgreSQL blocks the thread that asks, for as long as the
fault lasts (a stopped PostgreSQL server keeps its TCP connections open, so no client-side
socket timeout fires). Code that runs on an event loop therefore never opens a store session
itself: it hands the work to ``AsyncStore``, which runs it in a small pool of its own threads
and gives up waiting after a timeout with `StoreUnavailable`, the answer callers turn into
``AUTH_FAILED,TEMP`` or a 503. A thread stuck in a dead store stays stuck until the store
answers; while every thread is stuck, calls fail at once instead of queueing behind them.
Every thread busy is not proof of a dead store when a call succeeded within the timeout
(the store is answering, only busy, e.g. the calls that waited out an outage finishing
together): then a call queues, up to ``QUEUE_PER_THREAD`` per thread, and waits its time.
The threads are daemons: one stuck in a dead store never holds up the exit of the process
(``serve`` stopping on SIGTERM while PostgreSQL hangs). The facade logs once when the store
stops answering and once when it is back, never once per failed call. "Back" needs a call
of the kind that failed: while only writes fail (another process holds SQLite's write lock,
where readers go on), a read that works is no news; and a read that timed out while it
waited for a thread (every thread held by stuck writes) is no news either: only a read that
ran for half its time without an answer says reads fail.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Engine
from sqlalchemy.engine import URL
from sqlmodel import Session

from sslvpn.store import StoreError, StoreUnavailable, db

if TYPE_CHECKING:  # psycopg, which the leases use, only loads for a fleet node's IPsec
    from sslvpn.store.leases import TunnelLeases

log = logging.getLogger(__name__)

T = TypeVar("T")
CALL_TIMEOUT = 5.0  # seconds a caller on the loop waits for one store call
THREADS = 4  # store calls under way at once; more fail at once (the store is not answering)
QUEUE_PER_THREAD = 4  # calls waiting per thread while the store answers but is busy


class AsyncStore:
    """Store calls for code on an event loop: threaded, time-bounded, outage-aware."""

    def __init__(self, engine: Engine, *, timeout: float = CALL_TIMEOUT,
                 threads: int = THREADS, owner: str = "the gateway") -> None:
        self.engine = engine
        self.owner = owner  # who is asking, named in the outage log lines
        self.timeout = timeout
        self._threads = threads
        self._workers = _Workers(threads)
        self._lock = threading.Lock()
        self._busy = 0
        self._down_since: float | None = None
        self._answered_at = float("-inf")  # monotonic time of the last call that succeeded
        self._reads_failed = False  # during this outage (only writes failed: reads prove little)
        self.outages = 0  # times the store stopped answering (for the metrics)

    @property
    def url(self) -> URL:
        """Where the store is, for a connection of the caller's own that never blocks (the
        fleet's LISTEN)."""
        return self.engine.url

    @property
    def available(self) -> bool:
        """False from a failed or timed-out call until the next call that succeeds (a write,
        when only writes failed)."""
        return self._down_since is None

    async def read(self, work: Callable[[Session], T], *, timeout: float | None = None) -> T:
        """``work`` inside one read-only transaction, in a store thread."""
        return await self.call(lambda engine: _in_session(engine, work, write=False),
                               timeout=timeout, writes=False)

    async def write(self, work: Callable[[Session], T], *, timeout: float | None = None) -> T:
        """``work`` inside one write transaction (the store's writer lock), in a store
        thread. A timeout does not undo it: the transaction commits if the store recovers."""
        return await self.call(lambda engine: _in_session(engine, work, write=True),
                               timeout=timeout)

    async def call(self, work: Callable[[Engine], T], *, timeout: float | None = None,
                   writes: bool = True) -> T:
        """Any blocking store work given the engine, in a store thread, bounded in time;
        ``writes=False`` says it only reads.

        Raises `StoreUnavailable` when the store failed, did not answer in time, or every
        store thread is still stuck in earlier calls; other `StoreError`s (not found,
        duplicate, conflict) are answers and pass through unchanged.
        """
        answering = time.monotonic() - self._answered_at < self.timeout
        room = self._threads * (1 + QUEUE_PER_THREAD) if answering else self._threads
        with self._lock:
            if self._busy >= room:
                stuck = self._busy
            else:
                stuck = 0
                self._busy += 1
        if stuck:  # proves nothing about reads: the stuck calls may all be writes
            self._mark_down(f"{stuck} earlier calls are still waiting for it", read=False)
            raise StoreUnavailable("the store is not answering; try again later")
        started: list[float] = []

        def run() -> T:
            started.append(time.monotonic())
            return work(self.engine)

        try:
            future: Future[T] = self._workers.submit(run)
        except BaseException:
            self._release()
            raise
        future.add_done_callback(lambda _done: self._release())
        limit = self.timeout if timeout is None else timeout
        try:
            # not asyncio.wait_for: on 3.11 it swallows a cancellation that arrives as the
            # work finishes, and a cancelled caller (a task at shutdown) would carry on
            async with asyncio.timeout(limit):
                result = await asyncio.wrap_future(future)
        except TimeoutError:
            ran = time.monotonic() - started[0] if started else 0.0
            self._mark_down(f"a call did not finish within {limit:g} s",
                            read=not writes and ran >= limit / 2)
            raise StoreUnavailable("the store did not answer in time; try again later") from None
        except StoreUnavailable as exc:
            self._mark_down(str(exc), read=not writes)
            raise
        except StoreError as exc:
            if type(exc) is not StoreError:  # a subclass is the store's answer, not a fault
                self._mark_up(writes)
                raise
            self._mark_down(str(exc), read=not writes)
            raise StoreUnavailable(f"the store failed: {exc}") from None
        self._mark_up(writes)
        return result

    def write_here(self, work: Callable[[Session], T]) -> T:
        """``work`` in one write transaction in the calling thread, for a worker thread that
        keeps its own order and retries (the accounting queue). Refused on an event loop's
        thread, where a store that does not answer would stop everything else."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return _in_session(self.engine, work, write=True)
        raise RuntimeError("write_here() blocks: call it from a worker thread, not the loop")

    def companion(self, *, threads: int, owner: str | None = None) -> AsyncStore:
        """Another facade on the same database with threads of its own, for work that must
        go on while this one's threads are all busy (a fleet node's heartbeat)."""
        return AsyncStore(self.engine, timeout=self.timeout, threads=threads,
                          owner=owner or self.owner)

    def leases(self, node: str) -> TunnelLeases:
        """Node ``node``'s IPsec tunnel leases, on a connection of their own; call them only
        through `call` (they block). ValueError on SQLite, which has no advisory locks."""
        from sslvpn.store.leases import TunnelLeases

        return TunnelLeases(self.engine, node)

    async def close(self) -> None:
        """Stop the threads without waiting for calls stuck in a dead store."""
        self._workers.shutdown()

    def _release(self) -> None:
        with self._lock:
            self._busy -= 1

    def _mark_down(self, reason: str, *, read: bool) -> None:
        self._reads_failed |= read
        if self._down_since is None:
            self._down_since = time.monotonic()
            self.outages += 1
            log.error("the store is unavailable to %s (%s); tunnels keep running, new "
                      "connections and portal requests are answered 'try again later'",
                      self.owner, reason)

    def _mark_up(self, writes: bool) -> None:
        self._answered_at = time.monotonic()
        if self._down_since is not None and (writes or self._reads_failed):
            log.warning("the store is available again to %s after %.1f s",
                        self.owner, time.monotonic() - self._down_since)
            self._down_since = None
            self._reads_failed = False


class _Workers:
    """Daemon threads (up to ``size``, started as calls need them) that run calls from a
    queue. ThreadPoolExecutor's threads are joined when the interpreter exits, so a call stuck
    in a hung store would keep a stopped gateway alive until the store answered."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._queue: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None] = (
            queue.SimpleQueue())
        self._lock = threading.Lock()
        self._started = 0
        self._threads: list[threading.Thread] = []
        self._idle = 0  # threads waiting for a call
        self._queued = 0  # calls no thread took yet
        self._closed = False

    def submit(self, call: Callable[[], T]) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the store facade is closed")
            self._queued += 1
            if self._idle < self._queued and self._started < self._size:
                self._started += 1
                thread = threading.Thread(target=self._run, daemon=True,
                                          name=f"sslvpn-store-{self._started}")
                self._threads.append(thread)
                thread.start()
            self._queue.put((future, call))
        return future

    def shutdown(self, *, wait: bool = False) -> None:
        """Cancel the calls no thread took; each thread ends after its current call (waited
        for with ``wait``)."""
        with self._lock:
            self._closed = True
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    self._queued -= 1
                    item[0].cancel()
            for _ in range(self._started):
                self._queue.put(None)
            threads = list(self._threads)
        for thread in threads if wait else ():
            thread.join()

    def _run(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            item = self._queue.get()
            with self._lock:
                self._idle -= 1
                if item is not None:
                    self._queued -= 1
            if item is None:
                return
            future, call = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = call()
            except BaseException as exc:  # handed to the caller, as an executor does
                future.set_exception(exc)
            else:
                future.set_result(result)


def _in_session(engine: Engine, work: Callable[[Session], T], *, write: bool) -> T:
    with db.session(engine, write=write) as s:
        return work(s)
