"""Named queries: every read and write the rest of sslvpn makes to the store.

All functions take the `Session` first and keyword-only arguments after it. They flush
but never commit: the caller's `sslvpn.store.db.session` block is the transaction.
A failed insert rolls back only its own savepoint, so no half-written rows remain.
Unknown rows raise `NotFoundError`, duplicates `DuplicateError`, forbidden state changes
`ConflictError`. Token queries live in `tokens` and are re-exported here, so callers
import one module. IPsec tunnel queries live with the IPsec code, not here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from ipaddress import IPv4Network, ip_address

from sqlalchemy import delete, event, func, or_, update
from sqlalchemy.orm import Session as OrmSession
from sqlalchemy.orm import SessionTransaction
from sqlmodel import Session, col, select

from sslvpn.eventlog import fields
from sslvpn.store import ConflictError, NotFoundError, StoreError, node_queries
from sslvpn.store.models import (
    AccessPolicyState,
    AddressLease,
    ApiToken,
    AuditEntry,
    Certificate,
    GatewaySettings,
    ImportToken,
    SignedCrl,
    User,
    VpnSessionRecord,
    utcnow,
)
from sslvpn.store.rows import assign, insert
from sslvpn.store.tokens import add_api_token as add_api_token
from sslvpn.store.tokens import add_import_token as add_import_token
from sslvpn.store.tokens import delete_api_token as delete_api_token
from sslvpn.store.tokens import get_api_token_by_hash as get_api_token_by_hash
from sslvpn.store.tokens import get_import_token_by_hash as get_import_token_by_hash
from sslvpn.store.tokens import list_api_tokens as list_api_tokens
from sslvpn.store.tokens import list_import_tokens as list_import_tokens
from sslvpn.store.tokens import mark_import_token_used as mark_import_token_used
from sslvpn.store.tokens import revoke_import_token as revoke_import_token
from sslvpn.store.tokens import (
    revoke_import_tokens_for_certificate as revoke_import_tokens_for_certificate,
)
from sslvpn.store.tokens import touch_api_token as touch_api_token

log = logging.getLogger(__name__)

# RFC 5280 section 5.3.1 CRLReason names (the spelling `cryptography` uses too).
REVOCATION_REASONS = frozenset(
    {
        "unspecified",
        "keyCompromise",
        "cACompromise",
        "affiliationChanged",
        "superseded",
        "cessationOfOperation",
        "certificateHold",
        "privilegeWithdrawn",
        "aACompromise",
    }
)
DEFAULT_LIST_LIMIT = 100

# Users ---------------------------------------------------------------------------------


def create_user(
    s: Session,
    *,
    name: str,
    role: str = "user",
    email: str | None = None,
    password_hash: str | None = None,
) -> User:
    return insert(
        s, User(name=name, role=role, email=email, password_hash=password_hash), f"user {name!r}"
    )


def get_user(s: Session, *, name: str) -> User:
    user = s.exec(select(User).where(User.name == name)).first()
    if user is None:
        raise NotFoundError(f"no user named {name!r}")
    return user


def get_user_by_id(s: Session, *, user_id: int) -> User:
    user = s.get(User, user_id)
    if user is None:
        raise NotFoundError(f"no user with id {user_id}")
    return user


def list_users(s: Session) -> list[User]:
    return list(s.exec(select(User).order_by(col(User.name))).all())


def set_user_disabled(
    s: Session, *, name: str, disabled: bool, now: datetime | None = None
) -> User:
    """Disabling stamps ``disabled_at`` (the retention clock; kept when already disabled)."""
    user = get_user(s, name=name)
    if disabled and not user.disabled:
        user.disabled_at = now or utcnow()
    elif not disabled:
        user.disabled_at = None
    user.disabled = disabled
    s.flush()
    if disabled:
        node_queries.signal_fleet(s, "user disabled")
    return user


def set_user_password_hash(
    s: Session, *, name: str, password_hash: str | None, one_time_until: datetime | None = None
) -> User:
    """A new password; ``one_time_until`` marks a generated one (changed at the first login,
    refused after that time), None the user's own."""
    user = get_user(s, name=name)
    user.password_hash = password_hash
    user.password_one_time_until = one_time_until
    s.flush()
    return user


