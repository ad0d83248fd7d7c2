"""Portal two-factor sign-in: TOTP codes (RFC 6238, through pyotp) and recovery codes.

The secret is kept in the user's row (never in a log, an audit detail or a ``repr``); a
code is accepted for the current 30-second step or one step either side (clock drift), and
only for a step later than the last one accepted, so an observed code cannot be replayed.
Recovery codes are shown once and stored as argon2 hashes (the portal password hasher);
each works once. Shared by the portal (enrolment, sign-in, admin reset) and the CLI.
"""

from __future__ import annotations

import secrets

import pyotp
from sqlalchemy import Engine
from sqlmodel import Session

from client_profiles.passwords import hash_password, verify_password
from sslvpn.credentials import DIGITS
from sslvpn.credentials import STEP_SECONDS as STEP_SECONDS
from sslvpn.credentials import code_at as code_at
from sslvpn.credentials import matching_step as matching_step
from sslvpn.store import NotFoundError, portal_logins, queries
from sslvpn.store.db import session
from sslvpn.store.models import User

ISSUER = "sslvpn"
RECOVERY_CODES = 10
_RECOVERY_BYTES = 6  # 48 bits each, written as three groups of four hex digits


def new_secret() -> str:
    """A random base32 secret (160 bits, RFC 4226's recommended length)."""
    return pyotp.random_base32(32)


def provisioning_uri(secret: str, account: str, issuer: str = ISSUER) -> str:
    """The ``otpauth://totp/...`` URI an authenticator app scans from a QR code."""
    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS).provisioning_uri(
        name=account, issuer_name=issuer)


def new_recovery_codes() -> list[str]:
    """Codes to show the user once, e.g. ``3f9a-04c2-be71``."""
    codes = []
    for _ in range(RECOVERY_CODES):
        raw = secrets.token_hex(_RECOVERY_BYTES)
        codes.append("-".join(raw[i:i + 4] for i in range(0, len(raw), 4)))
    return codes


def _normalised(code: str) -> str | None:
    """A recovery code as hashed (hex digits only), None when it cannot be one."""
    plain = "".join(code.split()).replace("-", "").lower()
    if len(plain) != 2 * _RECOVERY_BYTES or any(c not in "0123456789abcdef" for c in plain):
        return None
    return plain


def hash_recovery_codes(codes: list[str]) -> list[str]:
    """The hashes to store (slow: run it off the event loop)."""
    return [hash_password(_normalised(code) or "") for code in codes]


def matching_recovery_hash(hashes: list[str], code: str) -> str | None:
    """The stored hash ``code`` matches, if any (slow: run it off the event loop). Input
    that is not shaped like a recovery code costs nothing."""
    plain = _normalised(code)
    if plain is None:
        return None
    return next((h for h in hashes if verify_password(h, plain)), None)


# Store work (each takes the open session, as `queries` does) -----------------------------


def confirm_enrolment(s: Session, *, user_id: int, secret: str, step: int,
                      recovery_hashes: list[str]) -> bool:
    """Make the confirmed secret the user's; False when they enrolled meanwhile."""
    user = s.get(User, user_id, with_for_update=True)
    if user is None or user.totp_secret is not None:
        return False
    user.totp_secret = secret
    user.totp_last_step = step  # the confirming code cannot sign in afterwards
    user.recovery_code_hashes = recovery_hashes
    return True


def use_recovery_code(s: Session, *, user_id: int, code_hash: str) -> bool:
    """Strike a recovery code out; False when it was used already."""
    user = s.get(User, user_id, with_for_update=True)
    if user is None or code_hash not in user.recovery_code_hashes:
        return False
    user.recovery_code_hashes = [h for h in user.recovery_code_hashes if h != code_hash]
    return True


def replace_recovery_codes(s: Session, *, user_id: int, hashes: list[str]) -> bool:
    """The user's new recovery codes (the old ones stop working); False when they are no
    longer enrolled."""
    user = s.get(User, user_id, with_for_update=True)
    if user is None or user.totp_secret is None:
        return False
    user.recovery_code_hashes = hashes
    return True


def required_of(s: Session, *, user: User, gateway: str) -> bool:
    """Whether ``user`` must sign in with a code: required of them, or of everyone."""
    if user.two_factor_required:
        return True
    try:
        return queries.get_settings(s, name=gateway).require_two_factor
    except NotFoundError:
        return False


def reset(s: Session, *, name: str) -> User:
    """Forget the user's enrolment: they enrol again (at their next sign-in if required)."""
    user = queries.get_user(s, name=name)
    user.totp_secret = None
    user.totp_last_step = None
    user.recovery_code_hashes = []
    s.flush()
    return user


def set_required(s: Session, *, name: str, required: bool) -> User:
    """Require it (or not) of one user; one who has not enrolled is logged out of the
    portal everywhere, so the next sign-in takes them to enrolment."""
    user = queries.get_user(s, name=name)
    user.two_factor_required = required
    if required and user.totp_secret is None and user.id is not None:
        portal_logins.end_user_logins(s, user_id=user.id)
    s.flush()
    return user


def require_of_everyone(s: Session, *, gateway: str, required: bool, keep: int | None) -> None:
    """The gateway setting; when it turns on, every user not enrolled (but ``keep``, the
    admin making the change) is logged out of the portal everywhere, as `set_required`."""
    settings = queries.get_settings(s, name=gateway)
    settings.require_two_factor = required
    queries.save_settings(s, settings=settings)
    if required:
        for user in queries.list_users(s):
            if user.totp_secret is None and user.id is not None and user.id != keep:
                portal_logins.end_user_logins(s, user_id=user.id)


def require_everyone_account(engine: Engine, *, gateway: str, required: bool, actor: str,
                             source_address: str | None = None) -> None:
    """`require_of_everyone` with its audit entry, in one transaction (CLI)."""
    with session(engine, write=True) as s:
        require_of_everyone(s, gateway=gateway, required=required, keep=None)
        queries.record_audit(s, actor=actor, action="settings.update", target=gateway,
                             source_address=source_address,
                             detail=f"require_two_factor={required}")


def require_on_vpn(engine: Engine, *, gateway: str, required: bool, actor: str,
                   source_address: str | None = None) -> list[str]:
    """The gateway setting that makes VPN clients give their password and a code (their
    profiles change: they import them again); audited. Returns the users not enrolled,
    who cannot connect while it is on."""
    with session(engine, write=True) as s:
        settings = queries.get_settings(s, name=gateway)
        settings.vpn_two_factor = required
        queries.save_settings(s, settings=settings)
        queries.record_audit(s, actor=actor, action="settings.update", target=gateway,
                             source_address=source_address, detail=f"vpn_two_factor={required}")
        return [u.name for u in queries.list_users(s) if u.totp_secret is None]


def reset_account(engine: Engine, *, name: str, actor: str,
                  source_address: str | None = None) -> User:
    """`reset` with its audit entry, in one transaction (CLI)."""
    with session(engine, write=True) as s:
        user = reset(s, name=name)
        queries.record_audit(s, actor=actor, action="user.2fa_reset", target=name,
                             source_address=source_address)
    return user


def require_account(engine: Engine, *, name: str, required: bool, actor: str,
                    source_address: str | None = None) -> User:
    """`set_required` with its audit entry, in one transaction (CLI)."""
    with session(engine, write=True) as s:
        user = set_required(s, name=name, required=required)
        queries.record_audit(s, actor=actor, action="user.2fa_require", target=name,
                             source_address=source_address, detail=f"required={required}")
    return user
