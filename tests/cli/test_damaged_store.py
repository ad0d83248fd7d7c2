"""A real database with garbage in the middle of one of its pages: `serve` refuses to start,
write commands refuse and write nothing, and both point at the backup; a gateway that
meets the damage later refuses its writes from then on."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from sslvpn.cli import main, serve
from sslvpn.config import DataPaths, database_url
from sslvpn.runtime.service import GatewayService
from sslvpn.store import integrity
from sslvpn.store.db import open_engine, session
from sslvpn.store.queries import create_user, list_users, record_audit

USERS = 3000
RESTORE = "restore the last good backup with `sslvpn restore FILE`"


def _cli(data_dir: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--data-dir", str(data_dir), *args], catch_exceptions=False)


def _refused(result: Result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert " is damaged (" in lines[0] and RESTORE in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def healthy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = tmp_path_factory.mktemp("damaged") / "var"
    assert _cli(data_dir, "init", "--public-address", "vpn.example.test").exit_code == 0
    engine = open_engine(database_url(data_dir, None))
    with session(engine, write=True) as s:
        for n in range(USERS):
            create_user(s, name=f"user{n:05d}", email=f"user{n:05d}@example.test")
    engine.dispose()
    assert _cli(data_dir, "cert", "issue", "user00001").exit_code == 0
    return data_dir


def _damage(database: Path) -> None:
    """Overwrite the middle of a leaf page of the user table in the middle of the file."""
    with sqlite3.connect(database) as probe:
        size = probe.execute("PRAGMA page_size").fetchone()[0]
        pages = [row[0] for row in probe.execute(
            "SELECT pageno FROM dbstat WHERE name = 'user' AND pagetype = 'leaf' ORDER BY pageno")]
    probe.close()
    page = pages[len(pages) // 2]
    with database.open("r+b") as handle:
        handle.seek((page - 1) * size + size // 2)
        handle.write(b"\xde\xad\xbe\xef" * 32)


@pytest.fixture
def damaged(healthy: Path, tmp_path: Path) -> DataPaths:
    paths = DataPaths(tmp_path / "var")
    shutil.copytree(healthy, paths.data_dir)
    _damage(paths.database)
    return paths


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.endswith("-shm")}


def test_check_reports_the_damage(damaged: DataPaths) -> None:
    before = _digest(damaged.data_dir)
    result = _cli(damaged.data_dir, "check")
    assert result.exit_code == 1
    first = result.output.splitlines()[0]
    assert first.startswith(f"{damaged.database}: is damaged (") and first.endswith(RESTORE)
    assert "page" in first
    after = _digest(damaged.data_dir)
    assert after.pop("sslvpn.db-wal", None) in (None, hashlib.sha256(b"").hexdigest())
    assert after == before


def test_serve_refuses_a_damaged_store(damaged: DataPaths, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[GatewayService] = []

    async def fake_serve(service: GatewayService) -> None:
        started.append(service)

    monkeypatch.setattr(serve, "serve", fake_serve)
    line = _refused(_cli(damaged.data_dir, "serve", "--no-portal"))
    assert str(damaged.database) in line
    assert started == []


@pytest.mark.parametrize("args", [("user", "add", "bob"), ("cert", "revoke", "user00001"),
                                  ("cert", "issue", "user00002"), ("crl",)], ids=" ".join)
def test_a_write_command_refuses_and_writes_nothing(damaged: DataPaths, args: tuple[str]) -> None:
    before = _digest(damaged.data_dir)
    _refused(_cli(damaged.data_dir, *args))
    after = _digest(damaged.data_dir)
    assert after.pop("sslvpn.db-wal", None) in (None, hashlib.sha256(b"").hexdigest())
    assert after == before


def test_a_read_that_meets_the_damage_says_so(damaged: DataPaths) -> None:
    _refused(_cli(damaged.data_dir, "user", "list"))


def test_a_long_running_writer_refuses_writes_once_it_meets_the_damage(
    damaged: DataPaths,
) -> None:
    engine = open_engine(database_url(damaged.data_dir, None))  # no check at open, as serve
    try:
        with pytest.raises(integrity.DamagedStoreError, match=RESTORE.replace("`", ".")):
            with session(engine, write=False) as s:
                list_users(s)
        with pytest.raises(integrity.DamagedStoreError), session(engine, write=True) as s:
            record_audit(s, actor="test", action="x", target="y")  # an undamaged table
    finally:
        engine.dispose()


def test_the_start_check_is_bounded_and_finds_the_damage(damaged: DataPaths) -> None:
    engine = open_engine(database_url(damaged.data_dir, None))
    try:
        assert integrity.verify(engine, max_seconds=0.0) is None
        problems = integrity.verify(engine, max_seconds=30.0)
        assert problems and any("page" in p for p in problems), problems
    finally:
        engine.dispose()


def test_a_healthy_store_passes(healthy: Path) -> None:
    engine = open_engine(database_url(healthy, None))
    try:
        assert integrity.verify(engine) == []
    finally:
        engine.dispose()
