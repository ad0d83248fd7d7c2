"""Retention meets existing databases: the upgrade starts the clock of users already
disabled, and SQLite files give pruned space back (new ones at once, old ones after one
VACUUM)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, text

from sslvpn.store import queries, retention
from sslvpn.store.db import MIGRATIONS_DIR, open_engine, session, upgrade


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = open_engine(f"sqlite:///{tmp_path / 'store.db'}")
    yield engine
    engine.dispose()


def _upgrade_to(engine: Engine, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql",
                                                            marks=pytest.mark.postgres)])
def test_upgrade_starts_the_clock_of_users_already_disabled(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = (f"sqlite:///{tmp_path / 'old.db'}" if backend == "sqlite"
           else request.getfixturevalue("empty_postgres_url"))
    engine = open_engine(url)
    try:
        _upgrade_to(engine, "0002")  # the revision before retention
        with engine.begin() as connection:
            for name, disabled in (("off", True), ("on", False)):
                connection.execute(text(
                    'INSERT INTO "user" (name, role, disabled, created_at) '
                    "VALUES (:name, 'user', :disabled, :at)"),
                    {"name": name, "disabled": disabled, "at": datetime(2020, 1, 1)})
        before = datetime.now(UTC) - timedelta(seconds=1)
        upgrade(engine)
        with session(engine, write=False) as s:
            off, on = queries.get_user(s, name="off"), queries.get_user(s, name="on")
        assert off.disabled_at is not None and off.disabled_at >= before
        assert on.disabled_at is None
        assert retention.prune(engine).users == []  # nobody is deleted by the upgrade
    finally:
        engine.dispose()


def test_a_new_sqlite_file_gives_pruned_space_back(sqlite_engine: Engine, tmp_path: Path) -> None:
    upgrade(sqlite_engine)
    long_ago = datetime.now(UTC) - timedelta(days=500)
    with session(sqlite_engine, write=True) as s:
        for i in range(3000):
            queries.record_audit(s, actor="t", action="a", detail="x" * 1000 + str(i),
                                 at=long_ago)
    path = tmp_path / "store.db"

    def file_size() -> int:
        with sqlite_engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        return path.stat().st_size

    full = file_size()
    report = retention.prune(sqlite_engine, pause=0)
    assert report.audit == 3000 and report.vacuumed_pages > 0
    assert file_size() < full / 4
    with sqlite_engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA freelist_count").scalar() == 0


def test_an_old_sqlite_file_is_rebuilt_once(sqlite_engine: Engine, tmp_path: Path) -> None:
    upgrade(sqlite_engine)
    old = sqlite3.connect(tmp_path / "store.db", isolation_level=None)
    old.execute("PRAGMA auto_vacuum=NONE")
    old.execute("VACUUM")  # as every file made before incremental auto-vacuum
    assert old.execute("PRAGMA auto_vacuum").fetchone() == (0,)
    old.close()
    sqlite_engine.dispose()  # pooled connections would still see the old header
    assert retention.vacuum_incrementally(sqlite_engine) == 0  # NONE: nothing to hand back
    assert retention.ensure_incremental_vacuum(sqlite_engine) is True
    assert retention.ensure_incremental_vacuum(sqlite_engine) is False
    with sqlite_engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA auto_vacuum").scalar() == retention.INCREMENTAL
    with session(sqlite_engine, write=False) as s:
        assert queries.list_users(s) == []  # the rebuilt file still reads
