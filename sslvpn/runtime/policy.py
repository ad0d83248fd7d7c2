"""What the gateway asks the store: may this certificate connect, which address, accounting.

``Policy`` is the narrow interface the gateway depends on (a fake in tests); ``StorePolicy``
answers it from the sslvpn store, so a revocation or a disabled user written by any process
(CLI, portal) is seen by the gateway's next check or sweep.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import Engine
from sqlmodel import Session, select

from sslvpn.runtime.control import SessionInfo
from sslvpn.store.models import AddressLease, Certificate, User, VpnSessionRecord, utcnow


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
        with Session(self._engine) as s:
            cert = s.exec(select(Certificate).where(Certificate.serial == serial)).first()
            user = s.get(User, cert.user_id) if cert is not None and cert.user_id else None
            return Authorization(
                user=user.name if user else "",
                device=(cert.device or "") if cert else "",
                refusal=_refusal(cert, user),
            )

    def unauthorized(self, serials: Collection[str]) -> dict[str, str]:
        if not serials:
            return {}
        with Session(self._engine) as s:
            rows = s.exec(
                select(Certificate, User)
                .join(User, Certificate.user_id == User.id, isouter=True)  # type: ignore[arg-type]
                .where(Certificate.serial.in_(list(serials)))  # type: ignore[attr-defined]
            ).all()
            found = {cert.serial: _refusal(cert, user) for cert, user in rows}
        result = {serial: reason for serial, reason in found.items() if reason is not None}
        for serial in serials:
            if serial not in found:
                result[serial] = "certificate unknown"
        return result

    def lease(self, serial: str) -> str | None:
        with Session(self._engine) as s:
            row = s.get(AddressLease, serial)
            return row.address if row else None

    def leased_addresses(self) -> list[str]:
        with Session(self._engine) as s:
            return list(s.exec(select(AddressLease.address)).all())

    def store_lease(self, serial: str, address: str) -> None:
        """This certificate now holds ``address``; whoever held it before loses it."""
        with Session(self._engine) as s:
            for other in s.exec(select(AddressLease).where(AddressLease.address == address)):
                if other.certificate_serial != serial:
                    s.delete(other)
            s.flush()
            mine = s.get(AddressLease, serial)
            if mine is None:
                s.add(AddressLease(certificate_serial=serial, address=address))
            else:
                mine.address = address
                mine.updated_at = utcnow()
                s.add(mine)
            s.commit()

    def session_opened(self, info: SessionInfo) -> None:
        with Session(self._engine) as s:
            s.add(
                VpnSessionRecord(
                    session_id=info.session_id,
                    gateway_name=self._gateway_name,
                    user_name=info.user,
                    certificate_serial=info.certificate_serial,
                    real_address=info.real_address,
                    vpn_address=info.vpn_address,
                    protocol=info.protocol,
                    connected_at=info.connected_at,
                )
            )
            s.commit()

    def session_counters(self, infos: Collection[SessionInfo]) -> None:
        with Session(self._engine) as s:
            for info in infos:
                row = self._record(s, info.session_id)
                if row is not None:
                    row.bytes_in, row.bytes_out = info.bytes_in, info.bytes_out
                    s.add(row)
            s.commit()

    def session_closed(self, info: SessionInfo, reason: str) -> None:
        with Session(self._engine) as s:
            row = self._record(s, info.session_id)
            if row is not None:
                row.bytes_in, row.bytes_out = info.bytes_in, info.bytes_out
                row.disconnected_at = utcnow()
                row.disconnect_reason = reason[:200]
                s.add(row)
                s.commit()

    @staticmethod
    def _record(s: Session, session_id: str) -> VpnSessionRecord | None:
        return s.exec(
            select(VpnSessionRecord).where(VpnSessionRecord.session_id == session_id)
        ).first()