def set_user_role(s: Session, *, name: str, role: str) -> User:
    user = get_user(s, name=name)
    assign(s, user, f"role {role!r}", {"role": role})
    return user


@dataclass(frozen=True)
class Limits:
    """What one user may hold: valid devices, and live VPN sessions (None: one per device,
    which a certificate's new session replacing its old one already keeps)."""

    devices: int
    sessions: int | None


def effective_limits(user: User, settings: GatewaySettings) -> Limits:
    """The user's own limits where set, else the gateway settings'."""
    devices = user.max_devices if user.max_devices is not None else settings.max_devices_per_user
    sessions = (user.max_sessions if user.max_sessions is not None
                else settings.max_sessions_per_user)
    return Limits(devices=devices, sessions=sessions or None)


def delete_user(s: Session, *, name: str) -> list[Certificate]:
    """Delete a user and their tokens; return their still-valid certificates to revoke.

    The certificates stay (unowned) so the CRL and audit trail keep them.
    """
    user = get_user(s, name=name)
    certificates = list_certificates(s, user_id=user.id)
    for certificate in certificates:
        certificate.user_id = None
    s.execute(delete(ImportToken).where(col(ImportToken.user_id) == user.id))
    s.execute(delete(ApiToken).where(col(ApiToken.user_id) == user.id))
    s.delete(user)
    s.flush()
    # their group memberships and access rules went with them (ON DELETE CASCADE): the
    # gateways reload, or a new user of the same name would inherit them until the next change
    state = s.exec(select(AccessPolicyState)).first()
    if state is not None:
        state.revision += 1
    node_queries.signal_fleet(s, "user deleted")
    return [c for c in certificates if c.status == "valid"]


# Certificates --------------------------------------------------------------------------


def add_certificate(
    s: Session,
    *,
    serial: str,
    subject_cn: str,
    kind: str,
    not_before: datetime,
    not_after: datetime,
    fingerprint_sha256: str,
    cert_pem: str,
    user_id: int | None = None,
    device: str | None = None,
    key_pem: str | None = None,
    tls_crypt_v2_key: str | None = None,
) -> Certificate:
    row = Certificate(
        serial=serial.lower(),
        subject_cn=subject_cn,
        kind=kind,
        not_before=not_before,
        not_after=not_after,
        fingerprint_sha256=fingerprint_sha256.lower(),
        cert_pem=cert_pem,
        user_id=user_id,
        device=device,
        key_pem=key_pem,
        tls_crypt_v2_key=tls_crypt_v2_key,
    )
    return insert(s, row, f"certificate {serial.lower()}")


def get_certificate(s: Session, *, serial: str) -> Certificate:
    row = s.exec(select(Certificate).where(Certificate.serial == serial.lower())).first()
    if row is None:
        raise NotFoundError(f"no certificate with serial {serial.lower()}")
    return row


def list_certificates(
    s: Session,
    *,
    user_id: int | None = None,
    kind: str | None = None,
    status: str | None = None,
    expiring_within: timedelta | None = None,
    now: datetime | None = None,
) -> list[Certificate]:
    """Certificates matching every filter given, oldest first.

    ``expiring_within`` keeps those not yet expired at ``now`` but expired by now + delta.
    """
    query = select(Certificate)
    if user_id is not None:
        query = query.where(Certificate.user_id == user_id)
    if kind is not None:
        query = query.where(Certificate.kind == kind)
    if status is not None:
        query = query.where(Certificate.status == status)
    if expiring_within is not None:
        start = now or utcnow()
        query = query.where(Certificate.not_after > start)
        query = query.where(Certificate.not_after <= start + expiring_within)
    return list(s.exec(query.order_by(col(Certificate.created_at), col(Certificate.id))).all())


def valid_certificate_counts(s: Session, *, user_ids: list[int] | None = None) -> dict[int, int]:
    """How many valid certificates each user (of ``user_ids``, else every user) holds, in one
    query (users with none are absent)."""
    query = (
        select(Certificate.user_id, func.count())
        .where(Certificate.status == "valid", col(Certificate.user_id).is_not(None))
        .group_by(col(Certificate.user_id))
    )
    if user_ids is not None:
        query = query.where(col(Certificate.user_id).in_(user_ids))
    return {user_id: count for user_id, count in s.exec(query) if user_id is not None}


