"""Opening the database, bringing its schema to the current revision, and transactions.

SQLite runs in WAL mode with foreign keys on and real transactions (savepoints work);
PostgreSQL goes through psycopg 3. The schema only ever changes through the alembic
revisions shipped inside this package, so an installed gateway needs no alembic.ini.

Transactions say what they are: ``session(engine, write=True)`` takes the database's one
writer lock when it begins (SQLite ``BEGIN IMMEDIATE``, a PostgreSQL transaction-scoped
advisory lock), so a read-then-write never works from a stale snapshot and waits for the
other writer instead of failing with "database is locked" (SQLITE_BUSY_SNAPSHOT, which
the busy timeout does not cover) or losing an update. ``write=False`` is a read-only
transaction that refuses writes. Writers run one at a time across the portal, CLI and
gateway processes, so a write session must be the only session open in its thread.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import urllib.parse
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, DataError, DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import ORMExecuteState, UOWTransaction
from sqlmodel import Session

from sslvpn.store import RejectedError, StoreError, integrity

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 10_000
# PostgreSQL waits for the writer lock (and row locks) as long as SQLite's busy timeout.
POSTGRES_LOCK_TIMEOUT = f"{SQLITE_BUSY_TIMEOUT_MS}ms"
# pg_advisory_xact_lock key of the writer lock: "sslvpn" in ASCII, any fixed bigint will do.
POSTGRES_WRITER_LOCK = 0x73736C76706E
VERSION_TABLE = "alembic_version"
WRITE_OPTION = "sslvpn_write"  # connection execution option: begin as the writer

_open_here = threading.local()  # per thread: Counter of open sessions by database URL
_read_only_engines: weakref.WeakSet[Engine] = weakref.WeakSet()


class SessionMisuseError(RuntimeError):
    """A session was used against its declared kind; a programming error, not an operator's."""


def open_engine(url: str, *, read_only: bool = False) -> Engine:
    """An engine that has already proved it can reach a database at ``url``.

    ``read_only`` (SQLite only) opens a file whose folder nobody may write, such as a
    read-only mount: every session reads and any write session is refused.
    """
    parsed = _parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        if read_only:
            engine = create_engine(parsed, hide_parameters=True,
                                   creator=_read_only_connection(parsed))
        else:
            _create_private_file(parsed)
            engine = create_engine(parsed, hide_parameters=True)
        _configure_sqlite(engine, read_only=read_only)
        if read_only:
            _read_only_engines.add(engine)
    else:
        engine = create_engine(parsed, hide_parameters=True, pool_pre_ping=True)
        event.listen(engine, "begin", _on_postgres_begin)
    try:
        with engine.connect():
            pass
    except DBAPIError as exc:
        engine.dispose()
        raise StoreError(_unusable_message(parsed, exc)) from None
    return engine


def upgrade(engine: Engine) -> None:
    """Create or migrate the schema to the newest revision, in one transaction.

    A database already at the newest revision is only read, so a read-only one works.
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    where = _describe(engine.url)
    try:
        if _at_head(engine, config):
            return
        integrity.before_write(engine)
        if engine in _read_only_engines:
            raise StoreError(f"{where} needs its schema upgraded for this version of sslvpn, "
                             "but it is read-only; upgrade it where it is writable")
        with engine.execution_options(**{WRITE_OPTION: True}).begin() as connection:
            _refuse_foreign_schema(connection, where)
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    except CommandError as exc:
        raise StoreError(f"{where} is not an sslvpn database this version knows: {exc}") from None
    except DBAPIError as exc:
        raise StoreError(_unusable_message(engine.url, exc)) from None


def _at_head(engine: Engine, config: Config) -> bool:
    """Whether the stored revision is already the newest one shipped (read only)."""
    head = ScriptDirectory.from_config(config).get_current_head()
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    return current is not None and current == head


@contextmanager
def session(engine: Engine, *, write: bool | None = None) -> Iterator[Session]:
    """One transaction: committed when the block ends cleanly, rolled back otherwise.

    ``write=True`` begins as the database's only writer (waiting for the current one);
    ``write=False`` only reads (a write raises `SessionMisuseError`); left out (callers not
    yet converted), the transaction begins deferred and may write, but on SQLite a read
    followed by a write fails when another process committed in between.
    Objects stay readable after the commit, so callers may return them.
    """
    if write and engine in _read_only_engines:
        raise StoreError(f"{_describe(engine.url)} is open read-only (its folder is read-only)")
    if write is not False:  # a deferred session may write too
        integrity.before_write(engine)
    with _registered(engine, write=bool(write)), Session(engine, expire_on_commit=False) as active:
        try:
            if write:
                active.connection(execution_options={WRITE_OPTION: True})
            elif write is not None:
                _refuse_writes(active)
            yield active
            active.commit()
        except (IntegrityError, DataError) as exc:  # the data, not the store: it fails again
            active.rollback()
            raise RejectedError(f"database refused the data: {_driver_message(exc)}") from None
        except DBAPIError as exc:
            active.rollback()
            if integrity.is_damage(exc):
                raise integrity.note_damage(engine, _driver_message(exc)) from None
            raise StoreError(f"database error: {_driver_message(exc)}") from None
        except BaseException:
            active.rollback()
            raise


@contextmanager
def _registered(engine: Engine, *, write: bool) -> Iterator[None]:
    """Count this thread's open sessions; a writer must be alone, or it waits for itself."""
    counts: Counter[URL] = _open_here.__dict__.setdefault("counts", Counter())
    if write and counts[engine.url]:
        raise SessionMisuseError(
            "a write session was opened while another session of the same database is open "
            "in this thread; close that one first (the writer lock would wait for itself)"
        )
    counts[engine.url] += 1
    try:
        yield
    finally:
        counts[engine.url] -= 1
        if not counts[engine.url]:
            del counts[engine.url]  # no entry left behind per database a thread ever opened


