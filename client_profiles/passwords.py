"""Portal passwords: the policy a new one must meet, one-time passwords, and hashing
(argon2id, from ``sslvpn.credentials``, which the gateway's VPN check shares): the one
implementation the CLI, the API and the portal share.

Lives in ``client_profiles`` so that both ``sslvpn user add --password-stdin`` and ``web/``
may import it without ``client_profiles`` ever importing ``web``.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from zxcvbn import zxcvbn

from sslvpn.credentials import hash_password as hash_password
from sslvpn.credentials import needs_rehash as needs_rehash
from sslvpn.credentials import verify_password as verify_password

MIN_PASSWORD_LENGTH = 12
MIN_STRENGTH = 3  # zxcvbn's score (0-4): 3 is "safely unguessable" (about 10^8+ guesses)
STRENGTH_CHECKED = 72  # zxcvbn's own cap; a longer password is judged by its first 72
# zxcvbn keeps the user's own words in a module-level dictionary while it scores: one at a
# time, or a thread could score against another account's name.
_STRENGTH_LOCK = threading.Lock()
ONE_TIME_PASSWORD_LIFETIME = timedelta(hours=24)  # a generated password unused this long dies


def one_time_until(now: datetime | None = None) -> datetime:
    """When a password generated now stops working if its user has not replaced it."""
    return (now or datetime.now(UTC)) + ONE_TIME_PASSWORD_LIFETIME


def password_problem(password: str, *, user_inputs: Iterable[str | None] = ()) -> str | None:
    """Why ``password`` cannot be a new portal password, in one line (None: it can). It
    needs ``MIN_PASSWORD_LENGTH`` characters and must not be common or guessable, as
    zxcvbn judges it, also from the account's own ``user_inputs`` (name, e-mail).
    Takes up to ~30 ms: off the event loop."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"a password needs at least {MIN_PASSWORD_LENGTH} characters"
    words = [word for word in user_inputs if word]
    with _STRENGTH_LOCK:
        verdict = zxcvbn(password[:STRENGTH_CHECKED], user_inputs=words)
    if verdict["score"] >= MIN_STRENGTH:
        return None
    why = verdict["feedback"]["warning"] or "it is too easy to guess"
    return (f"a password that is common or guessable is refused ({why.rstrip('.').lower()}); "
            "use a few uncommon words or a password manager's")


def generate_password() -> str:
    """A random password for a first admin or a reset (about 128 bits)."""
    return secrets.token_urlsafe(16)
