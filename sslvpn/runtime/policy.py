"""What the gateway asks the store: may this certificate connect, which address, accounting.

``Policy`` is the narrow interface the gateway depends on (a fake in tests); ``StorePolicy``
answers it from the sslvpn store, so a revocation or a disabled user written by any process
(CLI, portal) is seen by the gateway's next check or sweep.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Protocol, TypeVar

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from sslvpn.runtime.control import SessionInfo
from sslvpn.store import NotFoundError, StoreError, db, queries
from sslvpn.store.models import Certificate, User, utcnow

T = TypeVar("T")
WRITE_ATTEMPTS = 3


@dataclass(frozen=True)
class Authorization:
    """Who a certificate belongs to and, when it may not connect, why (``refusal``)."""

    user: str
    device: str
    refusal: str | None = None


class Policy(Protocol):
    """The gateway's questions to the store (sync: each is one short query)."""

    def authorize(self, serial: str) -> Authorization: ...

    def unauthorized(self, serials: Collection[str]) -> dict[str, str]: ...

    def lease(self, serial: str) -> str | None: ...

    def leased_addresses(self) -> list[str]: ...

    def store_lease(self, serial: str, address: str) -> None: ...

    def session_opened(self, info: SessionInfo) -> None: ...

    def session_counters(self, infos: Collection[SessionInfo]) -> None: ...

    def session_closed(self, info: SessionInfo, reason: str) -> None: ...


def _refusal(cert: Certificate | None, user: User | None) -> str | None:
    if cert is None:
        return "certificate unknown"
    if cert.kind != "client":
        return "not a client certificate"
    if cert.status != "valid":
        return f"certificate {cert.status}"
    if user is None:
        return "certificate has no user"
    if user.disabled:
        return "user disabled"
    return None


class StorePolicy:
    """``Policy`` over the sslvpn store for the gateway named ``gateway_name``."""

    def __init__(self, engine: Engine, *, gateway_name: str = "default") -> None:
        self._engine = engine
        self._gateway_name = gateway_name

    def authorize(self, serial: str) -> Authorization:
        with db.session(self._engine) as s:
            try:
                cert: Certificate | None = queries.get_certificate(s, serial=serial)
            except NotFoundError:
                cert = None
            user = s.get(User, cert.user_id) if cert is not None and cert.user_id else None
            return Authorization(
                user=user.name if user else "",
                device=(cert.device or "") if cert else "",
                refusal=_refusal(cert, user),
            )

    def unauthorized(self, serials: Collection[str]) -> dict[str, str]:
        if not serials:
            return {}
        with db.session(self._engine) as s:
            rows = s.exec(
                select(Certificate, User)
                .join(User, col(Certificate.user_id) == col(User.id), isouter=True)
                .where(col(Certificate.serial).in_(list(serials)))
            ).all()
            found = {cert.serial: _refusal(cert, user) for cert, user in rows}
        result = {serial: reason for serial, reason in found.items() if reason is not None}
        for serial in serials:
            if serial not in found:
                result[serial] = "certificate unknown"
        return result

    def lease(self, serial: str) -> str | None:
        with db.session(self._engine) as s:
            return queries.get_lease(s, serial=serial)

    def leased_addresses(self) -> list[str]:
        with db.session(self._engine) as s:
            return list(queries.leased_addresses(s))

    def _write(self, work: Callable[[Session], T]) -> T:
        """One write transaction, retried when SQLite refuses it as "locked".

        A deferred SQLite transaction that read first and then writes after another process
        committed fails at once with SQLITE_BUSY (the busy timeout does not apply), so the
        CLI or portal writing at the same moment must not lose the gateway's accounting.
        """
        for _ in range(WRITE_ATTEMPTS - 1):
            try:
                with db.session(self._engine) as s:
                    return work(s)
            except StoreError as exc:
                if "locked" not in str(exc):
                    raise
        with db.session(self._engine) as s:
            return work(s)

    def store_lease(self, serial: str, address: str) -> None:
        self._write(lambda s: queries.set_lease(s, serial=serial, address=address))

    def session_opened(self, info: SessionInfo) -> None:
        self._write(lambda s: queries.open_session_record(
            s,
            session_id=info.session_id,
            gateway_name=self._gateway_name,
            user_name=info.user,
            certificate_serial=info.certificate_serial,
            real_address=info.real_address,
            vpn_address=info.vpn_address,
            protocol=info.protocol,
            connected_at=info.connected_at,
        ))

    def session_counters(self, infos: Collection[SessionInfo]) -> None:
        def update(s: Session) -> None:
            for info in infos:
                with contextlib.suppress(NotFoundError):
                    queries.update_session_counters(
                        s, session_id=info.session_id, bytes_in=info.bytes_in,
                        bytes_out=info.bytes_out,
                    )

        self._write(update)

    def session_closed(self, info: SessionInfo, reason: str) -> None:
        def close(s: Session) -> None:
            with contextlib.suppress(NotFoundError):
                queries.close_session_record(
                    s, session_id=info.session_id, at=utcnow(), reason=reason[:200],
                    bytes_in=info.bytes_in, bytes_out=info.bytes_out,
                )

        self._write(close)

    def close_stale_records(self) -> int:
        """Close records a crashed run of this gateway left open."""
        return self._write(lambda s: queries.close_stale_session_records(
            s, gateway_name=self._gateway_name, at=utcnow()
        ))
