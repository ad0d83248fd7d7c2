"""User accounts as the CLI and the portal manage them: validated names, audited changes.

A user name becomes (part of) a certificate CN, so it is limited to characters that are
safe in a CN, a file name and an OpenVPN option line. Deleting a user revokes what they
hold first; a new password ends their portal logins; per-user limits override the gateway
settings' (`lifecycle.effective_limits`).
"""

from __future__ import annotations

import enum
import re
from datetime import datetime

from sqlalchemy import Engine

from client_profiles import lifecycle
from client_profiles.passwords import (
    generate_password,
    hash_password,
    one_time_until,
    password_problem,
)
from client_profiles.pkifiles import LifecycleError
from sslvpn.config import DataPaths
from sslvpn.store import portal_logins, queries
from sslvpn.store.db import session
from sslvpn.store.models import Certificate, User, utcnow

USER_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_EMAIL_PATTERN = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


def add_user(
    engine: Engine,
    *,
    name: str,
    email: str | None = None,
    admin: bool = False,
    password: str | None = None,
    one_time: bool = False,
    actor: str,
    source_address: str | None = None,
) -> User:
    """Create a user (role admin or user), optionally with a portal password (``one_time``:
    generated, to be changed at the first login and dead after 24 h)."""
    if not USER_NAME_PATTERN.fullmatch(name):
        raise LifecycleError(
            "a user name is 1-64 letters, digits, '.', '_', '@' or '-', starting with a letter "
            "or digit"
        )
    if email is not None and not _EMAIL_PATTERN.fullmatch(email):
        raise LifecycleError(f"{email!r} is not an e-mail address")
    if password is not None:
        _check_password(password, name=name, email=email)
    password_hash = hash_password(password) if password is not None else None
    with session(engine, write=True) as s:
        user = queries.create_user(
            s,
            name=name,
            role="admin" if admin else "user",
            email=email,
            password_hash=password_hash,
        )
        if one_time and password is not None:
            user.password_one_time_until = one_time_until()
        queries.record_audit(
            s,
            actor=actor,
            action="user.add",
            target=name,
            source_address=source_address,
            detail=f"role={user.role}",
        )
    return user


def _check_password(password: str, *, name: str, email: str | None) -> None:
    """Refuse a chosen password the policy refuses (generated ones are random)."""
    problem = password_problem(password, user_inputs=(name, email))
    if problem is not None:
        raise LifecycleError(problem)


def set_user_enabled(
    engine: Engine, *, name: str, enabled: bool, actor: str, source_address: str | None = None
) -> User:
    """Enable or disable a user; a disabled user gets no new certificates or profiles."""
    with session(engine, write=True) as s:
        user = queries.set_user_disabled(s, name=name, disabled=not enabled)
        queries.record_audit(
            s,
            actor=actor,
            action="user.enable" if enabled else "user.disable",
            target=name,
            source_address=source_address,
        )
    return user


def list_users(engine: Engine) -> list[User]:
    """Every user, by name."""
    with session(engine, write=False) as s:
        return queries.list_users(s)


def delete_user(
    engine: Engine,
    paths: DataPaths,
    *,
    name: str,
    actor: str,
    source_address: str | None = None,
    ca_passphrase: str | None = None,
) -> list[Certificate]:
    """Revoke every certificate the user still holds (cessationOfOperation; the gateway's
    sweeps end their sessions), then delete the user, their tokens and portal logins.
    Returns what was revoked."""
    with session(engine, write=False) as s:
        user = queries.get_user(s, name=name)  # an unknown name is refused before anything
        holds = any(r.status != "revoked" and r.not_after > utcnow()
                    for r in queries.list_certificates(s, user_id=user.id))
    revoked = lifecycle.revoke(
        engine, paths, user_name=name, reason="cessationOfOperation", actor=actor,
        source_address=source_address, ca_passphrase=ca_passphrase,
    ) if holds else []
    with session(engine, write=True) as s:
        queries.delete_user(s, name=name)
        queries.record_audit(s, actor=actor, action="user.delete", target=name,
                             source_address=source_address,
                             detail=f"certificates_revoked={len(revoked)}")
    return revoked


def set_password(
    engine: Engine,
    *,
    name: str,
    password: str | None,
    actor: str,
    source_address: str | None = None,
) -> str | None:
    """Give a user a new portal password (None: generate a one-time one, returned to show
    once) and end every portal login they had."""
    generated = generate_password() if password is None else None
    if password is not None:
        with session(engine, write=False) as s:
            email = queries.get_user(s, name=name).email  # an unknown name fails first
        _check_password(password, name=name, email=email)
    hashed = hash_password(generated or str(password))
    with session(engine, write=True) as s:
        user = queries.set_user_password_hash(
            s, name=name, password_hash=hashed,
            one_time_until=one_time_until() if generated else None)
        if user.id is not None:
            portal_logins.end_user_logins(s, user_id=user.id)
        queries.record_audit(s, actor=actor, action="user.password_reset", target=name,
                             source_address=source_address,
                             detail="generated" if generated else "given")
    return generated


def unlock(
    engine: Engine,
    *,
    name: str,
    actor: str,
    source_address: str | None = None,
    now: datetime | None = None,
) -> User:
    """Failed portal logins of this account so far no longer count (every portal reads the
    stamp when the account is throttled)."""
    with session(engine, write=True) as s:
        user = queries.get_user(s, name=name)
        user.unlocked_at = now or utcnow()
        s.flush()
        queries.record_audit(s, actor=actor, action="user.unlock", target=name,
                             source_address=source_address)
    return user


MAX_LIMIT = 1_000_000


class Unchanged(enum.Enum):
    """A limit the caller leaves as the user has it (an admin who sets only the other)."""

    UNCHANGED = "unchanged"


UNCHANGED = Unchanged.UNCHANGED


def set_limits(
    engine: Engine,
    *,
    name: str,
    devices: int | None | Unchanged,
    sessions: int | None | Unchanged,
    actor: str,
    source_address: str | None = None,
) -> User:
    """This user's own limits (None: the gateway settings'); sessions 0 is one per device."""
    for value in (devices, sessions):
        if isinstance(value, int) and not 0 <= value <= MAX_LIMIT:
            raise LifecycleError(f"a limit is 0 to {MAX_LIMIT}")
    with session(engine, write=True) as s:
        user = queries.get_user(s, name=name)
        if devices is not UNCHANGED:
            user.max_devices = devices
        if sessions is not UNCHANGED:
            user.max_sessions = sessions
        s.flush()
        queries.record_audit(s, actor=actor, action="user.limits", target=name,
                             source_address=source_address,
                             detail=f"devices={user.max_devices} sessions={user.max_sessions}")
    return user
