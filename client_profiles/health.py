"""Whether a data folder can run the gateway: its files, their permissions and the store.

`sslvpn serve` refuses to start on any `Problem` found here and `sslvpn check` lists them
all; each says which file, what is wrong and what mends it. The files checked are those
the gateway loads (`OpenVpnCredentials.load`, through the same `sslvpn.keyfiles`
readers), so a check that passes means a start that reads them succeeds. Permissions
are stricter than OpenVPN's warnings: private keys and the database (it holds every
client's key) readable by group or others, or a folder others may write, are refused.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from cryptography.exceptions import InvalidSignature
from sqlalchemy import Engine

from client_profiles.pki import WrongPassphrase, load_private_key
from client_profiles.pkifiles import resolve_ca_passphrase
from sslvpn import keyfiles
from sslvpn.config import DataPaths
from sslvpn.keyfiles import DataFileError
from sslvpn.store import integrity

T = TypeVar("T")
SECRET_BITS = 0o077  # any access by group or others
WRITE_BITS = 0o022  # writable by group or others


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a data folder, as one line: file, what is wrong, the fix."""

    path: Path
    problem: str
    fix: str
    kind: str  # "file", "permissions" or "store"

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}; {self.fix}"


def file_problems(paths: DataPaths, control_channel: str | None) -> list[Problem]:
    """Every file the gateway loads, read as it reads them; ``control_channel`` None (the
    store could not say) checks whichever control-channel keys exist."""
    problems: list[Problem] = []
    ca = _read(problems, lambda: keyfiles.read_certificate(paths.ca_cert, keyfiles.CA_CERT))
    cert = _read(problems,
                 lambda: keyfiles.read_certificate(paths.server_cert, keyfiles.SERVER_CERT))
    key = _read(problems,
                lambda: keyfiles.read_private_key(paths.server_key, keyfiles.SERVER_KEY))
    if cert is not None and key is not None:
        _read(problems, lambda: keyfiles.check_pair(paths.server_cert, cert, paths.server_key,
                                                    key, keyfiles.SERVER_KEY))
    if ca is not None and cert is not None:
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            problems.append(Problem(paths.server_cert, f"was not issued by the CA in "
                                    f"{paths.ca_cert}", keyfiles.RENEW_SERVER, "file"))
    tls_crypt, tls_crypt_v2 = keyfiles.wrap_keys_loaded(paths, control_channel)
    if tls_crypt:
        _read(problems, lambda: keyfiles.read_static_key(paths.tls_crypt_key, keyfiles.TLS_CRYPT))
    if tls_crypt_v2:
        _read(problems, lambda: keyfiles.read_tls_crypt_v2_server_key(
            paths.tls_crypt_v2_server_key, keyfiles.TLS_CRYPT_V2))
    if paths.ca_key.exists():  # absent when the CA is kept offline
        _read(problems, lambda: _ca_key(paths))
    return problems


def portal_problems(cert_path: Path, key_path: Path, *, given: bool) -> list[Problem]:
    """The portal's certificate and key: given on the command line, or ours in pki/."""
    cert_role, key_role = ((keyfiles.GIVEN_PORTAL_CERT, keyfiles.GIVEN_PORTAL_KEY) if given
                           else (keyfiles.PORTAL_CERT, keyfiles.PORTAL_KEY))
    problems: list[Problem] = []
    cert = _read(problems, lambda: keyfiles.read_certificate(cert_path, cert_role))
    key = _read(problems, lambda: keyfiles.read_private_key(key_path, key_role))
    if cert is not None and key is not None:
        _read(problems, lambda: keyfiles.check_pair(cert_path, cert, key_path, key, key_role))
    return problems


def permission_problems(paths: DataPaths, *, sqlite: bool,
                        extra_keys: Iterable[Path] = ()) -> list[Problem]:
    """Private keys and the database open to group or others; folders and certificates
    others may write (they could swap the CA the gateway trusts)."""
    secrets = [paths.ca_key, paths.server_key, paths.tls_crypt_key,
               paths.tls_crypt_v2_server_key, paths.portal_key, *extra_keys]
    if sqlite:  # SQLite gives its -wal and -shm files the database's mode
        secrets.append(paths.database)
    public = [paths.ca_cert, paths.server_cert, paths.crl_pem, paths.crl_der, paths.portal_cert]
    problems: list[Problem] = []
    for folder in (paths.data_dir, paths.pki_dir):
        mode = _mode(folder)
        if mode is not None and mode & WRITE_BITS:
            problems.append(Problem(folder, f"is writable by group or others (mode {mode:04o}): "
                                    "they could replace its keys", f"chmod go-w {folder}",
                                    "permissions"))
    for path in secrets:
        mode = _mode(path)
        if mode is not None and mode & SECRET_BITS:
            what = "holds every client's private key" if path == paths.database \
                else "is a private key"
            problems.append(Problem(path, f"{what} but is open to group or others "
                                    f"(mode {mode:04o})", f"chmod 600 {path}", "permissions"))
    for path in public:
        mode = _mode(path)
        if mode is not None and mode & WRITE_BITS:
            problems.append(Problem(path, f"is writable by group or others (mode {mode:04o})",
                                    f"chmod 644 {path}", "permissions"))
    return problems


def store_problems(engine: Engine, *, max_seconds: float | None = None) -> list[Problem]:
    """What ``PRAGMA quick_check`` finds, as one problem; nothing when it runs out of time
    (it logs that)."""
    found = integrity.verify(engine, max_seconds=max_seconds)
    if not found:
        return []
    more = f", and {len(found) - 1} more" if len(found) > 1 else ""
    return [Problem(Path(engine.url.database or "database"), f"is damaged ({found[0]}{more})",
                    integrity.RESTORE_HINT, "store")]


def _read(problems: list[Problem], read: Callable[[], T]) -> T | None:
    """``read()``, or None with the refusal it raised (naming the file) added to problems."""
    try:
        return read()
    except DataFileError as exc:
        problems.append(Problem(exc.path, exc.problem, exc.fix, "file"))
        return None


def _ca_key(paths: DataPaths) -> None:
    """Parse the CA key; an encrypted one only when a passphrase is there to try (without
    one it is needed only to sign, which then says so)."""
    passphrase = resolve_ca_passphrase(None)

    def parse(pem: bytes) -> None:
        if b"ENCRYPTED" in pem and passphrase is None:
            return
        try:
            load_private_key(pem, passphrase)
        except WrongPassphrase as exc:
            raise keyfiles.Unusable(f"cannot be used: {exc}") from None

    keyfiles.read_file(paths.ca_key, keyfiles.CA_KEY, parse)


def _mode(path: Path) -> int | None:
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return None
