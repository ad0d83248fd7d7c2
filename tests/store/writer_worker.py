"""A separate writer process for the concurrency tests (``python -m tests.store.writer_worker``).

It prints ``ready``, waits for ``go`` on stdin so every worker starts together, then runs
COUNT read-then-write transactions: read how many users exist, add the user named after
that number. A stale read (lost update) would add a name twice, which the unique index
refuses. It prints one line, ``done`` or the first error, and exits.
"""

from __future__ import annotations

import sys

from sqlalchemy import func
from sqlmodel import select

from sslvpn.store import StoreError, db, queries
from sslvpn.store.models import User


def read_then_write(url: str, count: int) -> str:
    engine = db.open_engine(url)
    try:
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        if sys.stdin.readline().strip() != "go":
            return "no go"
        for _ in range(count):
            with db.session(engine, write=True) as s:
                users = s.exec(select(func.count()).select_from(User)).one()
                queries.create_user(s, name=f"user{users}")
        return "done"
    except StoreError as exc:
        return f"error: {exc}"
    finally:
        engine.dispose()


if __name__ == "__main__":
    sys.stdout.write(read_then_write(sys.argv[1], int(sys.argv[2])) + "\n")
