"""Checking what a person proves they know: argon2id password hashes and TOTP codes
(RFC 6238, through pyotp). No I/O: the portal, the CLI (through ``client_profiles``) and the
gateway's VPN two-factor check (``sslvpn.runtime``) share these. Both checks are slow or
secret-bearing: run them off an event loop, and never log their input.
"""

from __future__ import annotations

import hmac
import secrets

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

STEP_SECONDS = 30  # RFC 6238's default time step, what every authenticator app uses
DIGITS = 6
DRIFT_STEPS = 1  # a code of the previous or next step is still taken

_HASHER = PasswordHasher()
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


def code_at(secret: str, now: float) -> str:
    """The code of the step ``now`` falls in (what the user's app shows)."""
    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS).generate_otp(
        int(now // STEP_SECONDS))


def matching_step(secret: str, code: str, now: float) -> int | None:
    """The time step whose code ``code`` is (within the drift), None when none is."""
    code = "".join(code.split())
    if len(code) != DIGITS or not code.isdigit():
        return None
    totp = pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS)
    current = int(now // STEP_SECONDS)
    for step in range(current - DRIFT_STEPS, current + DRIFT_STEPS + 1):
        if hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None