def mark_revoked(s: Session, *, serial: str, reason: str, at: datetime) -> Certificate:
    """Revoke a certificate; its unused import links stop working with it."""
    if reason not in REVOCATION_REASONS:
        raise StoreError(f"unknown revocation reason {reason!r}")
    row = get_certificate(s, serial=serial)
    if row.status == "revoked":
        raise ConflictError(f"certificate {row.serial} is already revoked")
    row.status = "revoked"
    row.revoked_at = at
    row.revocation_reason = reason
    s.flush()
    revoke_import_tokens_for_certificate(s, serial=row.serial)
    node_queries.signal_fleet(s, "certificate revoked")
    return row


def mark_superseded(s: Session, *, serial: str, by_serial: str) -> Certificate:
    """Record that a renewal replaced this certificate (not revoked; old links die)."""
    row = get_certificate(s, serial=serial)
    get_certificate(s, serial=by_serial)
    if row.status != "valid":
        raise ConflictError(f"certificate {row.serial} is {row.status}, not valid")
    row.status = "superseded"
    row.superseded_by = by_serial.lower()
    s.flush()
    revoke_import_tokens_for_certificate(s, serial=row.serial)
    node_queries.signal_fleet(s, "certificate superseded")
    return row


def begin_overlap(s: Session, *, serial: str, by_serial: str, until: datetime) -> Certificate:
    """Record that a renewal replaces this client certificate, which stays valid until
    ``until`` or the renewal's first connection (`overlaps_due` then finds it); its
    import links die at once."""
    row = get_certificate(s, serial=serial)
    get_certificate(s, serial=by_serial)
    if row.status != "valid" or row.superseded_by is not None:
        raise ConflictError(f"certificate {row.serial} is {row.status}"
                            f"{', already renewed' if row.superseded_by else ''}")
    row.superseded_by = by_serial.lower()
    row.overlap_until = until
    s.flush()
    revoke_import_tokens_for_certificate(s, serial=row.serial)
    return row


def overlaps_due(s: Session, *, now: datetime) -> list[Certificate]:
    """Renewed certificates still valid whose overlap has ended: to revoke (superseded)."""
    query = select(Certificate).where(
        Certificate.status == "valid", col(Certificate.overlap_until) <= now
    )
    return list(s.exec(query.order_by(col(Certificate.overlap_until))).all())


def revoked_certificates(s: Session) -> list[Certificate]:
    """What the CRL lists, in revocation order."""
    query = select(Certificate).where(Certificate.status == "revoked")
    return list(s.exec(query.order_by(col(Certificate.revoked_at), col(Certificate.id))).all())


def get_signed_crl(s: Session) -> SignedCrl | None:
    """The newest CRL the CA signed, or None before the first one is stored."""
    return s.exec(select(SignedCrl).order_by(col(SignedCrl.number).desc())).first()


def save_signed_crl(
    s: Session, *, number: int, der: bytes, last_update: datetime, next_update: datetime
) -> SignedCrl:
    """Replace the stored CRL with a newer one; a number that does not grow is refused."""
    row = get_signed_crl(s)
    if row is None:
        new = SignedCrl(number=number, der=der, last_update=last_update, next_update=next_update)
        return insert(s, new, f"CRL {number}")
    if number <= row.number:
        raise ConflictError(f"CRL number {number} is not above the stored {row.number}")
    values = {"number": number, "der": der, "last_update": last_update,
              "next_update": next_update}
    assign(s, row, f"CRL {number}", values)
    return row


# Settings ------------------------------------------------------------------------------

def get_settings(s: Session, *, name: str = "default") -> GatewaySettings:
    row = s.exec(select(GatewaySettings).where(GatewaySettings.name == name)).first()
    if row is None:
        raise NotFoundError(f"no settings for gateway {name!r}")
    return row


