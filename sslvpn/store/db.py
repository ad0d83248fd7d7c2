"""Opening the database, bringing its schema to the current revision, and transactions.

SQLite runs in WAL mode with foreign keys on and real transactions (savepoints work);
PostgreSQL goes through psycopg 3. The schema only ever changes through the alembic
revisions shipped inside this package, so an installed gateway needs no alembic.ini.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.util import CommandError
from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
from sqlmodel import Session

from sslvpn.store import StoreError

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 10_000
VERSION_TABLE = "alembic_version"


def open_engine(url: str) -> Engine:
    """An engine that has already proved it can reach a database at ``url``."""
    parsed = _parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(parsed, hide_parameters=True)
        _configure_sqlite(engine)
    else:
        engine = create_engine(parsed, hide_parameters=True, pool_pre_ping=True)
    try:
        with engine.connect():
            pass
    except DBAPIError as exc:
        engine.dispose()
        raise StoreError(_unusable_message(parsed, exc)) from None
    return engine


def upgrade(engine: Engine) -> None:
    """Create or migrate the schema to the newest revision, in one transaction."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    where = _describe(engine.url)
    try:
        with engine.begin() as connection:
            _refuse_foreign_schema(connection, where)
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    except CommandError as exc:
        raise StoreError(f"{where} is not an sslvpn database this version knows: {exc}") from None
    except DBAPIError as exc:
        raise StoreError(_unusable_message(engine.url, exc)) from None


@contextmanager
def session(engine: Engine) -> Iterator[Session]:
    """One transaction: committed when the block ends cleanly, rolled back otherwise.

    Objects stay readable after the commit, so callers may return them.
    """
    with Session(engine, expire_on_commit=False) as active:
        try:
            yield active
            active.commit()
        except DBAPIError as exc:
            active.rollback()
            raise StoreError(f"database error: {_driver_message(exc)}") from None
        except BaseException:
            active.rollback()
            raise


def _parse_url(url: str) -> URL:
    """Accept plain ``postgresql://`` URLs by choosing psycopg 3, the driver we ship."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StoreError("the database URL is not a valid SQLAlchemy URL") from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def _configure_sqlite(engine: Engine) -> None:
    """Per connection: WAL, foreign keys, a busy timeout, and SQLAlchemy-managed BEGIN.

    pysqlite's own transaction handling skips BEGIN before DDL and breaks SAVEPOINT;
    turning it off and emitting BEGIN ourselves is the documented SQLAlchemy recipe.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN")


def _refuse_foreign_schema(connection: Connection, where: str) -> None:
    """Never migrate into a database that already holds some other application's tables."""
    tables = set(inspect(connection).get_table_names())
    if tables and VERSION_TABLE not in tables:
        raise StoreError(f"{where} is not an sslvpn database (it holds other tables)")


def _unusable_message(url: URL, exc: DBAPIError) -> str:
    where = _describe(url)
    detail = _driver_message(exc)
    if url.get_backend_name() == "sqlite" and "not a database" in detail:
        return f"{where} is not an sslvpn database ({detail})"
    return f"cannot open the database {where}: {detail}"


def _describe(url: URL) -> str:
    """Name a database for an operator without ever showing a password."""
    if url.get_backend_name() == "sqlite":
        return url.database or "in-memory SQLite database"
    return url.render_as_string(hide_password=True)


def _driver_message(exc: SQLAlchemyError) -> str:
    """The driver's own words, first line only (SQLAlchemy's text may add parameters)."""
    original = getattr(exc, "orig", None) or exc
    text = str(original).strip().splitlines()
    return text[0] if text else type(original).__name__
