"""`sslvpn check`: exit 0 and one ok line when all is well; else exit 1 and one line per
problem (the file, what is wrong, the fix), or the same as JSON."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from sslvpn.cli import main
from sslvpn.config import DataPaths


def _cli(data_dir: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--data-dir", str(data_dir), *args], catch_exceptions=False)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = tmp_path_factory.mktemp("check") / "var"
    for args in (("init", "--public-address", "vpn.example.test"), ("user", "add", "alice"),
                 ("cert", "issue", "alice")):
        assert _cli(data_dir, *args).exit_code == 0
    return data_dir


@pytest.fixture
def paths(template: Path, tmp_path: Path) -> DataPaths:
    copied = DataPaths(tmp_path / "var")
    shutil.copytree(template, copied.data_dir)
    return copied


def test_a_healthy_folder_is_ok(paths: DataPaths) -> None:
    result = _cli(paths.data_dir, "check")
    assert result.exit_code == 0, result.output
    assert result.output == (f"ok: {paths.data_dir}: store intact, files readable, "
                             "permissions private, CRL agrees with the store\n")
    report = json.loads(_cli(paths.data_dir, "check", "--json").output)
    assert report == {"ok": True, "data_dir": str(paths.data_dir), "problems": []}


def test_each_problem_is_one_line_with_its_file_and_fix(paths: DataPaths) -> None:
    paths.tls_crypt_key.unlink()
    os.chmod(paths.server_key, 0o640)
    assert _cli(paths.data_dir, "cert", "revoke", "alice").exit_code == 0
    paths.crl_der.unlink()  # as a crash between the two CRL files would leave it
    result = _cli(paths.data_dir, "check")
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        f"{paths.tls_crypt_key}: is missing (it should hold the tls-crypt key of every "
        "profile, an OpenVPN static key (-----BEGIN OpenVPN Static key V1-----)); restore it "
        "from a backup with `sslvpn restore FILE`",
        f"{paths.crl_pem}: disagrees with the store: crl.der does not hold CRL 2 of the store; "
        "`sslvpn crl` signs and publishes it again from the store",
        f"{paths.server_key}: is a private key but is open to group or others (mode 0640); "
        f"chmod 600 {paths.server_key}",
    ]  # fmt: skip
    report = json.loads(_cli(paths.data_dir, "check", "--json").output)
    assert report["ok"] is False
    assert [(p["file"], p["kind"]) for p in report["problems"]] == [
        (str(paths.tls_crypt_key), "file"), (str(paths.crl_pem), "crl"),
        (str(paths.server_key), "permissions")]


def test_allowed_permissions_are_warnings(paths: DataPaths) -> None:
    os.chmod(paths.data_dir, 0o757)  # noqa: S103 (the insecure mode under test)
    assert _cli(paths.data_dir, "check").exit_code == 1
    result = _cli(paths.data_dir, "check", "--allow-insecure-permissions")
    assert result.exit_code == 0
    assert result.output == (f"warning: {paths.data_dir}: is writable by group or others "
                             f"(mode 0757): they could replace its keys; chmod go-w "
                             f"{paths.data_dir}\n")


def test_garbage_in_the_portal_files_is_named(paths: DataPaths) -> None:
    paths.portal_cert.write_text("nonsense\n")
    paths.portal_key.write_bytes(b"")
    os.chmod(paths.portal_key, 0o600)
    lines = _cli(paths.data_dir, "check").output.splitlines()
    assert [line.split(": ")[0] for line in lines] == [str(paths.portal_cert),
                                                      str(paths.portal_key)]
    assert "remove portal.crt and portal.key: `sslvpn serve` issues a new pair" in lines[0]


def test_a_missing_folder_is_one_problem(tmp_path: Path) -> None:
    result = _cli(tmp_path / "nowhere", "check")
    assert result.exit_code == 1
    assert result.output == (f"{tmp_path / 'nowhere'}: does not exist; run `sslvpn init` or "
                             "give the right --data-dir\n")
