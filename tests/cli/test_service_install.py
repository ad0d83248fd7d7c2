"""`sslvpn service install`: the unit has the contract's directives and systemd accepts it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from sslvpn.cli import main


def _install(tmp_path: Path, *args: str) -> str:
    unit = tmp_path / "sslvpn.service"
    result = CliRunner().invoke(main, ["--data-dir", str(tmp_path / "my data"), "service",
                                       "install", "--unit-file", str(unit), *args])
    assert result.exit_code == 0, result.output
    assert unit.stat().st_mode & 0o777 == 0o644
    return unit.read_text()


def test_the_unit_is_a_hardened_notify_service_with_a_watchdog(tmp_path: Path) -> None:
    text = _install(tmp_path, "--watchdog-sec", "20", "--", "--metrics-listen", "9100")
    lines = set(text.splitlines())
    data = tmp_path / "my data"
    sslvpn = Path(sys.executable).with_name("sslvpn")
    assert f'ExecStart={sslvpn} --data-dir "{data}" serve --metrics-listen 9100' in lines
    assert {"Type=notify", "Restart=on-failure", "WatchdogSec=20", "NoNewPrivileges=yes",
            "ProtectSystem=strict", f'ReadWritePaths="{data}"',
            "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_BIND_SERVICE",
            "LimitNOFILE=1048576", "DeviceAllow=/dev/net/tun rw"} <= lines
    assert "DATABASE" not in text  # a URL may hold a password; units are world readable


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is not installed (run scripts/install-test-deps)")
    text = _install(tmp_path)
    unit = tmp_path / "sslvpn.service"
    (tmp_path / "my data").mkdir()
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Unknown key" not in result.stderr and "Invalid" not in result.stderr, result.stderr
    assert "Type=notify" in text


def test_a_database_url_is_left_to_the_environment_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, [
        "--data-dir", str(tmp_path), "--database-url", "postgresql+psycopg://u:secret@db/x",
        "service", "install", "--unit-file", str(tmp_path / "u.service")])
    assert result.exit_code == 0, result.output
    assert "/etc/default/sslvpn" in result.output
    assert "secret" not in (tmp_path / "u.service").read_text()
