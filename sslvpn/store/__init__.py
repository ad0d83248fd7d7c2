"""The store: what sslvpn remembers (users, certificates, settings, audit, leases, tokens).

Models live in `models`, engine and migrations in `db`, named queries in `queries`.
Query functions only flush; the `db.session` context manager commits on a clean exit and
rolls back on an exception, so one `with session(engine) as s:` block is one transaction.
Every failure the store reports is a `StoreError`, which the CLI turns into a message.
"""

from __future__ import annotations


class StoreError(Exception):
    """The store cannot do what was asked; the message is safe to show to an operator."""


class DuplicateError(StoreError):
    """A row with the same unique name, serial or token already exists."""


class NotFoundError(StoreError):
    """The named row does not exist."""


class ConflictError(StoreError):
    """The row exists but its state forbids the change (already revoked, token used)."""


class RejectedError(StoreError):
    """The database refused the data itself (a constraint, a value out of range): the same
    write fails again, unlike a failure of the store."""


class StoreUnavailable(StoreError):
    """The store failed or did not answer in time; the same request may work later."""


__all__ = ["ConflictError", "DuplicateError", "NotFoundError", "RejectedError", "StoreError",
           "StoreUnavailable"]
