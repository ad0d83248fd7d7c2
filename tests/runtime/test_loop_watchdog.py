"""The loop-lag watchdog: a blocked loop is reported once, with what blocked it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import selectors
import time
from collections.abc import AsyncIterator, Callable

import pytest

from sslvpn.runtime.loop_watchdog import LoopWatchdog


@contextlib.asynccontextmanager
async def watching(**options: float) -> AsyncIterator[LoopWatchdog]:
    watchdog = LoopWatchdog(interval=0.02, threshold=0.2, **options)
    task = asyncio.create_task(watchdog.run())
    async with asyncio.timeout(5):  # ticking
        while watchdog.last_lag == 0.0:
            await asyncio.sleep(0.01)
    try:
        yield watchdog
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def stall(watchdog: LoopWatchdog, block: Callable[[], object]) -> None:
    """Run ``block`` on the loop, then wait (bounded) until the watchdog saw the stall and
    the next tick measured it (each block here is longer than the one before)."""
    seen, lag = watchdog.stalls + watchdog.starved, watchdog.max_lag
    block()
    async with asyncio.timeout(5):
        while watchdog.max_lag == lag or watchdog.stalls + watchdog.starved == seen:
            await asyncio.sleep(0.01)


def _reports(caplog: pytest.LogCaptureFixture, *, starved: bool = False) -> list[str]:
    """The watchdog's reports of blocked (or of starved) stalls; a busy host may add the
    other kind at any time."""
    return [r.getMessage() for r in caplog.records if r.name.endswith("loop_watchdog")
            and ("did not get the CPU" in r.getMessage()) is starved]


def blocking_store_call(seconds: float = 0.3) -> None:
    time.sleep(seconds)  # what a store call on the loop does while the database is locked


async def test_a_blocked_loop_is_reported_once_with_the_blocking_call(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with watching() as watchdog:
        await stall(watchdog, blocking_store_call)
        assert watchdog.stalls == 1 and watchdog.max_lag >= 0.2
        await stall(watchdog, lambda: blocking_store_call(0.4))  # within the log interval
    assert watchdog.stalls == 2
    [report] = _reports(caplog)
    assert "the event loop has not run for" in report
    assert "blocking_store_call" in report and "time.sleep(seconds)" in report
    assert "blocking_store_call" in watchdog.last_stack


async def test_later_stalls_are_counted_in_the_next_report(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with watching() as watchdog:
        await stall(watchdog, blocking_store_call)
        await stall(watchdog, lambda: blocking_store_call(0.4))
        watchdog.log_interval = 0.0  # as if the interval were over
        await stall(watchdog, lambda: blocking_store_call(0.5))
    reports = _reports(caplog)
    assert len(reports) == 2 and "(1 more since the last report)" in reports[1]


async def test_a_loop_waiting_for_events_was_starved_not_blocked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    async with watching() as watchdog:
        with selectors.DefaultSelector() as idle:  # as if the loop's poll woke 0.3 s late
            await stall(watchdog, lambda: idle.select(0.3))
    [report] = _reports(caplog, starved=True)
    assert "while it waited for events: the process did not get the CPU" in report
    assert watchdog.stalls == 0 and watchdog.starved >= 1
