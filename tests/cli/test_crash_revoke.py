"""`sslvpn cert revoke` killed (SIGKILL) at each CRL file replacement never leaves a CRL
that disagrees with the store once the next CLI call or `serve` start has run.

The real CLI runs in a subprocess under tests/kill_at.py, which kills it just before or
just after its Nth os.replace: six kills, at the revocation's two files (crl.der, then
crl.pem) before and after each, then a revocation and its repair each killed after the
first file. After each kill the next `cert
list` (the CLI) or `serve`'s start-up mend must leave crl.pem and crl.der the same CRL,
listing exactly what the store calls revoked, with a number that only went up, and no
later revocation may un-revoke anything.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner, Result
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtensionOID
from sqlmodel import select

from client_profiles import accounts, lifecycle
from sslvpn.cli import main, serve_node
from sslvpn.config import DataPaths, database_url
from sslvpn.store.db import open_engine, session
from sslvpn.store.models import Certificate

KILL_AT = str(Path(__file__).resolve().parent.parent / "kill_at.py")
Kill = tuple[tuple[str, ...], int, str]  # (sslvpn arguments, nth os.replace, before|after)


def _run(data_dir: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--data-dir", str(data_dir), *args], catch_exceptions=False)


def _kill(data_dir: Path, args: tuple[str, ...], nth: int, when: str) -> None:
    argv = [sys.executable, KILL_AT, "replace", str(nth), when, "--data-dir", str(data_dir), *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == -signal.SIGKILL, (args, nth, when, done.stderr)


def _serve_start(data_dir: Path) -> None:
    """What `sslvpn serve` does with the CRL before its gateway starts."""
    engine = open_engine(database_url(data_dir, None))
    try:
        serve_node.mend_crl(DataPaths(data_dir), engine)
    finally:
        engine.dispose()


def _revoked_in_store(data_dir: Path) -> set[str]:
    engine = open_engine(database_url(data_dir, None))
    try:
        with session(engine, write=False) as s:
            rows = s.exec(select(Certificate).where(Certificate.status == "revoked")).all()
            return {row.serial for row in rows}
    finally:
        engine.dispose()


def _consistent(data_dir: Path, last_number: int) -> tuple[set[str], int]:
    """crl.pem and crl.der are one CRL that lists exactly the store's revocations."""
    paths = DataPaths(data_dir)
    pem = x509.load_pem_x509_crl(paths.crl_pem.read_bytes())
    der = x509.load_der_x509_crl(paths.crl_der.read_bytes())
    assert pem.public_bytes(Encoding.DER) == paths.crl_der.read_bytes(), "pem != der"
    listed = {format(entry.serial_number, "x") for entry in der}
    assert listed == _revoked_in_store(data_dir)
    number = int(der.extensions.get_extension_for_oid(ExtensionOID.CRL_NUMBER).value.crl_number)
    assert number >= last_number
    assert not list(paths.pki_dir.glob(".*.tmp")), "a killed write's temporary file stayed"
    return listed, number


def test_kills_at_every_crl_replacement_leave_store_and_files_consistent(tmp_path: Path) -> None:
    data = tmp_path / "var"
    assert _run(data, "init", "--public-address", "vpn.example.test").exit_code == 0
    engine = open_engine(database_url(data, None))
    serials = []
    for n in range(6):
        accounts.add_user(engine, name=f"u{n}", actor="t")
        row = lifecycle.issue_client(engine, DataPaths(data), user_name=f"u{n}", actor="t")
        serials.append(row.serial)
    engine.dispose()
    listed: set[str] = set()
    number = 1
    # (kills in order, what runs next): the revocation killed at each replacement, then
    # revocations whose repair is killed at each of its own replacements
    scenarios: list[tuple[list[Kill], str]] = [
        ([(("cert", "revoke", serials[0]), 1, "before")], "cli"),
        ([(("cert", "revoke", serials[1]), 1, "after")], "serve"),
        ([(("cert", "revoke", serials[2]), 2, "before")], "cli"),
        ([(("cert", "revoke", serials[3]), 2, "after")], "serve"),
        ([(("cert", "revoke", serials[4]), 1, "after"), (("cert", "list"), 1, "after")], "cli"),
    ]
    for kills, then in scenarios:
        for args, nth, when in kills:
            _kill(data, args, nth, when)
        if then == "cli":
            assert _run(data, "cert", "list").exit_code == 0
        else:
            _serve_start(data)
        before = listed
        listed, number = _consistent(data, number)
        assert before < listed  # the killed revocation was committed and nothing un-revoked
    assert _run(data, "cert", "revoke", serials[5]).exit_code == 0
    final, _ = _consistent(data, number)
    assert final == set(serials)
