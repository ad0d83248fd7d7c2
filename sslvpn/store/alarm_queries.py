"""Alarms in the store: their settings (rule parameters and channels, defaults here), which
alarms are raised, and the notifications owed (an outbox written in the same transaction as
the change, so a restart neither repeats nor loses one). Like `queries`, every function
takes the `Session` first and never commits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import func, update
from sqlmodel import Session, col, select

from sslvpn.store import NotFoundError, RejectedError
from sslvpn.store.models import (
    AlarmNotice,
    AlarmSetting,
    AlarmState,
    Certificate,
    User,
    VpnGateway,
    VpnTunnel,
    utcnow,
)
from sslvpn.store.queries import record_audit

# key -> (default, what it means); "" leaves a channel off. Rule keys are <rule>.<param>.
DEFAULTS: dict[str, tuple[str, str]] = {
    "evaluate.seconds": ("10", "seconds between two evaluations of the rules (at least 1)"),
    "ipsec-down.seconds": ("60", "raise when an IPsec tunnel is down longer than this"),
    "node-down.seconds": ("30", "raise when a node's heartbeat is older than this"),
    "certificate-expiry.days": ("30,7,1", "raise for the CA and the server certificate at "
                                "each of these days before expiry"),
    # the CRL is re-signed daily once half its validity (crl_days, 30) is left: 30 days
    # left is normal, 7 means re-signing has failed for a week
    "crl-expiry.days": ("7,1", "raise at each of these days before the CRL's nextUpdate"),
    "client-certificate-expiry.days": ("7", "raise this many days before a client "
                                       "certificate expires (to its owner too)"),
    "crl-resign.enabled": ("yes", "raise when the daily CRL re-signing fails"),
    "auth-failures.per-minute": ("30", "raise above this many failed handshakes a minute"),
    "bandwidth.percent": ("90", "raise above this share of a VPN gateway's bandwidth cap"),
    "bandwidth.minutes": ("5", "... held this many minutes"),
    "webhook.url": ("", "POST each alarm here as JSON (empty: off)"),
    "webhook.secret": ("", "HMAC-SHA256 key; the signature is in X-Sslvpn-Signature"),
    "smtp.host": ("", "mail server (empty: no e-mail)"),
    "smtp.port": ("587", "mail server port (STARTTLS)"),
    "smtp.username": ("", "login at the mail server (empty: none)"),
    "smtp.password": ("", "password at the mail server"),
    "smtp.cafile": ("", "CA file to verify the mail server by (empty: the system's)"),
    "smtp.from": ("sslvpn@localhost", "sender address"),
    "smtp.to": ("", "comma-separated admin addresses (besides admins with an e-mail)"),
}
RULES = ("ipsec-down", "node-down", "certificate-expiry", "client-certificate-expiry",
         "crl-resign", "auth-failures", "bandwidth")
SECRET_KEYS = frozenset({"webhook.secret", "smtp.password"})


@dataclass
class Observation:
    """What one evaluation saw: ``bad`` alarms (key -> (rule, subject, message, extra
    owner e-mails)), ``good`` keys, ``held`` keys left as they are (an earlier stage of an
    expiry: raised if it was, never raised late), and key prefixes it saw in full (an
    active alarm there that is neither bad nor held is cleared)."""

    bad: dict[str, tuple[str, str, str, list[str]]] = field(default_factory=dict)
    good: set[str] = field(default_factory=set)
    held: set[str] = field(default_factory=set)
    scopes: tuple[str, ...] = ()


def alarm_settings(s: Session) -> dict[str, str]:
    """Every setting: the stored value, else the default."""
    stored = {row.key: row.value for row in s.exec(select(AlarmSetting)).all()}
    return {key: stored.get(key, default) for key, (default, _) in DEFAULTS.items()}


def set_alarm_setting(s: Session, key: str, value: str, *, actor: str,
                      source_address: str | None = None) -> None:
    """Store one setting (audited, a secret's value never in the audit)."""
    if key not in DEFAULTS:
        raise NotFoundError(f"no alarm setting {key!r}")
    check_value(key, value)
    row = s.get(AlarmSetting, key)
    if row is None:
        s.add(AlarmSetting(key=key, value=value))
    else:
        row.value = value
    shown = "(secret)" if key in SECRET_KEYS else value
    record_audit(s, actor=actor, action="alarm.set", target=key,
                 source_address=source_address, detail=shown)


MIN_EVALUATE_SECONDS = 1.0  # a round reads the store: never a busy loop
_NUMBERS = (".seconds", ".per-minute", ".percent", ".minutes")


def check_value(key: str, value: str) -> None:
    """Refuse a value the rules could not use (it would silently fall back to the default)."""
    if key.endswith(_NUMBERS):
        try:
            ok = 0 <= float(value) < 1e9
        except ValueError:
            ok = False
        if not ok:
            raise RejectedError(f"{key} must be a number, not {value!r}")
        if key == "evaluate.seconds" and float(value) < MIN_EVALUATE_SECONDS:
            raise RejectedError(f"evaluate.seconds must be at least {MIN_EVALUATE_SECONDS:g}")
    elif key.endswith(".days") and not all(
            part.strip().isdigit() and 0 < int(part) < 10000 for part in value.split(",")):
        raise RejectedError(f"{key} must be days like 30,7,1, not {value!r}")
    elif key.endswith(".enabled") and value not in ("yes", "no"):
        raise RejectedError(f"{key} must be yes or no")
    elif key == "smtp.port" and not (value.isdigit() and 0 < int(value) < 65536):
        raise RejectedError(f"smtp.port must be a port number, not {value!r}")
    elif key == "webhook.url" and value and not value.startswith(("http://", "https://")):
        raise RejectedError("webhook.url must be an http:// or https:// URL (or empty: off)")


def channels(settings: dict[str, str]) -> list[str]:
    """The channels configured: webhook, email."""
    return [name for name, key in (("webhook", "webhook.url"), ("email", "smtp.host"))
            if settings[key]]


def observe(s: Session, seen: Observation, *, now: datetime | None = None) -> list[AlarmState]:
    """Raise the newly bad alarms and clear the ones seen good again, each once: the state
    change, its audit entry and its notice are one transaction. Returns what changed."""
    now = now or utcnow()
    active = {row.key: row for row in s.exec(
        select(AlarmState).where(col(AlarmState.cleared_at).is_(None))).all()}
    pending = channels(alarm_settings(s))
    changed: list[AlarmState] = []
    for key, (rule, subject, message, owners) in seen.bad.items():
        if key in active:
            continue
        row = s.get(AlarmState, key)
        if row is None:
            row = AlarmState(key=key, rule=rule, subject=subject, message=message,
                             raised_at=now)
        row.message, row.raised_at, row.cleared_at = message, now, None
        s.add(row)
        _notify(s, row, "raised", now, owners, pending)
        changed.append(row)
    for key, row in active.items():
        in_scope = any(key.startswith(prefix) for prefix in seen.scopes)
        if key in seen.good or (in_scope and key not in seen.bad and key not in seen.held):
            row.cleared_at = now
            s.add(row)
            _notify(s, row, "cleared", now, [], pending)
            changed.append(row)
    s.flush()
    return changed


def _notify(s: Session, row: AlarmState, event: str, now: datetime, owners: list[str],
            pending: list[str]) -> None:
    record_audit(s, actor="alarm", action=f"alarm.{event}", target=row.key,
                 detail=row.message, at=now)
    body: dict[str, object] = {"event": event, "alarm": row.key, "rule": row.rule,
                               "subject": row.subject, "message": row.message,
                               "raised_at": row.raised_at.isoformat(),
                               "at": now.isoformat()}
    s.add(AlarmNotice(alarm_key=row.key, event=event, at=now, body=body, recipients=owners,
                      pending=list(pending), next_try_at=now))


def due_notices(s: Session, *, now: datetime | None = None, limit: int = 50) -> list[AlarmNotice]:
    """Notices with channels still to reach whose next try is due, oldest first."""
    rows = s.exec(select(AlarmNotice).where(col(AlarmNotice.next_try_at) <= (now or utcnow()))
                  .order_by(col(AlarmNotice.id)).limit(limit * 4)).all()
    return [row for row in rows if row.pending][:limit]


def claim_notice(s: Session, notice_id: int, *, now: datetime, until: datetime) -> bool:
    """Take a due notice for one delivery round (its next try moved to ``until``); False
    when another process took it first: nodes of a fleet share the outbox, and each notice
    must go out once."""
    taken = s.connection().execute(
        update(AlarmNotice)
        .where(col(AlarmNotice.id) == notice_id, col(AlarmNotice.next_try_at) <= now)
        .values(next_try_at=until))
    return bool(taken.rowcount == 1)


def notice_tried(s: Session, notice_id: int, *, reached: list[str], backoff: timedelta,
                 give_up_after: int, now: datetime | None = None) -> AlarmNotice | None:
    """Record one round of delivery: ``reached`` channels are done; the rest are tried
    again after ``backoff``, or dropped after ``give_up_after`` rounds."""
    row = s.get(AlarmNotice, notice_id)
    if row is None:
        return None
    row.pending = [name for name in row.pending if name not in reached]
    row.attempts += 1
    if row.attempts >= give_up_after:
        row.pending = []
    row.next_try_at = (now or utcnow()) + backoff
    s.add(row)
    return row


def alarm_list(s: Session, *, limit: int = 100) -> list[AlarmState]:
    """Raised alarms first, then the most recently cleared ones."""
    active = s.exec(select(AlarmState).where(col(AlarmState.cleared_at).is_(None))
                    .order_by(col(AlarmState.raised_at).desc())).all()
    cleared = s.exec(select(AlarmState).where(col(AlarmState.cleared_at).is_not(None))
                     .order_by(col(AlarmState.cleared_at).desc()).limit(limit)).all()
    return [*active, *cleared]


def raised_by_rule(s: Session) -> dict[str, int]:
    """How many alarms of each rule are raised now."""
    rows = s.exec(select(AlarmState.rule, func.count()).where(
        col(AlarmState.cleared_at).is_(None)).group_by(col(AlarmState.rule))).all()
    return {rule: count for rule, count in rows}


def admin_emails(s: Session) -> list[str]:
    """E-mail addresses of enabled admins who have one."""
    return [user.email for user in s.exec(select(User).where(
        col(User.role) == "admin", col(User.disabled).is_(False))).all() if user.email]


@dataclass(frozen=True)
class ExpiringClient:
    serial: str
    owner: str | None
    owner_email: str | None
    not_after: datetime


def expiring_clients(s: Session, *, before: datetime) -> list[ExpiringClient]:
    """Valid client certificates that expire before ``before``, with their owners."""
    rows = s.exec(select(Certificate, User).join(User, isouter=True).where(
        col(Certificate.kind) == "client", col(Certificate.status) == "valid",
        col(Certificate.not_after) < before)).all()
    return [ExpiringClient(cert.serial, user.name if user else None,
                           user.email if user else None, cert.not_after)
            for cert, user in rows]


def tunnel_caps(s: Session) -> dict[str, tuple[str, int]]:
    """Each tunnel of a VPN gateway with a bandwidth cap: its gateway's name and cap."""
    rows = s.exec(select(VpnTunnel.name, VpnGateway.name, VpnGateway.bandwidth_bps)
                  .join(VpnGateway, col(VpnTunnel.gateway_id) == col(VpnGateway.id))
                  .where(col(VpnGateway.bandwidth_bps).is_not(None))).all()
    return {tunnel: (gateway, bps) for tunnel, gateway, bps in rows if bps}
