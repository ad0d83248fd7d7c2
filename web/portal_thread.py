"""The portal on its own event loop, in its own thread, beside a gateway in the same process.

`sslvpn serve` runs the portal this way so that nothing the portal does (TLS handshakes,
templates, QR codes, its store calls and their timeouts) runs on the loop that carries
packets: a slow page or a stuck store can delay other portal requests, never a packet.
The portal reaches the gateway through `sslvpn.runtime.control.ThreadSafeControl`, which
runs each call on the gateway's loop. The metrics listener (`web.ops`) runs the same way,
in a thread of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future

from aiohttp import web

from web.app import Served

Bind = Callable[[web.Application], Awaitable[Served]]  # e.g. start_portal with its address

STOP_TIMEOUT = 30.0  # seconds to wait for the portal's thread once asked to stop

_Started = tuple[Served, asyncio.AbstractEventLoop, asyncio.Event]


class PortalThread:
    """A started portal: where it listens, and how to wait for it or stop it."""

    def __init__(self, served: Served, loop: asyncio.AbstractEventLoop, stop: asyncio.Event,
                 finished: Future[None]) -> None:
        self.url = served.url
        self._loop, self._stop, self._finished = loop, stop, finished

    @classmethod
    async def start(cls, build: Callable[[], web.Application], bind: Bind,
                    name: str = "sslvpn-portal") -> PortalThread:
        """Build the app in a new thread and ``bind`` it there; raises what binding raised."""
        started: Future[_Started] = Future()
        finished: Future[None] = Future()
        # Running futures cannot be cancelled: a waiter that gives up leaves them to the thread.
        started.set_running_or_notify_cancel()
        finished.set_running_or_notify_cancel()
        threading.Thread(target=_main, args=(build, bind, started, finished),
                         name=name, daemon=True).start()
        served, loop, stop = await asyncio.wrap_future(started)
        return cls(served, loop, stop, finished)

    async def wait(self) -> None:
        """Until the portal's loop ends (asked to stop, or an error, which is raised)."""
        await asyncio.wrap_future(self._finished)

    async def stop(self) -> None:
        """Close the portal's connections and end its thread."""
        with contextlib.suppress(RuntimeError):  # its loop has closed already
            self._loop.call_soon_threadsafe(self._stop.set)
        async with asyncio.timeout(STOP_TIMEOUT):
            await asyncio.wrap_future(self._finished)


def _main(build: Callable[[], web.Application], bind: Bind, started: Future[_Started],
          finished: Future[None]) -> None:
    try:
        asyncio.run(_serve(build, bind, started))
    except BaseException as exc:  # handed to whoever waits, in the gateway's thread
        if not started.done():
            started.set_exception(exc)
        finished.set_exception(exc)
    else:
        finished.set_result(None)


async def _serve(build: Callable[[], web.Application], bind: Bind,
                 started: Future[_Started]) -> None:
    served = await bind(build())
    stop = asyncio.Event()
    started.set_result((served, asyncio.get_running_loop(), stop))
    try:
        await stop.wait()
    finally:
        await served.runner.cleanup()
