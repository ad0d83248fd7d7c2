"""Store fixtures: one migrated engine per test, on SQLite and on real PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, make_url, text
from sqlmodel import SQLModel

from sslvpn.store.db import open_engine, upgrade

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(scope="session")
def migrated_postgres(postgres_url: str) -> Iterator[Engine]:
    """Migrated once per session; tests start from emptied tables."""
    engine = open_engine(postgres_url)
    upgrade(engine)
    yield engine
    engine.dispose()


def _empty_tables(engine: Engine) -> None:
    quote = engine.dialect.identifier_preparer.quote
    names = ", ".join(quote(t.name) for t in SQLModel.metadata.sorted_tables)
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE TABLE {names} RESTART IDENTITY CASCADE"))


@pytest.fixture(params=BACKENDS)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A store at the newest schema with no rows, on the parametrised backend."""
    if request.param == "sqlite":
        sqlite = open_engine(f"sqlite:///{tmp_path / 'store.db'}")
        upgrade(sqlite)
        yield sqlite
        sqlite.dispose()
        return
    postgres: Engine = request.getfixturevalue("migrated_postgres")
    _empty_tables(postgres)
    yield postgres


@pytest.fixture
def empty_postgres_url(postgres_url: str) -> Iterator[str]:
    """A brand-new, empty PostgreSQL database, dropped afterwards."""
    name = f"empty_{uuid.uuid4().hex[:12]}"
    admin = open_engine(postgres_url).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    yield make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.engine.dispose()
