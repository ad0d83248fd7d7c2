"""`sslvpn backup FILE` and `sslvpn restore FILE`: a data folder in one archive, and back.

The archive (tar + gzip) holds a manifest with every member's SHA-256, the PKI folder and
a consistent copy of the database: SQLite through its online backup API (safe while
`serve` writes), PostgreSQL as a ``pg_dump`` when the tool is installed (else the operator
is told how to dump it). It holds the CA key and every client key, so it is written 0600
and atomically. `restore` takes only an archive whose members are plain files with the
names a backup uses and the manifest's hashes, unpacks it into a temporary folder beside
the data folder and renames that into place, so a truncated, corrupt or hostile archive
leaves nothing behind; it never restores over a folder that holds anything.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import click
from sqlalchemy import inspect

from client_profiles import crl
from client_profiles.pkifiles import LifecycleError, require_initialised
from sslvpn.cli.setup import ACTOR, obj_of, one_line_errors, paths_of, require_data_folder, store
from sslvpn.config import (
    DataPaths,
    atomic_file,
    database_url,
    fsync_directory,
    rename_directory,
)
from sslvpn.store import snapshot
from sslvpn.store.db import open_engine

MANIFEST = "sslvpn-backup.json"
FORMAT = 1
SQLITE_MEMBER = "sslvpn.db"
PGDUMP_MEMBER = "database.pgdump"
_PKI_MEMBER = re.compile(r"pki/[A-Za-z0-9][A-Za-z0-9._-]*")
_CHUNK = 1 << 20
_UNREADABLE = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, UnicodeDecodeError,
               json.JSONDecodeError)


@click.command("backup")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.pass_context
@one_line_errors
def backup_command(ctx: click.Context, file: Path) -> None:
    """Write the data folder (PKI and database) to FILE, a tar.gz only you can read.

    Safe while `sslvpn serve` runs. FILE holds the CA key and every client key: keep it
    as secret as the data folder.
    """
    paths = paths_of(ctx)
    require_data_folder(ctx, write=False)
    require_initialised(paths)
    url = database_url(paths.data_dir, obj_of(ctx).database_url)
    kind = snapshot.backend(url)
    file = file.absolute()
    with tempfile.TemporaryDirectory(dir=file.parent, prefix=f".{file.name}.") as work:
        members: dict[str, Path] = {}
        if kind == "sqlite":
            members[SQLITE_MEMBER] = Path(work, SQLITE_MEMBER)
            snapshot.copy_sqlite(snapshot.sqlite_path(url), members[SQLITE_MEMBER])
        elif (tool := snapshot.find_tool("pg_dump")) is not None:
            members[PGDUMP_MEMBER] = Path(work, PGDUMP_MEMBER)
            snapshot.dump_postgres(url, members[PGDUMP_MEMBER], tool)
        else:
            kind = "none"
        _write_archive(file, paths, members, kind)
    click.echo(f"wrote {file} (mode 0600: it holds the CA key and every client key)")
    if kind == "none":
        click.echo("warning: pg_dump is not installed, so the backup holds only the PKI "
                   f"folder; dump the database too: {snapshot.dump_command(url)}", err=True)


@click.command("restore")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_context
@one_line_errors
def restore_command(ctx: click.Context, file: Path) -> None:
    """Rebuild the data folder (new or empty) from a backup FILE made by `sslvpn backup`.

    With --database-url, a PostgreSQL dump in FILE is restored into that database, which
    must be empty.
    """
    paths = paths_of(ctx)
    target_url = obj_of(ctx).database_url
    if paths.data_dir.exists() and (not paths.data_dir.is_dir() or any(paths.data_dir.iterdir())):
        raise LifecycleError(f"data folder {paths.data_dir} is not empty; restore into a new one")
    paths.data_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=paths.data_dir.parent,
                                    prefix=f".{paths.data_dir.name}.restore-"))
    try:
        kind = _unpack(file, staging)
        _restore_database(kind, staging, target_url)
        fsync_directory(staging)
        if paths.data_dir.exists():
            paths.data_dir.rmdir()  # empty: the restored folder takes its place
        rename_directory(staging, paths.data_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    click.echo(f"restored {paths.data_dir} from {file}")
    if kind == "none":
        click.echo("warning: the backup holds no database (pg_dump was missing when it was "
                   "made): restore your own dump into the database now", err=True)
        return
    with store(ctx, write=True) as engine:
        mended = crl.mend_crl(paths, engine, actor=ACTOR)
    if mended.failure is not None:
        click.echo(f"warning: {mended.problem}; not mended: {mended.failure}", err=True)


def _write_archive(file: Path, paths: DataPaths, databases: dict[str, Path], kind: str) -> None:
    """The manifest, the database copy and the PKI files, written atomically 0600."""
    pki = {f"pki/{p.name}": p.read_bytes() for p in sorted(paths.pki_dir.iterdir())
           if p.is_file() and not p.name.startswith(".")}
    hashes = {name: hashlib.sha256(data).hexdigest() for name, data in pki.items()}
    hashes |= {name: _sha256_of(path) for name, path in databases.items()}
    manifest = {"format": FORMAT, "created_at": datetime.now(UTC).isoformat(),
                "database": kind, "files": hashes}
    with atomic_file(file) as raw, tarfile.open(fileobj=raw, mode="w:gz") as archive:
        _add(archive, MANIFEST, io.BytesIO(json.dumps(manifest, indent=1).encode()))
        for name, path in databases.items():
            with path.open("rb") as handle:
                _add(archive, name, handle)
        for name, data in pki.items():
            _add(archive, name, io.BytesIO(data))


def _add(archive: tarfile.TarFile, name: str, source: IO[bytes]) -> None:
    info = tarfile.TarInfo(name)
    info.size = source.seek(0, io.SEEK_END)
    source.seek(0)
    info.mode, info.mtime = 0o600, int(datetime.now(UTC).timestamp())
    archive.addfile(info, source)


def _unpack(file: Path, staging: Path) -> str:
    """Check and unpack the archive into ``staging``; returns the manifest's database kind."""
    try:
        with tarfile.open(file, mode="r:gz") as archive:
            manifest, written = _unpack_members(file, archive, staging)
    except _UNREADABLE as exc:
        raise LifecycleError(f"{file} is not a complete sslvpn backup: {exc}") from None
    files = manifest.get("files")
    if manifest.get("format") != FORMAT or not isinstance(files, dict):
        raise LifecycleError(f"{file} is a backup of a format this version does not know")
    if written != files:
        altered = sorted(set(written.items()) ^ set(files.items()))
        raise LifecycleError(f"{file} is incomplete or altered: {altered[0][0]} differs "
                             "from its manifest")
    kind = str(manifest.get("database"))
    if kind not in ("sqlite", "postgresql", "none"):
        raise LifecycleError(f"{file} names an unknown database kind {kind!r}")
    return kind


