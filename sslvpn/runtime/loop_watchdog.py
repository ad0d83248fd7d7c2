"""The loop-lag watchdog: how late the event loop that carries packets runs, and what held it.

A tick on the loop re-arms itself every ``interval`` and records how late it ran (``last_lag``,
``max_lag``: the figures kept for the metrics). A thread beside the loop looks at the last
tick: when the loop has not ticked for ``threshold`` beyond its interval, something blocks it,
and the thread takes the loop thread's stack at that moment (``sys._current_frames``), which
names the blocking call. It logs that once per stall, at most once per ``log_interval``
(later stalls in the same interval are counted and mentioned with the next line). A loop
found waiting in its selector was not blocked by a callback: the process did not get the
CPU (an overloaded host); such stalls are counted and reported apart (``starved``), so they
never hide the report of a blocking call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
import time
import traceback
from types import FrameType

log = logging.getLogger(__name__)

INTERVAL = 0.05  # seconds between ticks on the loop
THRESHOLD = 0.1  # seconds of lag that count as a stall
LOG_INTERVAL = 60.0  # seconds between two stall reports at most
STACK_FRAMES = 12  # innermost frames of the loop thread shown per report


class LoopWatchdog:
    """Run ``await watchdog.run()`` as a task on the loop to watch; cancel it to stop."""

    def __init__(self, *, interval: float = INTERVAL, threshold: float = THRESHOLD,
                 log_interval: float = LOG_INTERVAL) -> None:
        self.interval = interval
        self.threshold = threshold
        self.log_interval = log_interval
        self.last_lag = 0.0  # seconds the latest tick ran late
        self.max_lag = 0.0  # the worst since start
        self.stalls = 0  # times a callback held the loop for longer than the threshold
        self.starved = 0  # times the idle loop woke that late (the host's CPU was busy)
        self.last_stack = ""  # what the loop thread ran in the latest stall
        self._beat = time.monotonic()  # when the loop last ticked
        self._reported: dict[str, float] = {}  # kind of stall -> monotonic time of its report
        self._unreported: dict[str, int] = {}  # kind of stall -> stalls since its report

    async def run(self) -> None:
        """Tick on this loop and watch it from a thread until cancelled."""
        loop = asyncio.get_running_loop()
        loop_thread = threading.get_ident()
        stop = threading.Event()
        watcher = threading.Thread(target=self._watch, args=(loop, loop_thread, stop),
                                   name="sslvpn-loop-watchdog", daemon=True)
        self._beat = time.monotonic()
        watcher.start()
        try:
            while True:
                due = loop.time() + self.interval
                await asyncio.sleep(self.interval)
                self._tick(loop.time() - due)
        finally:
            stop.set()
            await asyncio.to_thread(watcher.join)

    def _tick(self, lag: float) -> None:
        self._beat = time.monotonic()
        self.last_lag = lag
        self.max_lag = max(self.max_lag, lag)

    def _watch(self, loop: asyncio.AbstractEventLoop, loop_thread: int,
               stop: threading.Event) -> None:
        stalled = False  # this stall was seen already
        while not stop.wait(self.interval / 2):
            late = time.monotonic() - self._beat - self.interval
            if late <= self.threshold:
                stalled = False
            elif not stalled:
                stalled = True
                self._stalled(loop, loop_thread, late)

    def _stalled(self, loop: asyncio.AbstractEventLoop, loop_thread: int, late: float) -> None:
        frame = sys._current_frames().get(loop_thread)
        stalled_for = (late + self.interval) * 1000
        if frame is not None and _idle(frame):
            self.starved += 1
            if self._may_report("starved"):
                log.warning("the event loop has not run for %.0f ms%s while it waited for "
                            "events: the process did not get the CPU", stalled_for,
                            self._since("starved"))
            return
        self.stalls += 1
        self.last_stack = "".join(traceback.format_stack(frame)[-STACK_FRAMES:]) if frame else ""
        if self._may_report("blocked"):
            task = None
            with contextlib.suppress(RuntimeError):  # read from another thread: best effort
                task = asyncio.current_task(loop)
            log.warning("the event loop has not run for %.0f ms%s; task %s is running:\n%s",
                        stalled_for, self._since("blocked"),
                        task.get_name() if task else "(none)", self.last_stack.rstrip())

    def _may_report(self, kind: str) -> bool:
        """At most one report of each kind per ``log_interval``; the rest are counted."""
        now = time.monotonic()
        if now - self._reported.get(kind, float("-inf")) < self.log_interval:
            self._unreported[kind] = self._unreported.get(kind, 0) + 1
            return False
        self._reported[kind] = now
        return True

    def _since(self, kind: str) -> str:
        count = self._unreported.pop(kind, 0)
        return f" ({count} more since the last report)" if count else ""


def _idle(frame: FrameType) -> bool:
    """The loop thread sits in the selector (asyncio's loop) or inside uvloop's C loop, whose
    innermost Python frame is the runner that started it: no callback is running."""
    where = frame.f_code.co_filename
    return where.endswith("selectors.py") or (
        where.endswith("asyncio/runners.py") and frame.f_code.co_name == "run")
