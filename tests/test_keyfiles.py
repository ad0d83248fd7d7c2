"""Every loader of certificates, keys, CRLs and static keys names the file it could not use,
says what the file should hold, and never shows a codec or cryptography FAQ message."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine

from client_profiles import lifecycle, reports
from client_profiles.pki import KeyType, WrongPassphrase
from client_profiles.pkifiles import LifecycleError, open_ca
from sslvpn.config import DataPaths, database_url
from sslvpn.keyfiles import DataFileError
from sslvpn.runtime.openvpn_setup import OpenVpnCredentials
from sslvpn.store import db, queries
from sslvpn.store.models import GatewaySettings
from web.tls import ensure_portal_certificate, tls_context

GARBAGE = {
    "binary": b"\x89\xfe\x00garbage\xff" * 20,
    "text": b"this is not what you think it is\n",
    "empty": b"",
    "truncated PEM": b"-----BEGIN CERTIFICATE-----\nMIIB\n",
}
UNHELPFUL = ("codec can't decode", "cryptography.io", "Traceback", "PEM lib")


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    paths = DataPaths(tmp_path_factory.mktemp("template") / "var")
    paths.data_dir.mkdir()
    engine = db.open_engine(database_url(paths.data_dir, None))
    db.upgrade(engine)
    lifecycle.initialise(paths, engine, public_addresses=["vpn.example.test"],
                         key_type=KeyType.ECDSA_P256)
    with db.session(engine, write=True) as s:
        queries.create_user(s, name="alice")
    lifecycle.issue_client(engine, paths, user_name="alice", actor="test")
    ensure_portal_certificate(paths, ["127.0.0.1"])
    engine.dispose()
    return paths.data_dir


@pytest.fixture
def folder(template: Path, tmp_path: Path) -> tuple[DataPaths, Engine]:
    data_dir = tmp_path / "var"
    shutil.copytree(template, data_dir)
    engine = db.open_engine(database_url(data_dir, None))
    yield DataPaths(data_dir), engine  # type: ignore[misc]
    engine.dispose()


def _settings(engine: Engine) -> GatewaySettings:
    with db.session(engine, write=False) as s:
        return queries.get_settings(s)


def _gateway(paths: DataPaths, engine: Engine) -> None:
    OpenVpnCredentials.load(paths, _settings(engine))


def _ca(paths: DataPaths, _engine: Engine) -> None:
    open_ca(paths, None)


def _issue(paths: DataPaths, engine: Engine) -> None:
    lifecycle.issue_client(engine, paths, user_name="alice", device="phone", actor="test")


def _profile(paths: DataPaths, engine: Engine) -> None:
    reports.render_profile(engine, paths, user_name="alice", actor="test")


def _portal(paths: DataPaths, _engine: Engine) -> None:
    tls_context(paths.portal_cert, paths.portal_key)


Loader = Callable[[DataPaths, Engine], None]
CASES: list[tuple[str, Loader, str]] = [
    ("ca_cert", _gateway, "CA certificate"),
    ("server_cert", _gateway, "gateway's certificate"),
    ("server_key", _gateway, "gateway's private key"),
    ("tls_crypt_key", _gateway, "tls-crypt key"),
    ("ca_cert", _ca, "CA certificate"),
    ("ca_key", _ca, "CA private key"),
    ("tls_crypt_v2_server_key", _issue, "tls-crypt-v2 server key"),
    ("ca_cert", _profile, "CA certificate"),
    ("server_cert", _profile, "gateway's certificate"),
    ("tls_crypt_key", _profile, "tls-crypt key"),
    ("portal_cert", _portal, "portal's certificate"),
    ("portal_key", _portal, "portal's private key"),
]


@pytest.mark.parametrize("garbage", list(GARBAGE), ids=str)
@pytest.mark.parametrize(("attribute", "load", "role"), CASES,
                         ids=[f"{a}-{f.__name__.strip('_')}" for a, f, _ in CASES])
def test_garbage_names_the_file_and_what_it_should_hold(
    folder: tuple[DataPaths, Engine], attribute: str, load: Loader, role: str, garbage: str
) -> None:
    paths, engine = folder
    path: Path = getattr(paths, attribute)
    path.write_bytes(GARBAGE[garbage])
    with pytest.raises((DataFileError, LifecycleError)) as raised:
        load(paths, engine)
    message = str(raised.value)
    assert message.startswith(f"{path}: "), message
    assert role in message and "it should hold" in message, message
    assert not any(noise in message for noise in UNHELPFUL), message
    assert len(message.splitlines()) == 1


@pytest.mark.parametrize(("attribute", "load", "role"), CASES[:4],
                         ids=[a for a, _, _ in CASES[:4]])
def test_a_missing_file_is_named(
    folder: tuple[DataPaths, Engine], attribute: str, load: Loader, role: str
) -> None:
    paths, engine = folder
    path: Path = getattr(paths, attribute)
    path.unlink()
    with pytest.raises(DataFileError, match=f"^{path}: is missing .*{role}"):
        load(paths, engine)


def test_a_key_of_another_certificate_is_refused_by_name(
    folder: tuple[DataPaths, Engine],
) -> None:
    paths, engine = folder
    shutil.copy(paths.portal_key, paths.server_key)  # a valid key, but not server.crt's
    with pytest.raises(DataFileError, match=f"^{paths.server_key}: does not belong to the "
                                            f"certificate in {paths.server_cert}; "):
        _gateway(paths, engine)
    shutil.copy(paths.server_key, paths.ca_key)
    with pytest.raises(LifecycleError, match=f"^{paths.ca_key}: does not belong"):
        _ca(paths, engine)


def test_a_wrong_passphrase_is_still_a_wrong_passphrase(
    folder: tuple[DataPaths, Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    paths, _ = folder
    monkeypatch.setenv("SSLVPN_CA_PASSPHRASE", "x")
    with pytest.raises(WrongPassphrase, match="not encrypted"):
        open_ca(paths, None)
