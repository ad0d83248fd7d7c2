"""The PKI files in the data folder: loading the CA and writing files all-or-nothing.

`FileBatch` lets a lifecycle operation write its files inside the database transaction
and put every file back as it was when anything (including the commit) fails, so an
operator never finds half a PKI. The CA passphrase comes from the caller or from the
``SSLVPN_CA_PASSPHRASE`` environment variable and is never logged.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from client_profiles.pki import CertificateAuthority, load_private_key
from sslvpn import keyfiles
from sslvpn.config import DataPaths, write_public_file, write_secret_file
from sslvpn.keyfiles import DataFileError

CA_PASSPHRASE_ENV = "SSLVPN_CA_PASSPHRASE"  # noqa: S105 (a variable name, not a secret)


class LifecycleError(Exception):
    """An operation was refused; the message is one line safe to show an operator."""


def resolve_ca_passphrase(given: str | None) -> bytes | None:
    """The passphrase given, else the one in the environment, else none."""
    value = given if given is not None else os.environ.get(CA_PASSPHRASE_ENV)
    return value.encode("utf-8") if value else None


def require_initialised(paths: DataPaths) -> None:
    """Refuse to work on a data folder that `sslvpn init` has not prepared.

    Only the CA certificate is required: the CA key may be kept offline, and only the
    operations that sign (`open_ca`) need it.
    """
    if not paths.data_dir.is_dir():
        raise LifecycleError(f"data folder {paths.data_dir} does not exist; run `sslvpn init`")
    if paths.ca_cert.is_file():
        return
    if paths.pki_staging_dir.exists():
        raise LifecycleError(
            f"`sslvpn init` of {paths.data_dir} was interrupted; run it again to finish it"
        )
    if paths.ca_key.is_file():
        raise LifecycleError(
            f"data folder {paths.data_dir} has a CA key but no CA certificate "
            f"({paths.ca_cert}); {keyfiles.RESTORE}"
        )
    raise LifecycleError(f"data folder {paths.data_dir} has no CA; run `sslvpn init`")


def open_ca(paths: DataPaths, passphrase: str | None) -> CertificateAuthority:
    """Load the CA (raises `WrongPassphrase` for a wrong or missing passphrase)."""
    require_initialised(paths)
    if not paths.ca_key.is_file():
        raise LifecycleError(
            f"the CA key is not in {paths.pki_dir} (kept offline?); "
            f"put {paths.ca_key.name} back to sign certificates or the CRL"
        )
    secret = resolve_ca_passphrase(passphrase)
    with file_refusals():
        certificate = keyfiles.read_certificate(paths.ca_cert, keyfiles.CA_CERT)
        key = keyfiles.read_file(
            paths.ca_key, keyfiles.CA_KEY, lambda pem: load_private_key(pem, secret)
        )
        keyfiles.check_pair(paths.ca_cert, certificate, paths.ca_key, key, keyfiles.CA_KEY)
    return CertificateAuthority(certificate, key)


@contextmanager
def file_refusals() -> Iterator[None]:
    """A `DataFileError` (which names the file) becomes a LifecycleError, the refusal
    operators and the portal already show."""
    try:
        yield
    except DataFileError as exc:
        raise LifecycleError(str(exc)) from None


@dataclass
class FileBatch:
    """Files written during one operation, restorable if the operation fails later."""

    _previous: list[tuple[Path, bytes | None, bool]] = field(default_factory=list, repr=False)

    def write(self, path: Path, data: bytes, *, secret: bool) -> None:
        """Write atomically (0600 for secrets), remembering what was there before."""
        previous = path.read_bytes() if path.exists() else None
        self._previous.append((path, previous, secret))
        _write(path, data, secret=secret)

    def undo(self) -> None:
        """Put every written file back as it was (newest first)."""
        for path, previous, secret in reversed(self._previous):
            if previous is None:
                path.unlink(missing_ok=True)
            else:
                _write(path, previous, secret=secret)
        self._previous.clear()


def _write(path: Path, data: bytes, *, secret: bool) -> None:
    if secret:
        write_secret_file(path, data)
    else:
        write_public_file(path, data)
