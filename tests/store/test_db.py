"""Engine set-up, migrations and transactions on SQLite and PostgreSQL."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect, text
from sqlmodel import SQLModel, select

from sslvpn.store import RejectedError, StoreError
from sslvpn.store.db import MIGRATIONS_DIR, open_engine, session, upgrade
from sslvpn.store.models import User
from tests.store.conftest import BACKENDS

EXPECTED_TABLES = {
    "access_group",
    "access_policy",
    "access_rule",
    "group_member",
    "addresslease",
    "alembic_version",
    "alarmnotice",
    "alarmsetting",
    "alarmstate",
    "apitoken",
    "auditentry",
    "certificate",
    "customergateway",
    "gatewaysettings",
    "importtoken",
    "node",
    "portalkey",
    "portallogin",
    "signedcrl",
    "spdpolicy",
    "traffic_bucket",
    "user",
    "vpngateway",
    "vpnsessionrecord",
    "vpntunnel",
}


def _schema_diff(engine: Engine) -> list[object]:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, SQLModel.metadata))


def test_the_revisions_form_one_line_with_one_head() -> None:
    """Two branches that each added a revision must re-parent one onto the other: with two
    heads, `upgrade(engine)` to "head" fails on every database."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    script = ScriptDirectory.from_config(config)
    assert len(script.get_heads()) == 1, script.get_heads()


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    engine = open_engine(f"sqlite:///{tmp_path / 'a.db'}")
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    engine.dispose()


def test_a_new_sqlite_file_and_its_log_are_private(tmp_path: Path) -> None:
    engine = open_engine(f"sqlite:///{tmp_path / 'a.db'}")
    upgrade(engine)
    with engine.connect():
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    engine.dispose()
    assert modes == {"a.db": 0o600, "a.db-wal": 0o600, "a.db-shm": 0o600}


def test_opening_an_existing_database_writes_nothing(tmp_path: Path) -> None:
    engine = open_engine(f"sqlite:///{tmp_path / 'a.db'}")
    upgrade(engine)
    engine.dispose()
    before = (tmp_path / "a.db").read_bytes()
    engine = open_engine(f"sqlite:///{tmp_path / 'a.db'}")
    upgrade(engine)
    with session(engine, write=False) as s:
        s.exec(select(User)).all()
    engine.dispose()
    assert (tmp_path / "a.db").read_bytes() == before  # not even the header's change counter


def test_migrations_take_an_empty_sqlite_file_to_head_without_diff(tmp_path: Path) -> None:
    engine = open_engine(f"sqlite:///{tmp_path / 'a.db'}")
    upgrade(engine)
    upgrade(engine)  # a second run is a no-op
    assert set(inspect(engine).get_table_names()) == EXPECTED_TABLES
    assert _schema_diff(engine) == []
    engine.dispose()


@pytest.mark.postgres
def test_migrations_take_an_empty_postgres_database_to_head_without_diff(
    empty_postgres_url: str,
) -> None:
    engine = open_engine(empty_postgres_url)
    assert inspect(engine).get_table_names() == []
    upgrade(engine)
    assert set(inspect(engine).get_table_names()) == EXPECTED_TABLES
    assert _schema_diff(engine) == []
    engine.dispose()


def test_a_file_that_is_not_a_database_gives_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "sslvpn.db"
    path.write_bytes(b"this is a text file, not SQLite\n" * 64)
    with pytest.raises(StoreError, match="is not an sslvpn database"):
        open_engine(f"sqlite:///{path}")


def test_another_applications_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE invoices (id INTEGER)")
    connection.close()
    engine = open_engine(f"sqlite:///{path}")
    with pytest.raises(StoreError, match="is not an sslvpn database"):
        upgrade(engine)
    assert inspect(engine).get_table_names() == ["invoices"]
    engine.dispose()


def test_a_database_from_an_unknown_revision_is_refused(tmp_path: Path) -> None:
    engine = open_engine(f"sqlite:///{tmp_path / 'a.db'}")
    upgrade(engine)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = 'ffffffffffff'"))
    with pytest.raises(StoreError, match="is not an sslvpn database this version knows"):
        upgrade(engine)
    engine.dispose()


def test_unreachable_and_malformed_urls_give_store_errors_without_passwords() -> None:
    with pytest.raises(StoreError) as refused:
        open_engine("postgresql://admin:hunter2@127.0.0.1:1/nothing")
    assert "hunter2" not in str(refused.value)
    assert "cannot open the database" in str(refused.value)
    with pytest.raises(StoreError, match="not a valid SQLAlchemy URL"):
        open_engine("no url at all")


def test_missing_folder_gives_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot open the database"):
        open_engine(f"sqlite:///{tmp_path / 'absent' / 'sslvpn.db'}")


@pytest.mark.parametrize("engine", BACKENDS, indirect=True)
def test_session_commits_on_success_and_rolls_back_on_error(engine: Engine) -> None:
    with session(engine) as s:
        s.add(User(name="kept"))
    with pytest.raises(RuntimeError), session(engine) as s:
        s.add(User(name="dropped"))
        s.flush()
        raise RuntimeError("caller failed half way")
    with session(engine) as s:
        assert [u.name for u in s.exec(select(User)).all()] == ["kept"]


@pytest.mark.parametrize("engine", BACKENDS, indirect=True)
def test_database_errors_become_store_errors_without_bound_values(engine: Engine) -> None:
    with pytest.raises(StoreError) as failed, session(engine) as s:
        s.add(User(name="x", role="root", password_hash="argon2-secret-hash"))
    assert "argon2-secret-hash" not in str(failed.value)
    assert failed.value.__cause__ is None
    assert type(failed.value) is RejectedError  # the data is refused: it would be again


@pytest.mark.parametrize("engine", BACKENDS, indirect=True)
def test_a_failing_statement_is_a_plain_store_error(engine: Engine) -> None:
    with pytest.raises(StoreError) as failed, session(engine) as s:
        s.execute(text("SELECT * FROM no_such_table"))
    assert type(failed.value) is StoreError  # a fault of the store, not of the data
