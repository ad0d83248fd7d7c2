"""Hearing the fleet's signal: a revocation, a disabled user or a kick committed by any
process (another node's portal, the CLI on another host) makes this node sweep at once.

On PostgreSQL one connection of its own, in autocommit (a listening connection must never sit
inside a transaction, or notifications wait for it to end), runs ``LISTEN`` on
`node_queries.FLEET_CHANNEL`; each notification calls ``on_signal`` (the gateway's
``wake_sweep``: the sweep itself reads the truth from the store, off the loop). The
connection is asynchronous (psycopg 3), so waiting costs the event loop nothing. When it
drops it is opened again with backoff, and ``on_signal`` runs after every (re)connection, as
a notification sent while nobody listened is lost; the periodic sweep stays the fallback, so
a missed signal only delays an end by one sweep interval. SQLite has one node and no
``NOTIFY``: nothing listens there.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from sslvpn.store.node_queries import FLEET_CHANNEL

if TYPE_CHECKING:  # where the store is; no engine is opened here
    from sqlalchemy.engine import URL

log = logging.getLogger(__name__)

RETRY_FIRST = 0.5  # seconds before the first reconnection; doubled each failure
RETRY_MAX = 10.0
# a dead server or path is noticed in ~11 s (idle 5 s, then 3 probes 2 s apart), a server
# that does not answer a connection attempt in 5 s is tried again
_KEEPALIVE = {"connect_timeout": 5, "keepalives": 1, "keepalives_idle": 5,
              "keepalives_interval": 2, "keepalives_count": 3}


def listen_conninfo(url: URL) -> str | None:
    """The libpq URI of a PostgreSQL store (None for SQLite, which has no NOTIFY)."""
    if url.get_backend_name() != "postgresql":
        return None
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


async def listen_for_signals(conninfo: str, on_signal: Callable[[], None]) -> None:
    """Call ``on_signal`` for every fleet signal (and after each connection) until
    cancelled; connection failures are logged once per outage and retried. psycopg is
    imported here, by a process on PostgreSQL only (10 MiB and 0.9 s at every start)."""
    import psycopg
    from psycopg.conninfo import make_conninfo

    delay = RETRY_FIRST
    failing = False
    while True:
        try:
            connection = await psycopg.AsyncConnection.connect(
                make_conninfo(conninfo, **_KEEPALIVE), autocommit=True)
            async with connection:
                await connection.execute(f"LISTEN {FLEET_CHANNEL}")
                if failing:
                    log.warning("listening for the fleet's signals again")
                failing, delay = False, RETRY_FIRST
                on_signal()  # whatever was signalled while nobody listened
                async for _ in connection.notifies():
                    on_signal()
        except (psycopg.Error, OSError) as exc:
            if not failing:
                reason = (str(exc).strip() or type(exc).__name__).splitlines()[0]
                log.warning("not listening for the fleet's signals (%s); revocations and "
                            "kicks are seen at the next sweep until it is back", reason)
            failing = True
        await asyncio.sleep(delay)
        delay = min(RETRY_MAX, delay * 2)