def _refuse_writes(active: Session) -> None:
    """Make a read session raise on any INSERT, UPDATE, DELETE or flush of changes."""

    def check_statement(state: ORMExecuteState) -> None:
        if state.is_insert or state.is_update or state.is_delete:
            raise SessionMisuseError("a read session tried to write; open it with write=True")

    def check_flush(flushing: Session, _flush: UOWTransaction, _instances: object) -> None:
        changed = any(flushing.is_modified(row) for row in flushing.dirty)
        if flushing.new or flushing.deleted or changed:
            raise SessionMisuseError("a read session tried to write; open it with write=True")

    event.listen(active, "do_orm_execute", check_statement)
    event.listen(active, "before_flush", check_flush)


def _parse_url(url: str) -> URL:
    """Accept plain ``postgresql://`` URLs by choosing psycopg 3, the driver we ship."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StoreError("the database URL is not a valid SQLAlchemy URL") from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def _configure_sqlite(engine: Engine, *, read_only: bool) -> None:
    """Per connection: incremental auto-vacuum (takes effect in a new file), WAL, foreign
    keys, a busy timeout, and SQLAlchemy-managed BEGIN.

    pysqlite's own transaction handling skips BEGIN before DDL and breaks SAVEPOINT;
    turning it off and emitting BEGIN ourselves is the documented SQLAlchemy recipe.
    A read-only connection leaves the journal mode as the file has it.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            if not read_only:
                # a new file only, and before WAL, or it keeps auto_vacuum=NONE (see
                # store.retention); on an existing file the pragma rewrites the header (a
                # write, and a wait for the writer lock) on every connection
                if cursor.execute("PRAGMA page_count").fetchone()[0] == 0:
                    cursor.execute("PRAGMA auto_vacuum=INCREMENTAL")
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        writer = connection.get_execution_options().get(WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if writer else "BEGIN")


def _create_private_file(url: URL) -> None:
    """Create a new SQLite file 0600 before SQLite creates it with the umask's mode: it will
    hold client keys and password hashes (its -wal and -shm files take the same mode)."""
    if url.database and url.database != ":memory:" and not url.database.startswith("file:"):
        with contextlib.suppress(OSError):  # it exists, or SQLite will say why it cannot
            os.close(os.open(url.database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _read_only_connection(url: URL) -> Callable[[], sqlite3.Connection]:
    """Connections to a SQLite file in a folder nobody may write.

    ``mode=ro`` reads the file together with its write-ahead log, but needs the log's
    ``-shm`` index to exist already; after a clean shutdown there is neither, and then the
    file alone is the whole database: ``immutable=1`` reads it without the lock files it
    cannot create. (immutable with a -wal present would hide committed rows, so never then.)
    """
    path = str(Path(url.database or "").resolve())
    quoted = urllib.parse.quote(path)

    def connect() -> sqlite3.Connection:
        connection = sqlite3.connect(f"file:{quoted}?mode=ro", uri=True, check_same_thread=False)
        try:
            connection.execute("PRAGMA schema_version")  # SQLite opens the file lazily
            return connection
        except sqlite3.OperationalError:
            connection.close()
            if Path(f"{path}-wal").exists() or not Path(path).is_file():
                raise
        return sqlite3.connect(f"file:{quoted}?immutable=1", uri=True, check_same_thread=False)

    return connect


def _on_postgres_begin(connection: Connection) -> None:
    """A writer holds one advisory lock until its transaction ends, like SQLite's RESERVED."""
    if connection.get_execution_options().get(WRITE_OPTION, False):
        connection.exec_driver_sql(f"SET LOCAL lock_timeout = '{POSTGRES_LOCK_TIMEOUT}'")
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({POSTGRES_WRITER_LOCK})")


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
    if integrity.is_damage(exc):
        return (f"the database {where} is damaged ({detail}): "
                f"{integrity.RESTORE_HINT} (`sslvpn check` lists what is wrong)")
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
