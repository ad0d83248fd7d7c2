"""`serve` checks at start every file its settings need and the permissions of keys,
database and folders, and refuses (one line per problem, file first, with the fix) before
it starts anything; --allow-insecure-permissions lets permission problems through."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from client_profiles.pki import (
    KeyType,
    certificate_pem,
    create_ca,
    issue_server_certificate,
    private_key_pem,
)
from sslvpn.cli import main, serve
from sslvpn.config import DataPaths
from sslvpn.runtime.service import GatewayService
from sslvpn.store.models import utcnow


def _cli(data_dir: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--data-dir", str(data_dir), *args], catch_exceptions=False)


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    made = {}
    for channel in ("tls-crypt", "tls-crypt-v2"):
        data_dir = tmp_path_factory.mktemp(channel) / "var"
        result = _cli(data_dir, "init", "--public-address", "vpn.example.test",
                      "--control-channel", channel)
        assert result.exit_code == 0, result.output
        made[channel] = data_dir
    return made


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[GatewayService]:
    """The services `serve` went on to run (none when it refused)."""
    services: list[GatewayService] = []

    async def fake_serve(service: GatewayService) -> None:
        services.append(service)

    monkeypatch.setattr(serve, "serve", fake_serve)
    return services


def _folder(templates: dict[str, Path], tmp_path: Path, channel: str = "tls-crypt") -> DataPaths:
    paths = DataPaths(tmp_path / "var")
    shutil.copytree(templates[channel], paths.data_dir)
    return paths


def _serve(paths: DataPaths, *extra: str) -> Result:
    return _cli(paths.data_dir, "serve", "--no-portal", "--workers", "1", *extra)


def _refused(result: Result, *lines: str) -> None:
    assert result.exit_code == 1, result.output
    assert result.stderr.splitlines() == [f"error: {line}" for line in lines], result.stderr


def test_a_healthy_folder_starts(templates: dict[str, Path], tmp_path: Path,
                                 started: list[GatewayService]) -> None:
    result = _serve(_folder(templates, tmp_path))
    assert result.exit_code == 0, result.output
    assert len(started) == 1


def test_a_missing_tls_crypt_key_is_refused_by_name(
    templates: dict[str, Path], tmp_path: Path, started: list[GatewayService]
) -> None:
    paths = _folder(templates, tmp_path)
    paths.tls_crypt_key.unlink()
    _refused(_serve(paths), f"{paths.tls_crypt_key}: is missing (it should hold the tls-crypt "
             "key of every profile, an OpenVPN static key (-----BEGIN OpenVPN Static key "
             "V1-----)); restore it from a backup with `sslvpn restore FILE`")
    assert started == []


def test_the_key_the_profiles_use_is_the_one_required(
    templates: dict[str, Path], tmp_path: Path, started: list[GatewayService]
) -> None:
    paths = _folder(templates, tmp_path, "tls-crypt-v2")
    paths.tls_crypt_key.unlink()  # tls-crypt-v2 profiles never use it
    assert _serve(paths).exit_code == 0 and len(started) == 1
    paths.tls_crypt_v2_server_key.unlink()
    result = _serve(paths)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {paths.tls_crypt_v2_server_key}: is missing ")
    assert len(started) == 1


def test_every_problem_gets_its_own_line(
    templates: dict[str, Path], tmp_path: Path, started: list[GatewayService]
) -> None:
    paths = _folder(templates, tmp_path)
    paths.server_cert.write_bytes(b"\x00\x01garbage")
    paths.tls_crypt_key.write_text("-----BEGIN OpenVPN Static key V1-----\nabcd\n"
                                   "-----END OpenVPN Static key V1-----\n")
    result = _serve(paths)
    assert result.exit_code == 1 and started == []
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith(f"error: {paths.server_cert}: holds binary data, not text")
    assert lines[1].startswith(f"error: {paths.tls_crypt_key}: is garbled (it should hold")


def test_a_server_certificate_from_another_ca_is_refused(
    templates: dict[str, Path], tmp_path: Path, started: list[GatewayService]
) -> None:
    paths = _folder(templates, tmp_path)
    other = create_ca(common_name="other", key_type=KeyType.ECDSA_P256, now=utcnow())
    issued = issue_server_certificate(other, common_name="vpn.example.test",
                                      public_addresses=["vpn.example.test"], now=utcnow())
    paths.server_cert.write_bytes(certificate_pem(issued.certificate))
    paths.server_key.write_bytes(private_key_pem(issued.private_key))
    result = _serve(paths)
    assert result.exit_code == 1 and started == []
    assert f"error: {paths.server_cert}: was not issued by the CA in {paths.ca_cert}; " \
           "`sslvpn cert renew SERIAL`" in result.stderr


@pytest.mark.parametrize(("target", "mode", "problem", "fix"), [
    ("server_key", 0o644, "is a private key but is open to group or others (mode 0644)",
     "chmod 600 {}"),
    ("ca_key", 0o640, "is a private key but is open to group or others (mode 0640)",
     "chmod 600 {}"),
    ("database", 0o644, "holds every client's private key but is open to group or others "
     "(mode 0644)", "chmod 600 {}"),
    ("data_dir", 0o777, "is writable by group or others (mode 0777): they could replace its "
     "keys", "chmod go-w {}"),
    ("ca_cert", 0o666, "is writable by group or others (mode 0666)", "chmod 644 {}"),
])
def test_insecure_permissions_are_refused_with_the_chmod_that_fixes_them(
    templates: dict[str, Path], tmp_path: Path, started: list[GatewayService],
    caplog: pytest.LogCaptureFixture, target: str, mode: int, problem: str, fix: str,
) -> None:
    paths = _folder(templates, tmp_path)
    path: Path = getattr(paths, target)
    os.chmod(path, mode)
    _refused(_serve(paths), f"{path}: {problem}; {fix.format(path)}")
    assert started == []
    with caplog.at_level(logging.WARNING):
        result = _serve(paths, "--allow-insecure-permissions")
    assert result.exit_code == 0, result.output
    assert len(started) == 1
    assert f"allowed by --allow-insecure-permissions: {path}: {problem}" in caplog.text
