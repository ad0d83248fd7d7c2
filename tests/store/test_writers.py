"""Several writers on one store: write sessions wait their turn instead of failing or losing
an update, read sessions refuse to write, and a writer is never nested in its own thread."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, update
from sqlmodel import Session, select

from sslvpn.store import StoreError, queries
from sslvpn.store.db import SessionMisuseError, open_engine, session, upgrade
from sslvpn.store.models import User
from tests.store.conftest import BACKENDS

WORKERS = 3
TRANSACTIONS = 150  # per worker; each reads the user count, then adds one user
BOUND_SECONDS = 120  # a hang fails the test instead of blocking the suite


def _users(engine: Engine) -> list[str]:
    with session(engine, write=False) as s:
        return sorted(s.exec(select(User.name)).all())


def _count(s: Session) -> int:
    return s.exec(select(func.count()).select_from(User)).one()


def _start_together(url: str) -> list[subprocess.Popen[str]]:
    workers = [
        subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "tests.store.writer_worker", url, str(TRANSACTIONS)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            cwd=Path(__file__).resolve().parents[2],
        )
        for _ in range(WORKERS)
    ]
    for worker in workers:  # every worker has its engine open before any starts writing
        assert worker.stdout is not None
        assert worker.stdout.readline().strip() == "ready", worker.communicate()[1]
    return workers


@pytest.mark.parametrize("engine", BACKENDS, indirect=True)
def test_writer_processes_reading_then_writing_never_fail_or_lose_an_update(
    engine: Engine,
) -> None:
    url = engine.url.render_as_string(hide_password=False)
    workers = _start_together(url)
    try:
        outcomes = []
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        for worker in workers:
            out, err = worker.communicate(timeout=BOUND_SECONDS)
            outcomes.append((out.strip(), err.strip()[-400:]))
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()
    assert outcomes == [("done", "")] * WORKERS
    total = WORKERS * TRANSACTIONS
    assert _users(engine) == sorted(f"user{n}" for n in range(total))


def test_a_deferred_read_then_write_after_another_commit_is_refused_at_once(
    two_engines: tuple[Engine, Engine],
) -> None:
    """Why writers need ``write=True``: SQLite cannot move a stale snapshot forward."""
    first, second = two_engines
    with pytest.raises(StoreError, match="locked"), session(first) as s:
        seen = _count(s)
        _in_thread(lambda: _add_after_count(second))
        queries.create_user(s, name=f"user{seen}")
    assert _users(first) == ["user0"]


def test_a_write_session_waits_for_the_writer_and_then_sees_its_commit(
    two_engines: tuple[Engine, Engine],
) -> None:
    first, second = two_engines
    waiting = threading.Thread(target=_add_after_count, args=(second,))
    with session(first, write=True) as s:
        seen = _count(s)
        waiting.start()  # its BEGIN IMMEDIATE waits until this block commits
        queries.create_user(s, name=f"user{seen}")
    waiting.join(BOUND_SECONDS)
    assert not waiting.is_alive()
    assert _users(first) == ["user0", "user1"]


@pytest.mark.parametrize("engine", BACKENDS, indirect=True)
def test_a_read_session_refuses_every_kind_of_write(engine: Engine) -> None:
    with session(engine, write=True) as s:
        queries.create_user(s, name="alice")
    writes: list[Callable[[Session], object]] = [
        lambda s: queries.create_user(s, name="bob"),
        lambda s: queries.set_user_disabled(s, name="alice", disabled=True),
        lambda s: s.exec(update(User).values(disabled=True)),
    ]
    for write in writes:
        with pytest.raises(SessionMisuseError), session(engine, write=False) as s:
            write(s)
    with session(engine, write=False) as s:
        assert queries.get_user(s, name="alice").disabled is False


@pytest.mark.parametrize("engine", BACKENDS, indirect=True)
def test_a_write_session_inside_another_session_of_its_thread_is_refused(
    engine: Engine,
) -> None:
    """It would wait for a lock its own thread holds (or write behind an open snapshot)."""
    for outer_write in (None, False, True):
        with session(engine, write=outer_write), pytest.raises(SessionMisuseError):
            with session(engine, write=True):
                pass
    with session(engine, write=False), session(engine, write=False) as inner:
        assert _count(inner) == 0
    with session(engine, write=True) as s:  # the refused ones left nothing behind
        queries.create_user(s, name="alice")
    assert _users(engine) == ["alice"]


@pytest.fixture
def two_engines(tmp_path: Path) -> Iterator[tuple[Engine, Engine]]:
    """Two engines on one SQLite file, as two processes would have."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    first = open_engine(url)
    upgrade(first)
    second = open_engine(url)
    yield first, second
    first.dispose()
    second.dispose()


def _add_after_count(engine: Engine) -> None:
    with session(engine, write=True) as s:
        queries.create_user(s, name=f"user{_count(s)}")


def _in_thread(work: Callable[[], None]) -> None:
    thread = threading.Thread(target=work)
    thread.start()
    thread.join(BOUND_SECONDS)
    assert not thread.is_alive()
