"""`sslvpn backup` and `sslvpn restore` through the CLI: a round trip gives back the same
gateway, a copy taken beside a busy writer is consistent, and a truncated, corrupt,
altered or hostile archive restores nothing at all."""

from __future__ import annotations

import io
import json
import stat
import tarfile
import threading
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import text
from sqlmodel import select

from sslvpn.cli import backup, main
from sslvpn.config import database_url
from sslvpn.store import snapshot
from sslvpn.store.db import open_engine, session
from sslvpn.store.models import AuditEntry, Certificate


def _run(data_dir: Path, *args: str, url: str | None = None) -> Result:
    extra = ["--database-url", url] if url else []
    return CliRunner().invoke(main, ["--data-dir", str(data_dir), *extra, *args],
                              catch_exceptions=False)


def _gateway(data_dir: Path, url: str | None = None) -> str:
    """An initialised folder with alice's certificate; her profile."""
    assert _run(data_dir, "init", "--public-address", "vpn.example.test", url=url).exit_code == 0
    assert _run(data_dir, "user", "add", "alice", url=url).exit_code == 0
    assert _run(data_dir, "cert", "issue", "alice", url=url).exit_code == 0
    profile = _run(data_dir, "profile", "alice", url=url)
    assert profile.exit_code == 0, profile.output
    return profile.stdout


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (folder / "pki").iterdir()}


def _error(result: Result, fragment: str) -> None:
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("error: ") and fragment in result.stderr, result.stderr


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    _gateway(tmp_path / "var")
    made = _run(tmp_path / "var", "backup", str(tmp_path / "backup.tgz"))
    assert made.exit_code == 0, made.output
    return tmp_path / "backup.tgz"


def test_round_trip_gives_back_the_same_gateway(tmp_path: Path) -> None:
    profile = _gateway(tmp_path / "var")
    made = _run(tmp_path / "var", "backup", str(tmp_path / "backup.tgz"))
    assert made.exit_code == 0 and "0600" in made.stdout and "client key" in made.stdout
    assert stat.S_IMODE((tmp_path / "backup.tgz").stat().st_mode) == 0o600
    restored = _run(tmp_path / "new", "restore", str(tmp_path / "backup.tgz"))
    assert restored.exit_code == 0, restored.output
    assert _files(tmp_path / "new") == _files(tmp_path / "var")
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "new/pki").iterdir()}
    assert modes["ca.key"] == modes["server.key"] == 0o600 and modes["ca.crt"] == 0o644
    assert stat.S_IMODE((tmp_path / "new/sslvpn.db").stat().st_mode) == 0o600
    again = _run(tmp_path / "new", "profile", "alice")
    assert again.stdout.split("<ca>")[1] == profile.split("<ca>")[1]  # same CA, cert and key
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backup.tgz", "new", "var"]


