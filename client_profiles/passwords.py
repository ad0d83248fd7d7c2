"""Portal password hashing (argon2id): the one implementation the CLI and the portal share.

Lives in ``client_profiles`` so that both ``sslvpn user add --password-stdin`` and ``web/``
may import it without ``client_profiles`` ever importing ``web``.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

_HASHER = PasswordHasher()

MIN_PASSWORD_LENGTH = 8
ONE_TIME_PASSWORD_LIFETIME = timedelta(hours=24)  # a generated password unused this long dies


def one_time_until(now: datetime | None = None) -> datetime:
    """When a password generated now stops working if its user has not replaced it."""
    return (now or datetime.now(UTC)) + ONE_TIME_PASSWORD_LIFETIME

# A hash of a random password, verified against when an account does not exist so that
# a login for an unknown name costs the same time as one for a known name.
_DUMMY_HASH = _HASHER.hash(secrets.token_urlsafe(16))


def hash_password(password: str) -> str:
    """Return an argon2id hash string (salt and parameters included)."""
    return _HASHER.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """True when ``password`` matches ``password_hash``; a missing hash still costs a verify."""
    try:
        return _HASHER.verify(password_hash or _DUMMY_HASH, password) and bool(password_hash)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    """True when the hash was made with weaker parameters than the current ones."""
    return _HASHER.check_needs_rehash(password_hash)


def generate_password() -> str:
    """A random password for a first admin or a reset (about 128 bits)."""
    return secrets.token_urlsafe(16)
