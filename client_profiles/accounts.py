"""User accounts as the CLI and the portal manage them: validated names, audited changes.

A user name becomes (part of) a certificate CN, so it is limited to characters that are
safe in a CN, a file name and an OpenVPN option line.
"""

from __future__ import annotations

import re

from sqlalchemy import Engine

from client_profiles.passwords import MIN_PASSWORD_LENGTH, hash_password
from client_profiles.pkifiles import LifecycleError
from sslvpn.store import queries
from sslvpn.store.db import session
from sslvpn.store.models import User

USER_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_EMAIL_PATTERN = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


def add_user(
    engine: Engine,
    *,
    name: str,
    email: str | None = None,
    admin: bool = False,
    password: str | None = None,
    actor: str,
    source_address: str | None = None,
) -> User:
    """Create a user (role admin or user), optionally with a portal password."""
    if not USER_NAME_PATTERN.fullmatch(name):
        raise LifecycleError(
            "a user name is 1-64 letters, digits, '.', '_', '@' or '-', starting with a letter "
            "or digit"
        )
    if email is not None and not _EMAIL_PATTERN.fullmatch(email):
        raise LifecycleError(f"{email!r} is not an e-mail address")
    if password is not None and len(password) < MIN_PASSWORD_LENGTH:
        raise LifecycleError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    password_hash = hash_password(password) if password is not None else None
    with session(engine, write=True) as s:
        user = queries.create_user(
            s,
            name=name,
            role="admin" if admin else "user",
            email=email,
            password_hash=password_hash,
        )
        queries.record_audit(
            s,
            actor=actor,
            action="user.add",
            target=name,
            source_address=source_address,
            detail=f"role={user.role}",
        )
    return user


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
