"""Where sslvpn keeps its files, which database it talks to, and how files are written.

Owns the layout of the data folder (`DataPaths`), the default database URL, and the one
atomic write path for key material and public artefacts. Free of store imports so every
layer may use it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

SECRET_FILE_MODE = 0o600
PUBLIC_FILE_MODE = 0o644
DATABASE_FILE_NAME = "sslvpn.db"


@dataclass(frozen=True)
class DataPaths:
    """Every file in the data folder, named once so no two modules disagree on a path."""

    data_dir: Path
    pki_dir: Path = field(init=False)
    pki_staging_dir: Path = field(init=False)  # `sslvpn init` builds pki/ here first
    ca_cert: Path = field(init=False)
    ca_key: Path = field(init=False)
    server_cert: Path = field(init=False)
    server_key: Path = field(init=False)
    tls_crypt_key: Path = field(init=False)
    tls_crypt_v2_server_key: Path = field(init=False)
    crl_pem: Path = field(init=False)
    crl_der: Path = field(init=False)
    portal_cert: Path = field(init=False)
    portal_key: Path = field(init=False)
    database: Path = field(init=False)
    control_socket: Path = field(init=False)
    heap_snapshots: Path = field(init=False)  # tracemalloc snapshots `serve` writes on SIGUSR2
    serve_lock: Path = field(init=False)

    def __post_init__(self) -> None:
        pki = self.data_dir / "pki"
        derived = {
            "pki_dir": pki,
            "pki_staging_dir": self.data_dir / "pki.incomplete",
            "ca_cert": pki / "ca.crt",
            "ca_key": pki / "ca.key",
            "server_cert": pki / "server.crt",
            "server_key": pki / "server.key",
            "tls_crypt_key": pki / "tls-crypt.key",
            "tls_crypt_v2_server_key": pki / "tls-crypt-v2-server.key",
            "crl_pem": pki / "crl.pem",
            "crl_der": pki / "crl.der",
            "portal_cert": pki / "portal.crt",
            "portal_key": pki / "portal.key",
            "database": self.data_dir / DATABASE_FILE_NAME,
            "control_socket": self.data_dir / "control.sock",
            "heap_snapshots": self.data_dir / "tracemalloc",
            "serve_lock": self.data_dir / "serve.lock",
        }
        for name, path in derived.items():
            object.__setattr__(self, name, path)


def database_url(data_dir: Path, override: str | None) -> str:
    """The URL given on the command line wins; otherwise the SQLite file in the data folder."""
    if override:
        return override
    return f"sqlite:///{(data_dir / DATABASE_FILE_NAME).resolve()}"


def write_secret_file(path: Path, data: bytes) -> None:
    """Write key material so it is never readable by others, not even for an instant."""
    _write_atomically(path, data, SECRET_FILE_MODE)


def write_public_file(path: Path, data: bytes) -> None:
    """Write a certificate, CRL or profile template that anyone on the host may read."""
    _write_atomically(path, data, PUBLIC_FILE_MODE)


def make_directory(directory: Path, mode: int = 0o777) -> None:
    """Create a folder and its missing parents so their entries survive a power cut."""
    missing = [d for d in (directory, *directory.parents) if not d.exists()]
    directory.mkdir(mode=mode, parents=True, exist_ok=True)
    for created in reversed(missing):
        fsync_directory(created.parent)


def rename_directory(source: Path, target: Path) -> None:
    """Move a finished folder into place in one step (onto nothing or an empty folder)."""
    os.rename(source, target)
    fsync_directory(target.parent)


def fsync_directory(directory: Path) -> None:
    """Make renames and new entries in ``directory`` durable across a power cut."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    with atomic_file(path, mode) as handle:
        handle.write(data)


@contextmanager
def atomic_file(path: Path, mode: int = SECRET_FILE_MODE) -> Iterator[IO[bytes]]:
    """A file written through the handle yielded: readers see the old file or the new one,
    never a half-written one (temp file, fsync, rename, fsync of the folder)."""
    make_directory(path.parent)
    # mkstemp creates the file with mode 0600 (O_EXCL), so secrets are never exposed.
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)
