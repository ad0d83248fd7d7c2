"""Store fixtures: one migrated engine per test, on SQLite and on real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
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

