"""Which node of a fleet carries each IPsec tunnel: a PostgreSQL advisory-lock lease.

A tunnel's lease is the session-level advisory lock ``(LEASE_CLASS, tunnel id)`` held on one
dedicated connection of its owner, so it ends with that connection: a killed owner's socket
is closed by its kernel and the server frees the lock at once, and a vanished host's
connection is found dead by TCP keepalives and ``tcp_user_timeout`` on both ends (seconds,
not the kernel's default two hours). No clock is compared, so clock skew cannot give a
tunnel two owners. Standby nodes try ``pg_try_advisory_lock`` every round and never wait.
A hung owner (a stopped process, a stuck loop) keeps its connection open, so a standby that
sees the owner's heartbeat stale (by the database's clock) ends that node's lease connection
with ``pg_terminate_backend`` and takes the lease on the next try.

`TunnelLeases.sync` blocks on the network: the IPsec service gets its leases from
`AsyncStore.leases` and calls them only through a companion `AsyncStore` (a store thread
of their own, bounded in time), never on the packet loop. When the
connection fails, every lease is taken for lost: the owner stops its tunnels, since another
node may hold them a moment later.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection

import psycopg
from psycopg.conninfo import make_conninfo
from psycopg.rows import TupleRow
from sqlalchemy import Engine

from sslvpn.store import StoreUnavailable

log = logging.getLogger(__name__)

LEASE_CLASS = 0x1B5EC  # first key of every tunnel lease; the second is the tunnel's id
# libpq (client side) and server-side settings that bound how long a dead peer holds a lease
KEEPALIVE = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2,
             "keepalives_count": 3, "tcp_user_timeout": 10000, "connect_timeout": 5}
APPLICATION_PREFIX = "sslvpn-ipsec "  # + node name: how a node's lease connection is found
FENCE = """
WITH holders AS MATERIALIZED (
  SELECT DISTINCT a.pid, a.application_name FROM pg_stat_activity a
  JOIN pg_locks l ON l.pid = a.pid
  WHERE a.application_name = ANY(%s) AND l.locktype = 'advisory' AND l.granted
    AND l.objsubid = 2 AND l.classid::bigint = %s AND l.objid::bigint = ANY(%s))
SELECT application_name FROM holders WHERE pg_terminate_backend(pid)
"""  # materialised first: the planner may not run the termination before the filters
SERVER_OPTIONS = ("-c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 "
                  "-c tcp_keepalives_count=3 -c tcp_user_timeout=10000")


class TunnelLeases:
    """The leases one node holds, on its own connection (used by one thread at a time)."""

    def __init__(self, engine: Engine, node: str) -> None:
        if engine.url.get_backend_name() != "postgresql":
            raise ValueError("IPsec tunnels on fleet nodes need a PostgreSQL store "
                             "(SQLite has no advisory locks)")
        self._conninfo = make_conninfo(
            engine.url.set(drivername="postgresql").render_as_string(hide_password=False),
            application_name=f"{APPLICATION_PREFIX}{node}", options=SERVER_OPTIONS, **KEEPALIVE)
        self.node = node
        self._connection: psycopg.Connection[TupleRow] | None = None
        self._held: set[int] = set()
        self._lock = threading.Lock()

    def sync(self, wanted: set[int], fence: Collection[str] = ()) -> frozenset[int]:
        """Release the leases no longer wanted, try to take the missing ones; the held set.

        ``fence`` names nodes whose heartbeat is stale: a hung owner (a stopped process, a
        stuck loop) keeps its connection and its locks, so the lease connections of those
        nodes that hold a lease we want are ended first; their locks are free a moment later.
        Raises `StoreUnavailable` (after forgetting every lease) when the connection fails.
        """
        with self._lock:
            try:
                connection = self._connect()
                for tunnel_id in sorted(self._held - wanted):
                    connection.execute("SELECT pg_advisory_unlock(%s, %s)",
                                       (LEASE_CLASS, tunnel_id))
                    self._held.discard(tunnel_id)
                connection.execute("SELECT 1")  # the held ones still stand: it answers
                missing = sorted(wanted - self._held)
                if missing and fence:
                    self._fence(connection, fence, missing)
                for tunnel_id in missing:
                    row = connection.execute("SELECT pg_try_advisory_lock(%s, %s)",
                                             (LEASE_CLASS, tunnel_id)).fetchone()
                    if row is not None and row[0]:
                        self._held.add(tunnel_id)
            except psycopg.Error as exc:
                self._drop()
                raise StoreUnavailable(f"the IPsec lease connection failed: {exc}") from None
            return frozenset(self._held)

    @staticmethod
    def _fence(connection: psycopg.Connection[TupleRow], nodes: Collection[str],
               tunnel_ids: list[int]) -> None:
        names = [f"{APPLICATION_PREFIX}{node}" for node in nodes]
        ended = connection.execute(FENCE, (names, LEASE_CLASS, tunnel_ids)).fetchall()
        for (application,) in ended:
            log.warning("ended the lease connection of node %s: its heartbeat is stale",
                        application.removeprefix(APPLICATION_PREFIX))

    def close(self) -> None:
        """Release every lease now (closing the connection frees its locks)."""
        with self._lock:
            self._drop()

    def close_soon(self) -> None:
        """Release every lease now when no call is using the connection, else in a thread
        as soon as that call ends (one stuck in a hung store): never blocks the caller."""
        if self._lock.acquire(blocking=False):
            try:
                self._drop()
            finally:
                self._lock.release()
            return
        threading.Thread(target=self.close, daemon=True, name="sslvpn-lease-close").start()

    def _connect(self) -> psycopg.Connection[TupleRow]:
        if self._connection is None or self._connection.closed:
            self._held.clear()
            self._connection = psycopg.connect(self._conninfo, autocommit=True)
        return self._connection

    def _drop(self) -> None:
        self._held.clear()
        if self._connection is not None:
            try:
                self._connection.close()
            except psycopg.Error as exc:  # closing a broken connection: nothing to save
                log.debug("closing the IPsec lease connection: %s", exc)
            self._connection = None
