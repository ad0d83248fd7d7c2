"""Alembic environment: migrates the connection `sslvpn.store.db.upgrade` hands in.

For a developer generating a revision, ``sqlalchemy.url`` in the alembic config is used
instead. Offline (SQL script) mode is not supported.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

import sslvpn.store.models  # noqa: F401  (registers every table on SQLModel.metadata)
from sslvpn.store import StoreError


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=SQLModel.metadata,
        render_as_batch=True,  # SQLite can only ALTER through table copies
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _main() -> None:
    if context.is_offline_mode():
        raise StoreError("offline migrations are not supported")
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    from sslvpn.store.db import open_engine

    url = context.config.get_main_option("sqlalchemy.url")
    if url is None:
        raise StoreError("no connection and no sqlalchemy.url given to the migrations")
    with open_engine(url).connect() as fresh:
        _run(fresh)
        fresh.commit()


_main()
