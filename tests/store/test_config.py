"""Data-folder paths, the default database URL, and atomic file writes."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from sslvpn.config import DataPaths, database_url, write_public_file, write_secret_file


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """A umask that would leave files world-readable unless the writer sets the mode."""
    old = os.umask(0o000)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_every_file_has_one_name_inside_the_data_folder(tmp_path: Path) -> None:
    paths = DataPaths(tmp_path)
    pki = tmp_path / "pki"
    assert paths.pki_dir == pki
    assert (paths.ca_cert, paths.ca_key) == (pki / "ca.crt", pki / "ca.key")
    assert (paths.server_cert, paths.server_key) == (pki / "server.crt", pki / "server.key")
    assert paths.tls_crypt_key == pki / "tls-crypt.key"
    assert paths.tls_crypt_v2_server_key == pki / "tls-crypt-v2-server.key"
    assert (paths.crl_pem, paths.crl_der) == (pki / "crl.pem", pki / "crl.der")
    assert (paths.portal_cert, paths.portal_key) == (pki / "portal.crt", pki / "portal.key")
    assert paths.database == tmp_path / "sslvpn.db"
    assert paths.control_socket == tmp_path / "control.sock"
    with pytest.raises(AttributeError):
        paths.data_dir = Path("/elsewhere")  # type: ignore[misc]


def test_database_url_defaults_to_the_absolute_sqlite_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert database_url(Path("var"), None) == f"sqlite:///{tmp_path}/var/sslvpn.db"
    override = "postgresql+psycopg://sslvpn@db.internal/sslvpn"
    assert database_url(Path("var"), override) == override


@pytest.mark.usefixtures("permissive_umask")
def test_secret_files_are_private_even_when_replaced(tmp_path: Path) -> None:
    path = tmp_path / "pki" / "ca.key"
    write_secret_file(path, b"first")
    assert (path.read_bytes(), _mode(path)) == (b"first", 0o600)
    path.chmod(0o644)  # someone loosened it; a rewrite must not inherit that
    write_secret_file(path, b"second")
    assert (path.read_bytes(), _mode(path)) == (b"second", 0o600)
    assert sorted(p.name for p in path.parent.iterdir()) == ["ca.key"]


def test_public_files_are_world_readable(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        write_public_file(tmp_path / "ca.crt", b"cert")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "ca.crt") == 0o644


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "server.key"
    write_secret_file(path, b"old key")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_secret_file(path, b"new key")
    assert path.read_bytes() == b"old key"
    assert [p.name for p in tmp_path.iterdir()] == ["server.key"]
