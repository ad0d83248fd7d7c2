"""What the gateway asks the store (may this certificate connect, the leases) and what it tells
it (accounting).

``Policy`` is the narrow interface the gateway depends on (a fake in tests); ``StorePolicy``
answers it from the sslvpn store, so a revocation or a disabled user written by any process
(CLI, portal) is seen by the gateway's next check or sweep. The write-behind queue that
hands ``record`` its batches is ``sslvpn.runtime.records.RecordWriter``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from sqlalchemy import Engine
from sqlmodel import Session

from sslvpn.store import StoreError, db, gateway_queries, queries
from sslvpn.store.gateway_queries import LeaseStored as LeaseStored
from sslvpn.store.gateway_queries import Record as Record
from sslvpn.store.gateway_queries import SessionCounted as SessionCounted
from sslvpn.store.gateway_queries import SessionEnded as SessionEnded
from sslvpn.store.gateway_queries import SessionOpened as SessionOpened
from sslvpn.store.gateway_queries import Standing
from sslvpn.store.models import utcnow

log = logging.getLogger(__name__)

T = TypeVar("T")
WRITE_ATTEMPTS = 3


@dataclass(frozen=True)
class Authorization:
    """Who a certificate belongs to and, when it may not connect, why (``refusal``)."""

    user: str
    device: str
    refusal: str | None = None


class Policy(Protocol):
    """The gateway's questions to the store and its accounting (sync, short; ``record`` runs
    in a worker thread)."""

    def authorize(self, serial: str) -> Authorization: ...

    def unauthorized(self, serials: Collection[str]) -> dict[str, str]: ...

    def stored_leases(self) -> dict[str, str]: ...

    def record(self, records: Sequence[Record]) -> None: ...


def _refusal(standing: Standing | None) -> str | None:
    if standing is None:
        return "certificate unknown"
    if standing.kind != "client":
        return "not a client certificate"
    if standing.status != "valid":
        return f"certificate {standing.status}"
    if standing.user_name is None:
        return "certificate has no user"
    if standing.user_disabled:
        return "user disabled"
    return None


class StorePolicy:
    """``Policy`` over the sslvpn store for the gateway named ``gateway_name``."""

    def __init__(self, engine: Engine, *, gateway_name: str = "default") -> None:
        self._engine = engine
        self._gateway_name = gateway_name

    def authorize(self, serial: str) -> Authorization:
        """One indexed read: the certificate joined with its owner."""
        with db.session(self._engine) as s:
            standing = gateway_queries.standings(s, serials=[serial]).get(serial.lower())
        return Authorization(
            user=(standing.user_name or "") if standing else "",
            device=standing.device if standing else "",
            refusal=_refusal(standing),
        )

    def unauthorized(self, serials: Collection[str]) -> dict[str, str]:
        if not serials:
            return {}
        with db.session(self._engine) as s:
            refused = gateway_queries.not_in_good_standing(s, serials=serials)
        result = {}
        for serial in serials:
            lowered = serial.lower()
            if lowered in refused:
                result[serial] = _refusal(refused[lowered]) or "certificate unknown"
        return result

    def stored_leases(self) -> dict[str, str]:
        with db.session(self._engine) as s:
            return gateway_queries.lease_map(s)

    def record(self, records: Sequence[Record]) -> None:
        """Write a batch of accounting records in one transaction (one fsync)."""
        if records:
            self._write(lambda s: gateway_queries.write_records(
                s, records=records, gateway_name=self._gateway_name, now=utcnow()
            ))

    def close_stale_records(self) -> int:
        """Close records a crashed run of this gateway left open."""
        return self._write(lambda s: queries.close_stale_session_records(
            s, gateway_name=self._gateway_name, at=utcnow()
        ))

    def _write(self, work: Callable[[Session], T]) -> T:
        """One write transaction (the store's writer lock), retried when SQLite still says
        "locked" (another writer held the lock for longer than the busy timeout)."""
        for _ in range(WRITE_ATTEMPTS - 1):
            try:
                with db.session(self._engine, write=True) as s:
                    return work(s)
            except StoreError as exc:
                if "locked" not in str(exc):
                    raise
        with db.session(self._engine, write=True) as s:
            return work(s)
