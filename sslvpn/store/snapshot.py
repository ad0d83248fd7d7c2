"""Consistent copies of the database for `sslvpn backup` and `sslvpn restore`.

SQLite is copied with its online backup API, which reads one snapshot (under WAL the
running gateway keeps writing meanwhile) and yields a self-contained file. PostgreSQL is
dumped and restored with its own tools (``pg_dump --format=custom``, ``pg_restore
--single-transaction``) when they are installed; the password goes to them through the
environment, never on a command line.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from contextlib import closing
from pathlib import Path

from sqlalchemy.engine import URL, make_url

from sslvpn.store import StoreError

POSTGRES_TOOLS = Path("/usr/lib/postgresql")  # Debian: one bin/ per major version
TOOL_TIMEOUT_S = 3600  # a dump or restore that has not ended in an hour is stuck


def backend(url: str) -> str:
    """"sqlite" or "postgresql" (what `backup` and `restore` know how to copy)."""
    name = make_url(url).get_backend_name()
    if name not in ("sqlite", "postgresql"):
        raise StoreError(f"cannot back up a {name} database")
    return name


def sqlite_path(url: str) -> Path:
    """The file of a ``sqlite:///`` URL."""
    database = make_url(url).database
    if not database or database == ":memory:":
        raise StoreError("the SQLite database is not a file")
    return Path(database)


def copy_sqlite(source: Path, target: Path) -> None:
    """A consistent copy of a live SQLite database (its writers go on meanwhile)."""
    if not source.is_file():
        raise StoreError(f"no database at {source}")
    fd = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)  # it holds client keys
    os.close(fd)
    try:
        with _connect(source, read_only=True) as src, _connect(target) as dst:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode=DELETE")  # one file, no -wal beside it
    except sqlite3.Error as exc:
        raise StoreError(f"cannot copy the database {source}: {exc}") from None


def check_sqlite(path: Path) -> str | None:
    """Why the SQLite file is not a sound database, or None."""
    try:
        with _connect(path, read_only=True) as db:
            verdict = db.execute("PRAGMA integrity_check(1)").fetchone()
    except sqlite3.Error as exc:
        return str(exc)
    return None if verdict == ("ok",) else str(verdict[0] if verdict else "no answer")


def find_tool(name: str) -> str | None:
    """``pg_dump`` or ``pg_restore`` on PATH, else the newest Debian server's copy."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(
        (p for p in POSTGRES_TOOLS.glob(f"*/bin/{name}") if p.parent.parent.name.isdigit()),
        key=lambda p: int(p.parent.parent.name),
    )
    return str(versions[-1]) if versions else None


def dump_command(url: str) -> str:
    """The pg_dump command line an operator runs by hand (no password in it)."""
    return f"pg_dump --format=custom --file=sslvpn.pgdump '{_libpq(make_url(url))[0]}'"


def dump_postgres(url: str, target: Path, tool: str) -> None:
    """``pg_dump`` of the whole database into ``target`` (custom format)."""
    _run_tool(url, [tool, "--format=custom", "--no-owner", "--no-privileges",
                    f"--file={target}"], "pg_dump")


def restore_postgres(url: str, dump: Path, tool: str) -> None:
    """``pg_restore`` of ``dump`` in one transaction: all of it or nothing."""
    _run_tool(url, [tool, "--single-transaction", "--exit-on-error", "--no-owner",
                    "--no-privileges", str(dump)], "pg_restore")


def _run_tool(url: str, command: list[str], what: str) -> None:
    dsn, password = _libpq(make_url(url))
    env = dict(os.environ)
    if password is not None:
        env["PGPASSWORD"] = password
    try:
        done = subprocess.run(  # noqa: S603 (the tool found by find_tool, our own arguments)
            [*command, f"--dbname={dsn}"], env=env, capture_output=True, text=True,
            timeout=TOOL_TIMEOUT_S, check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StoreError(f"{what} failed: {exc}") from None
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        raise StoreError(f"{what} failed: {lines[0] if lines else f'exit {done.returncode}'}")


def _libpq(url: URL) -> tuple[str, str | None]:
    """A libpq connection URI without the password, and the password."""
    plain = url.set(drivername="postgresql", password=None)
    return plain.render_as_string(hide_password=False), url.password


def _connect(path: Path, *, read_only: bool = False) -> closing[sqlite3.Connection]:
    uri = path.resolve().as_uri() + ("?mode=ro" if read_only else "")
    return closing(sqlite3.connect(uri, uri=True, timeout=30))
