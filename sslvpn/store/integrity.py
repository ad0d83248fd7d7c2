"""Whether a SQLite store is intact, and refusing writes to one that is not.

Garbage in the middle of the file only shows when a statement touches the damaged page,
so a process could otherwise keep writing into a malformed database for ever. Three
guards: ``verify`` runs ``PRAGMA quick_check`` (bounded in time for the gateway's start,
whole for ``sslvpn check``); `require_check` makes a CLI process verify once before its
first write session; and any "database disk image is malformed" seen by a session marks
the engine damaged, after which every write session is refused with a message that
points at the backup. PostgreSQL checks its own pages, so it is always taken as intact.
"""

from __future__ import annotations

import logging
import sqlite3
import time
import weakref
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from sslvpn.store import StoreError

log = logging.getLogger(__name__)

# sqlite3.h primary result codes (extended codes keep them in the low byte)
SQLITE_CORRUPT = 11
SQLITE_NOTADB = 26
MAX_REPORTED = 20  # quick_check(N): stop after this many problems
PROGRESS_STEP = 10_000  # SQLite VM instructions between two deadline checks
RESTORE_HINT = "restore the last good backup with `sslvpn restore FILE`"


class DamagedStoreError(StoreError):
    """The database file is malformed; writing on would spread the damage."""


@dataclass
class _Verdict:
    pending: bool = False  # verify before the next write session
    damage: str | None = None  # first problem seen, once the store is known damaged


_verdicts: weakref.WeakKeyDictionary[Engine, _Verdict] = weakref.WeakKeyDictionary()


def require_check(engine: Engine) -> None:
    """Verify the store (whole) before the first write session of ``engine``."""
    if engine.url.get_backend_name() == "sqlite":
        _verdicts.setdefault(engine, _Verdict()).pending = True


def verify(engine: Engine, *, max_seconds: float | None = None) -> list[str] | None:
    """Problems ``PRAGMA quick_check`` finds (empty: intact), or None when it did not
    finish within ``max_seconds``; a damaged store's writes are refused from now on."""
    verdict = _verdicts.setdefault(engine, _Verdict())
    verdict.pending = False
    if engine.url.get_backend_name() != "sqlite":
        return []
    problems = _quick_check(engine, max_seconds)
    if problems:
        verdict.damage = problems[0]
    return problems


def before_write(engine: Engine) -> None:
    """Refuse to begin a write session on a store known (or now found) to be damaged."""
    verdict = _verdicts.get(engine)
    if verdict is None:
        return
    if verdict.pending:
        verify(engine)
    if verdict.damage is not None:
        raise DamagedStoreError(damaged_message(engine, verdict.damage))


def is_damage(exc: DBAPIError) -> bool:
    """Whether a driver error means the file is malformed (not busy, full or read-only)."""
    original = exc.orig
    if not isinstance(original, sqlite3.DatabaseError):
        return False
    code = getattr(original, "sqlite_errorcode", 0) & 0xFF
    # pysqlite's own words for a TEXT column holding bytes that are not UTF-8
    return code in (SQLITE_CORRUPT, SQLITE_NOTADB) or str(original).startswith(
        "Could not decode to UTF-8")


def note_damage(engine: Engine, detail: str) -> DamagedStoreError:
    """Remember that ``engine``'s store is damaged; the error to raise for ``detail``."""
    _verdicts.setdefault(engine, _Verdict()).damage = detail
    return DamagedStoreError(damaged_message(engine, detail))


def damaged_message(engine: Engine, detail: str) -> str:
    return (f"the database {engine.url.database} is damaged ({detail}); writes are refused: "
            f"{RESTORE_HINT} (`sslvpn check` lists what is wrong)")


def _quick_check(engine: Engine, max_seconds: float | None) -> list[str] | None:
    started = time.monotonic()
    with engine.connect() as connection:
        raw = connection.connection.driver_connection
        assert isinstance(raw, sqlite3.Connection)  # noqa: S101 (a SQLite engine)
        if max_seconds is not None:
            deadline = started + max_seconds
            raw.set_progress_handler(lambda: time.monotonic() > deadline, PROGRESS_STEP)
        try:
            rows = raw.execute(f"PRAGMA quick_check({MAX_REPORTED})").fetchall()
        except sqlite3.OperationalError as exc:
            if str(exc) == "interrupted":
                log.warning("integrity check of %s did not finish in %.0f s; run `sslvpn check`",
                            engine.url.database, max_seconds)
                return None
            raise StoreError(f"cannot check {engine.url.database}: {exc}") from None
        except sqlite3.DatabaseError as exc:  # a header too damaged to check at all
            return [str(exc)]
        finally:
            raw.set_progress_handler(None, 0)
    lines = [line for row in rows for line in str(row[0]).splitlines()]
    problems = [line for line in lines if line != "ok" and not line.startswith("*** in database")]
    log.debug("integrity check of %s: %d problem(s) in %.2f s", engine.url.database,
              len(problems), time.monotonic() - started)
    return problems