def _unpack_members(file: Path, archive: tarfile.TarFile,
                    staging: Path) -> tuple[dict[str, Any], dict[str, str]]:
    manifest: dict[str, Any] | None = None
    written: dict[str, str] = {}
    for member in _members(file, archive):
        source = archive.extractfile(member)
        if source is None:
            raise tarfile.ReadError(f"{member.name} has no contents")
        if member.name == MANIFEST:
            manifest = json.loads(source.read().decode("utf-8"))
            continue
        target = staging / member.name
        target.parent.mkdir(mode=0o700, exist_ok=True)
        secret = not member.name.startswith("pki/") or member.name.endswith(".key")
        written[member.name] = _stream_to(source, target, 0o600 if secret else 0o644)
    if not isinstance(manifest, dict):
        raise LifecycleError(f"{file} has no manifest ({MANIFEST}); it is no sslvpn backup")
    if (staging / "pki").is_dir():
        fsync_directory(staging / "pki")
    return manifest, written


def _members(file: Path, archive: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """Only plain files named as a backup names them, each once: never a link, a device,
    an absolute path or a ``..`` that would land outside the folder."""
    seen: set[str] = set()
    for member in archive:
        name = member.name
        known = name in (MANIFEST, SQLITE_MEMBER, PGDUMP_MEMBER) or _PKI_MEMBER.fullmatch(name)
        if not known or not member.isfile() or name in seen:
            raise LifecycleError(f"{file} holds {name!r}, which no sslvpn backup holds; "
                                 "nothing was restored")
        seen.add(name)
        yield member


def _stream_to(source: IO[bytes], target: Path, mode: int) -> str:
    """Copy into a new file of ``mode`` (from its first byte) and fsync it; its SHA-256."""
    digest = hashlib.sha256()
    fd = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode)
    with os.fdopen(fd, "wb") as out:
        os.fchmod(out.fileno(), mode)  # not narrowed by the umask
        while chunk := source.read(_CHUNK):
            digest.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    return digest.hexdigest()


def _restore_database(kind: str, staging: Path, target_url: str | None) -> None:
    """Put the backup's database where this command's options say the store is."""
    if kind == "sqlite":
        if target_url is not None:
            raise LifecycleError("this backup holds a SQLite database: restore it without "
                                 "--database-url")
        problem = snapshot.check_sqlite(staging / SQLITE_MEMBER)
        if problem is not None:
            raise LifecycleError(f"the database in the backup is damaged: {problem}")
        return
    if target_url is None or snapshot.backend(target_url) != "postgresql":
        raise LifecycleError("this backup is of a gateway on PostgreSQL: give --database-url "
                             "of an empty PostgreSQL database")
    if kind == "postgresql":
        tool = snapshot.find_tool("pg_restore")
        if tool is None:
            raise LifecycleError("pg_restore is not installed; install the PostgreSQL client")
        _refuse_a_used_database(target_url)
        dump = staging / PGDUMP_MEMBER
        snapshot.restore_postgres(target_url, dump, tool)
        dump.unlink()


def _refuse_a_used_database(url: str) -> None:
    engine = open_engine(url)
    try:
        tables = inspect(engine).get_table_names()
    finally:
        engine.dispose()
    if tables:
        raise LifecycleError("the database of --database-url is not empty; restore into a "
                             "new one")


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


COMMANDS: list[click.Command] = [backup_command, restore_command]
