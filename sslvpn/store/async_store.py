"""The store as an event loop may use it: every call in a thread, bounded in time.

A locked SQLite file or a hung PostgreSQL blocks the thread that asks, for as long as the
fault lasts (a stopped PostgreSQL server keeps its TCP connections open, so no client-side
socket timeout fires). Code that runs on an event loop therefore never opens a store session
itself: it hands the work to ``AsyncStore``, which runs it in a small pool of its own threads
and gives up waiting after a timeout with `StoreUnavailable`, the answer callers turn into
``AUTH_FAILED,TEMP`` or a 503. A thread stuck in a dead store stays stuck until the store
answers; while every thread is stuck, calls fail at once instead of queueing behind them.
The facade logs once when the store stops answering and once when it is back, never once per
failed call.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from sqlalchemy import Engine
from sqlmodel import Session

from sslvpn.store import StoreError, StoreUnavailable, db

log = logging.getLogger(__name__)

T = TypeVar("T")
CALL_TIMEOUT = 5.0  # seconds a caller on the loop waits for one store call
THREADS = 4  # store calls under way at once; more fail at once (the store is not answering)


class AsyncStore:
    """Store calls for code on an event loop: threaded, time-bounded, outage-aware."""

    def __init__(self, engine: Engine, *, timeout: float = CALL_TIMEOUT,
                 threads: int = THREADS) -> None:
        self.engine = engine
        self.timeout = timeout
        self._threads = threads
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="sslvpn-store")
        self._lock = threading.Lock()
        self._busy = 0
        self._down_since: float | None = None
        self.outages = 0  # times the store stopped answering (for the metrics)

    @property
    def available(self) -> bool:
        """False from a failed or timed-out call until the next call that succeeds."""
        return self._down_since is None

    async def read(self, work: Callable[[Session], T], *, timeout: float | None = None) -> T:
        """``work`` inside one read-only transaction, in a store thread."""
        return await self.call(lambda engine: _in_session(engine, work, write=False),
                               timeout=timeout)

    async def write(self, work: Callable[[Session], T], *, timeout: float | None = None) -> T:
        """``work`` inside one write transaction (the store's writer lock), in a store
        thread. A timeout does not undo it: the transaction commits if the store recovers."""
        return await self.call(lambda engine: _in_session(engine, work, write=True),
                               timeout=timeout)

    async def call(self, work: Callable[[Engine], T], *, timeout: float | None = None) -> T:
        """Any blocking store work given the engine, in a store thread, bounded in time.

        Raises `StoreUnavailable` when the store failed, did not answer in time, or every
        store thread is still stuck in earlier calls; other `StoreError`s (not found,
        duplicate, conflict) are answers and pass through unchanged.
        """
        with self._lock:
            if self._busy >= self._threads:
                stuck = self._busy
            else:
                stuck = 0
                self._busy += 1
        if stuck:
            self._mark_down(f"{stuck} earlier calls are still waiting for it")
            raise StoreUnavailable("the store is not answering; try again later")
        try:
            future: Future[T] = self._executor.submit(work, self.engine)
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
            self._mark_down(f"a call did not finish within {limit:g} s")
            raise StoreUnavailable("the store did not answer in time; try again later") from None
        except StoreUnavailable as exc:
            self._mark_down(str(exc))
            raise
        except StoreError as exc:
            if type(exc) is not StoreError:  # a subclass is the store's answer, not a fault
                self._mark_up()
                raise
            self._mark_down(str(exc))
            raise StoreUnavailable(f"the store failed: {exc}") from None
        self._mark_up()
        return result

    async def close(self) -> None:
        """Stop the threads without waiting for calls stuck in a dead store."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _release(self) -> None:
        with self._lock:
            self._busy -= 1

    def _mark_down(self, reason: str) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            self.outages += 1
            log.error("the store is unavailable (%s); tunnels keep running, new connections "
                      "and portal requests are answered 'try again later'", reason)

    def _mark_up(self) -> None:
        if self._down_since is not None:
            log.warning("the store is available again after %.1f s",
                        time.monotonic() - self._down_since)
            self._down_since = None


def _in_session(engine: Engine, work: Callable[[Session], T], *, write: bool) -> T:
    with db.session(engine, write=write) as s:
        return work(s)