def save_settings(
    s: Session, *, settings: GatewaySettings, now: datetime | None = None
) -> GatewaySettings:
    """Make the row named ``settings.name`` hold exactly these values; returns that row.

    Lists changed in place are saved too. ``settings`` may be the stored row itself or a
    fresh object whose values replace the stored ones.
    """
    values = {f: getattr(settings, f) for f in GatewaySettings.model_fields if f != "id"}
    values["updated_at"] = now or utcnow()
    what = f"settings for gateway {settings.name!r}"
    with s.no_autoflush:
        existing = s.exec(
            select(GatewaySettings).where(GatewaySettings.name == settings.name)
        ).first()
    if existing is None:
        settings.updated_at = values["updated_at"]
        return insert(s, settings, what)
    assign(s, existing, what, values)
    return existing


# Audit ---------------------------------------------------------------------------------


def record_audit(
    s: Session,
    *,
    actor: str,
    action: str,
    target: str | None = None,
    source_address: str | None = None,
    detail: str | None = None,
    at: datetime | None = None,
) -> AuditEntry:
    entry = AuditEntry(
        at=at or utcnow(),
        actor=actor,
        action=action,
        target=target,
        source_address=source_address,
        detail=detail,
    )
    row = insert(s, entry, "audit entry")
    s.info.setdefault(_AUDIT_TO_LOG, []).append(fields(
        "admin.action", actor=actor, action=action, target=target,
        source_address=source_address, detail=detail))
    return row


_AUDIT_TO_LOG = "sslvpn.audit_to_log"  # Session.info key: entries logged once committed


@event.listens_for(OrmSession, "after_commit")
def _log_audit(s: OrmSession) -> None:
    """Each audit entry is logged (event ``admin.action``) once its transaction committed,
    so the log never shows an action that was rolled back (a savepoint's commit is not)."""
    if s.in_nested_transaction():
        return
    for entry in s.info.pop(_AUDIT_TO_LOG, ()):
        log.info("audit: %s by %s on %s", entry["action"], entry["actor"], entry["target"],
                 extra=entry)


@event.listens_for(OrmSession, "after_transaction_end")
def _forget_audit(s: OrmSession, transaction: SessionTransaction) -> None:
    if transaction.parent is None:  # the whole transaction ended; committed ones were logged
        s.info.pop(_AUDIT_TO_LOG, None)


def list_audit(
    s: Session,
    *,
    actor: str | None = None,
    action: str | None = None,
    since: datetime | None = None,
    limit: int = DEFAULT_LIST_LIMIT,
) -> list[AuditEntry]:
    """Newest first."""
    query = select(AuditEntry)
    if actor is not None:
        query = query.where(AuditEntry.actor == actor)
    if action is not None:
        query = query.where(AuditEntry.action == action)
    if since is not None:
        query = query.where(AuditEntry.at >= since)
    query = query.order_by(col(AuditEntry.at).desc(), col(AuditEntry.id).desc()).limit(limit)
    return list(s.exec(query).all())


# Address leases ------------------------------------------------------------------------


def get_lease(s: Session, *, serial: str) -> str | None:
    """The address this certificate had last, if any."""
    lease = s.get(AddressLease, serial.lower())
    return None if lease is None else lease.address


def set_lease(s: Session, *, serial: str, address: str, now: datetime | None = None) -> None:
    """Give ``address`` to ``serial``, taking it from any other certificate that had it.

    The runtime's address pool decides who holds an address; the store only remembers.
    """
    serial = serial.lower()
    s.execute(
        delete(AddressLease).where(
            col(AddressLease.address) == address, col(AddressLease.certificate_serial) != serial
        )
    )
    lease = s.get(AddressLease, serial)
    if lease is None:
        lease = AddressLease(certificate_serial=serial, address=address, updated_at=now or utcnow())
        insert(s, lease, f"lease of {address}")
        return
    lease.address = address
    lease.updated_at = now or utcnow()
    s.flush()


def release_lease(s: Session, *, serial: str) -> None:
    s.execute(delete(AddressLease).where(col(AddressLease.certificate_serial) == serial.lower()))


def leased_addresses(s: Session) -> dict[str, str]:
    """Every remembered lease, as address -> certificate serial."""
    leases = s.exec(select(AddressLease)).all()
    return {lease.address: lease.certificate_serial for lease in leases}


# VPN session records -------------------------------------------------------------------


