"""Talking to systemd as a ``Type=notify`` service: ready, alive, stopping.

``notify_systemd`` runs as one of the gateway's long-running tasks, so it starts once clients
can connect: it sends ``READY=1`` (with a ``STATUS=`` line), then ``WATCHDOG=1`` every half
of the interval systemd asked for (``WATCHDOG_USEC``, for this process per ``WATCHDOG_PID``)
from the loop that carries packets, so a wedged loop stops the pings and systemd restarts the
service; when the gateway stops it sends ``STOPPING=1``. The messages go through libsystemd's
``sd_notify`` (cysystemd); without ``NOTIFY_SOCKET`` (not under systemd) nothing is sent.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping

from cysystemd.daemon import Notification, notify

log = logging.getLogger(__name__)


def watchdog_interval(environ: Mapping[str, str] = os.environ) -> float | None:
    """Seconds between two pings: half of what systemd asked for; None when it asked none
    (or asked another process, per ``WATCHDOG_PID``)."""
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2_000_000


async def notify_systemd(status: str) -> None:
    """READY=1 now, WATCHDOG=1 while the loop turns, STOPPING=1 when cancelled."""
    if not os.environ.get("NOTIFY_SOCKET"):
        await asyncio.Event().wait()  # not under systemd: nothing to say, ever
        return
    _send(Notification.READY)
    _send(Notification.STATUS, status)
    interval = watchdog_interval()
    try:
        if interval is None:
            await asyncio.Event().wait()
        else:
            while True:
                await asyncio.sleep(interval)
                _send(Notification.WATCHDOG)
    finally:
        _send(Notification.STOPPING)


def _send(notification: Notification, value: str | None = None) -> None:
    try:
        if value is None:
            notify(notification, return_exceptions=False)
        else:
            notify(notification, value, return_exceptions=False)
    except OSError as exc:  # the manager went away: the gateway serves on regardless
        log.warning("cannot notify systemd (%s): %s", notification.name, exc)
