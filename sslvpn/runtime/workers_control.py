"""What the supervisor of `serve --workers` does for all its workers, off their loops.

The workers carry packets; the node-wide periodic work runs in the supervisor, which carries
none: a store thread or a portal thread inside a worker would hold that worker's GIL (a
thread running Python keeps a packet's callback waiting up to the 5 ms switch interval, and
one revocation sweep over 10,000 sessions costs ~40 ms of Python). So the supervisor runs:

- ``NodeSweep``: the node's revocation sweep in one query over its open session records
  (certificates revoked, superseded or unknown, users disabled, ends asked through the store,
  sessions a survivor ended as down, and a device's older session when it reconnected to
  another worker, as one gateway replaces it), each found session ended on the worker
  holding it through that worker's control socket; the workers themselves do not sweep;
- ``WorkersControl``: one ``GatewayControl`` over every worker's control socket, which the
  portal, the metrics endpoint and the alarms in the supervisor use, so they list, count and
  kick the sessions of all workers and add up their counters.

A worker being restarted does not answer: it is skipped (its clients are reconnecting).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from sslvpn.runtime.control import (
    GatewayCounters,
    ListenerStatus,
    SessionInfo,
    TrafficSample,
    TunnelStatus,
    combined,
    summed,
)
from sslvpn.runtime.control_server import ControlClient, ControlError
from sslvpn.runtime.gateway import REPLACED
from sslvpn.runtime.policy import refusal_of
from sslvpn.store import StoreError, fleet_queries, gateway_queries
from sslvpn.store.async_store import AsyncStore
from sslvpn.store.models import utcnow

if TYPE_CHECKING:  # the type of what a store thread hands the work, never opened here
    from sqlmodel import Session

log = logging.getLogger(__name__)

T = TypeVar("T")
CALL_TIMEOUT = 5.0  # seconds one worker has to answer (listing 50,000 sessions included)
SWEEP_INTERVAL = 2.0  # seconds between two sweeps when nothing wakes one earlier
# how far past the last sweep a "node down" end is looked for (SQLite's clock has seconds)
DOWN_MARGIN = timedelta(seconds=2)


class WorkersControl:
    """``GatewayControl`` (and kick by user) over the control sockets of the workers; the
    first worker also answers for the IPsec tunnels, which only it runs."""

    def __init__(self, sockets: Sequence[Path], *, timeout: float = CALL_TIMEOUT) -> None:
        self.workers = [ControlClient(path, timeout=timeout) for path in sockets]

    def _each(self, call: Callable[[ControlClient], T]) -> list[T]:
        """The answers of the workers that answer; ControlError when none does."""
        answers: list[T] = []
        failure: ControlError | None = None
        for worker in self.workers:
            try:
                answers.append(call(worker))
            except ControlError as exc:
                failure = exc
        if not answers and failure is not None:
            raise failure
        return answers

    def list_sessions(self) -> list[SessionInfo]:
        return [s for found in self._each(lambda w: w.list_sessions()) for s in found]

    def kick(self, session_id: str, reason: str = "kicked by admin") -> bool:
        for worker in self.workers:
            with contextlib.suppress(ControlError):
                if worker.kick(session_id, reason):
                    return True
        return False

    def kick_user(self, user: str, reason: str = "kicked by admin") -> int:
        return sum(self._each(lambda w: w.kick_user(user, reason)))

    def kick_certificate(self, serial: str, reason: str = "certificate revoked") -> int:
        return sum(self._each(lambda w: w.kick_certificate(serial, reason)))

    def traffic(self) -> TrafficSample:
        samples = self._each(lambda w: w.traffic())
        return TrafficSample(at=datetime.now(UTC), bytes_in=sum(s.bytes_in for s in samples),
                             bytes_out=sum(s.bytes_out for s in samples))

    def listener_status(self) -> ListenerStatus:
        return combined(self._each(lambda w: w.listener_status()))

    def counters(self) -> GatewayCounters:
        """Every answering worker's counters added up (a restarted worker's start again
        from 0, as a restarted single gateway's do)."""
        return summed(self._each(lambda w: w.counters()))

    def all_answer(self) -> bool:
        """Every worker answers on its control socket (none is being restarted)."""
        try:
            return len(self._each(lambda w: w.listener_status())) == len(self.workers)
        except ControlError:
            return False

    def access_hits(self) -> list[tuple[str, bool, int]]:
        """Every worker's hits, added up per rule and action."""
        total: collections.Counter[tuple[str, bool]] = collections.Counter()
        for hits in self._each(lambda w: w.access_hits()):
            for rule, allow, packets in hits:
                total[(rule, allow)] += packets
        return [(rule, allow, packets) for (rule, allow), packets in total.items()]

    def tunnel_status(self) -> list[TunnelStatus]:
        return self.workers[0].tunnel_status()

    def tunnel_action(self, name: str, action: str) -> str:
        return self.workers[0].tunnel_action(name, action)


class NodeSweep:
    """The revocation sweep of one node for all its workers, every ``interval`` seconds or
    at once after ``wake()`` (the fleet's signal)."""

    def __init__(self, store: AsyncStore, control: WorkersControl, *,
                 gateway_name: str = "default", node: str | None = None,
                 interval: float = SWEEP_INTERVAL) -> None:
        self._store = store
        self._control = control
        self._gateway_name = gateway_name
        self._node = node
        self.interval = interval
        self._wake = asyncio.Event()
        self._since: datetime | None = None  # database time of the last sweep, less a margin
        self.ended = 0  # sessions ended by the sweeps so far

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Sweep until cancelled; a store that does not answer skips a round (the store
        facade logs the outage once)."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.sweep()
            except StoreError:
                pass
            except Exception:  # a bug: say so, keep sweeping
                log.exception("the node's revocation sweep failed")

    async def sweep(self) -> int:
        """One pass: end every session the store says must end; returns how many ended."""
        wanted = await self._store.read(self._wanted)
        ended = 0
        for session_id, reason in wanted.items():
            if await asyncio.to_thread(self._control.kick, session_id, reason):
                log.info("session %s ended: %s", session_id, reason)
                ended += 1
        self.ended += ended
        return ended

    def _wanted(self, s: Session) -> dict[str, str]:
        """Session id -> reason, in a store thread."""
        now = utcnow()
        refused = gateway_queries.refused_open_sessions(
            s, gateway_name=self._gateway_name, node=self._node, now=now)
        wanted = {session_id: refusal_of(standing, now) or "certificate unknown"
                  for session_id, standing in refused.items()}
        asked, database_now = fleet_queries.ends_wanted(s, node=self._node, since=self._since)
        self._since = database_now - DOWN_MARGIN
        replaced = dict.fromkeys(gateway_queries.replaced_open_sessions(
            s, gateway_name=self._gateway_name, node=self._node), REPLACED)
        return {**replaced, **asked, **wanted}