def test_restore_refuses_a_folder_that_holds_anything(tmp_path: Path, archive: Path) -> None:
    target = tmp_path / "busy"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    _error(_run(target, "restore", str(archive)), "is not empty")
    assert [p.name for p in target.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("damage", ["truncated", "flipped"])
def test_a_damaged_archive_restores_nothing(tmp_path: Path, archive: Path, damage: str) -> None:
    data = bytearray(archive.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF
    broken = tmp_path / "broken.tgz"
    broken.write_bytes(bytes(data))
    result = _run(tmp_path / "new", "restore", str(broken))
    assert result.exit_code == 1 and result.stderr.startswith("error: "), result.output
    assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backup.tgz", "broken.tgz", "var"]


def _hand_made(path: Path, members: list[tarfile.TarInfo], manifest: dict[str, object]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        body = json.dumps(manifest).encode()
        info = tarfile.TarInfo(backup.MANIFEST)
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
        for member in members:
            tar.addfile(member, io.BytesIO(b"x" * member.size) if member.isfile() else None)


@pytest.mark.parametrize("name", ["../escaped", "/tmp/absolute", "pki/../../escaped", "link"])
def test_paths_outside_the_folder_and_links_are_refused(tmp_path: Path, name: str) -> None:
    member = tarfile.TarInfo(name)
    if name == "link":
        member.type, member.linkname = tarfile.SYMTYPE, "/etc/passwd"
    else:
        member.size = 1
    hostile = tmp_path / "hostile.tgz"
    _hand_made(hostile, [member], {"format": 1, "database": "sqlite", "files": {}})
    _error(_run(tmp_path / "new", "restore", str(hostile)), "which no sslvpn backup holds")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hostile.tgz"]


def test_a_member_that_differs_from_the_manifest_is_refused(tmp_path: Path) -> None:
    member = tarfile.TarInfo("pki/ca.key")
    member.size = 1
    altered = tmp_path / "altered.tgz"
    _hand_made(altered, [member], {"format": 1, "database": "sqlite",
                                   "files": {"pki/ca.key": "0" * 64}})
    _error(_run(tmp_path / "new", "restore", str(altered)), "incomplete or altered: pki/ca.key")
    assert not (tmp_path / "new").exists()


def test_the_sqlite_copy_is_consistent_beside_a_writer(tmp_path: Path) -> None:
    """A transaction open during the backup neither blocks it nor leaks into it."""
    _gateway(tmp_path / "var")
    engine = open_engine(database_url(tmp_path / "var", None))
    started, release = threading.Event(), threading.Event()

    def writer() -> None:
        with session(engine, write=True) as s:
            s.add(AuditEntry(actor="t", action="uncommitted"))
            s.flush()
            started.set()
            release.wait(30)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert started.wait(10)
        made = _run(tmp_path / "var", "backup", str(tmp_path / "busy.tgz"))
    finally:
        release.set()
        thread.join()
        engine.dispose()
    assert made.exit_code == 0, made.output
    assert _run(tmp_path / "new", "restore", str(tmp_path / "busy.tgz")).exit_code == 0
    copy = open_engine(database_url(tmp_path / "new", None))
    with session(copy, write=False) as s:
        assert s.exec(select(AuditEntry).where(AuditEntry.action == "uncommitted")).first() is None
        assert len(s.exec(select(Certificate)).all()) == 2  # the gateway's and alice's
    copy.dispose()


@pytest.mark.postgres
def test_postgres_round_trip_through_pg_dump(
    tmp_path: Path, empty_postgres_url: str, postgres_url: str
) -> None:
    profile = _gateway(tmp_path / "var", empty_postgres_url)
    made = _run(tmp_path / "var", "backup", str(tmp_path / "pg.tgz"), url=empty_postgres_url)
    assert made.exit_code == 0, made.output
    with tarfile.open(tmp_path / "pg.tgz") as tar:
        assert backup.PGDUMP_MEMBER in tar.getnames()
    _error(_run(tmp_path / "new", "restore", str(tmp_path / "pg.tgz"), url=empty_postgres_url),
           "not empty")
    _error(_run(tmp_path / "new", "restore", str(tmp_path / "pg.tgz")), "--database-url")
    fresh = _fresh_database(postgres_url, "restored")
    restored = _run(tmp_path / "new", "restore", str(tmp_path / "pg.tgz"), url=fresh)
    assert restored.exit_code == 0, restored.output
    assert not (tmp_path / "new" / backup.PGDUMP_MEMBER).exists()
    again = _run(tmp_path / "new", "profile", "alice", url=fresh)
    assert again.stdout.split("<ca>")[1] == profile.split("<ca>")[1]


@pytest.mark.postgres
def test_postgres_without_pg_dump_backs_up_the_pki_and_says_how_to_dump(
    tmp_path: Path, empty_postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _gateway(tmp_path / "var", empty_postgres_url)
    monkeypatch.setattr(snapshot, "find_tool", lambda _name: None)
    made = _run(tmp_path / "var", "backup", str(tmp_path / "pki.tgz"), url=empty_postgres_url)
    assert made.exit_code == 0, made.output
    assert "pg_dump --format=custom" in made.stderr and "@" in made.stderr
    with tarfile.open(tmp_path / "pki.tgz") as tar:
        assert sorted(tar.getnames())[:2] == ["pki/ca.crt", "pki/ca.key"]
        assert backup.PGDUMP_MEMBER not in tar.getnames()
    # the database itself survived: the PKI comes back beside it
    restored = _run(tmp_path / "new", "restore", str(tmp_path / "pki.tgz"), url=empty_postgres_url)
    assert restored.exit_code == 0 and "holds no database" in restored.stderr
    assert _files(tmp_path / "new") == _files(tmp_path / "var")
    assert _run(tmp_path / "new", "profile", "alice", url=empty_postgres_url).exit_code == 0


def _fresh_database(postgres_url: str, prefix: str) -> str:
    admin = open_engine(postgres_url).execution_options(isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.engine.dispose()
    return postgres_url.rsplit("/", 1)[0] + f"/{name}"


def test_every_archive_member_is_private(archive: Path) -> None:
    with tarfile.open(archive) as tar:
        assert {member.mode for member in tar.getmembers()} == {0o600}
        assert "pki/ca.key" in tar.getnames()
