"""Keeps the gateway's TUN device: one deleted under the running gateway (``ip link delete``)
is created again in place, with its addresses and routes, so the sessions carry on.

The device reports its own loss (``Tun.on_lost``: the first read or write that fails because
it is gone). ``keep_tun`` then logs one line, recreates the device under the same name,
puts the network configuration back (off the loop: it runs ``ip`` and ``nft``) and logs one
line more. If that keeps failing for ``RESTORE_FOR`` seconds (say the name was taken by
another device) it raises `TunLostError`, so `serve` exits non-zero and the service manager
starts it afresh instead of the gateway black-holing every packet.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from sslvpn.runtime.tun import Tun

log = logging.getLogger(__name__)

RESTORE_FOR = 20.0  # seconds of failed attempts to recreate the device before giving up
RETRY_FIRST = 0.2  # seconds before the second attempt; doubled each time
RETRY_MAX = 2.0


class TunLostError(RuntimeError):
    """The TUN device vanished and could not be recreated."""


async def keep_tun(tun: Tun, reconfigure: Callable[[], None] | None,
                   sessions: Callable[[], int]) -> None:
    """Recreate ``tun`` whenever it is lost, then run ``reconfigure`` (addresses, routes,
    SNAT; None when the operator owns them) in a thread. Runs until cancelled."""
    lost = asyncio.Event()
    errors: list[OSError] = []

    def on_lost(error: OSError) -> None:
        errors.append(error)
        lost.set()

    tun.on_lost = on_lost
    while True:
        await lost.wait()
        lost.clear()
        error = errors[-1]
        errors.clear()
        await _restore(tun, reconfigure, sessions, error)


async def _restore(tun: Tun, reconfigure: Callable[[], None] | None,
                   sessions: Callable[[], int], error: OSError) -> None:
    began = time.monotonic()
    log.error("TUN device %s vanished (%s): packets of %d session(s) are dropped until it "
              "is recreated", tun.name, error.strerror or error, sessions())
    delay = RETRY_FIRST
    while True:
        try:
            tun.reopen()
            if reconfigure is not None:
                await asyncio.to_thread(reconfigure)
        except Exception as exc:  # pytun's own error, NetconfError, OSError
            if time.monotonic() - began >= RESTORE_FOR:
                raise TunLostError(f"TUN device {tun.name} vanished and could not be recreated "
                                   f"within {RESTORE_FOR:g} s: {exc}") from None
            log.warning("recreating TUN device %s failed (%s); trying again in %.1f s",
                        tun.name, exc, delay)
            await asyncio.sleep(delay)
            delay = min(RETRY_MAX, delay * 2)
            continue
        if not tun.lost:  # else it went again meanwhile: on_lost has said so
            log.warning("TUN device %s recreated%s after %.1f s; %d session(s) carry on",
                        tun.name, " with its addresses and routes" if reconfigure else "",
                        time.monotonic() - began, sessions())
        return