def open_session_record(
    s: Session,
    *,
    session_id: str,
    gateway_name: str,
    user_name: str,
    certificate_serial: str,
    real_address: str,
    vpn_address: str,
    protocol: str,
    connected_at: datetime,
    node: str | None = None,
) -> VpnSessionRecord:
    record = VpnSessionRecord(
        session_id=session_id,
        gateway_name=gateway_name,
        node=node,
        user_name=user_name,
        certificate_serial=certificate_serial.lower(),
        real_address=real_address,
        vpn_address=vpn_address,
        protocol=protocol,
        connected_at=connected_at,
    )
    return insert(s, record, f"session record {session_id}")


def _open_record(s: Session, session_id: str) -> VpnSessionRecord:
    query = (
        select(VpnSessionRecord)
        .where(VpnSessionRecord.session_id == session_id)
        .where(col(VpnSessionRecord.disconnected_at).is_(None))
        .order_by(col(VpnSessionRecord.id).desc())
    )
    record = s.exec(query).first()
    if record is None:
        raise NotFoundError(f"no open session record {session_id}")
    return record


def update_session_counters(
    s: Session, *, session_id: str, bytes_in: int, bytes_out: int
) -> VpnSessionRecord:
    """Store the session's running byte totals (not increments)."""
    record = _open_record(s, session_id)
    record.bytes_in = bytes_in
    record.bytes_out = bytes_out
    s.flush()
    return record


def close_session_record(
    s: Session,
    *,
    session_id: str,
    at: datetime,
    reason: str,
    bytes_in: int | None = None,
    bytes_out: int | None = None,
) -> VpnSessionRecord:
    record = _open_record(s, session_id)
    record.disconnected_at = at
    record.disconnect_reason = reason
    if bytes_in is not None:
        record.bytes_in = bytes_in
    if bytes_out is not None:
        record.bytes_out = bytes_out
    s.flush()
    return record


def close_stale_session_records(
    s: Session, *, gateway_name: str = "default", node: str | None = None, at: datetime,
    reason: str = "gateway restarted", within: IPv4Network | None = None,
) -> int:
    """Close what a crashed gateway left open: node ``node``'s records, or with no node those
    of the single implicit node of ``gateway_name``, only at addresses ``within`` that network
    when given (one worker process's slice); returns how many records were closed."""
    query = select(VpnSessionRecord).where(col(VpnSessionRecord.disconnected_at).is_(None))
    if node is None:
        query = query.where(VpnSessionRecord.gateway_name == gateway_name,
                            col(VpnSessionRecord.node).is_(None))
    else:
        query = query.where(VpnSessionRecord.node == node)
    stale = [record for record in s.exec(query).all()
             if within is None or ip_address(record.vpn_address) in within]
    for record in stale:
        record.disconnected_at = at
        record.disconnect_reason = reason
    s.flush()
    return len(stale)


def list_session_records(
    s: Session,
    *,
    user_name: str | None = None,
    certificate_serial: str | None = None,
    open_only: bool = False,
    limit: int = DEFAULT_LIST_LIMIT,
) -> list[VpnSessionRecord]:
    """Newest connection first."""
    query = select(VpnSessionRecord)
    if user_name is not None:
        query = query.where(VpnSessionRecord.user_name == user_name)
    if certificate_serial is not None:
        query = query.where(VpnSessionRecord.certificate_serial == certificate_serial.lower())
    if open_only:
        query = query.where(col(VpnSessionRecord.disconnected_at).is_(None))
    order = (col(VpnSessionRecord.connected_at).desc(), col(VpnSessionRecord.id).desc())
    return list(s.exec(query.order_by(*order).limit(limit)).all())


def accept_totp_step(s: Session, *, user_id: int, step: int) -> bool:
    """Take the user's TOTP code of ``step`` once: False when this step or a later one was
    taken already (a replay), decided in one conditional UPDATE so two portals (or a portal
    and a VPN gateway) cannot both win."""
    done = s.execute(
        update(User)
        .where(col(User.id) == user_id)
        .where(or_(col(User.totp_last_step).is_(None), col(User.totp_last_step) < step))
        .values(totp_last_step=step))
    return bool(done.rowcount)  # type: ignore[attr-defined]
