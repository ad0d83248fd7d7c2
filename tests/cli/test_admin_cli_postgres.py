"""The admin commands against a real PostgreSQL (the `--database-url` path)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from sslvpn.cli import main

pytestmark = pytest.mark.postgres


def _run(data_dir: Path, url: str, *args: str) -> Result:
    return CliRunner().invoke(
        main, ["--data-dir", str(data_dir), "--database-url", url, *args], catch_exceptions=False
    )


def test_lifecycle_on_postgres(tmp_path: Path, empty_postgres_url: str) -> None:
    data = tmp_path / "var"
    assert _run(data, empty_postgres_url, "init", "--public-address", "a.example").exit_code == 0
    assert not (data / "sslvpn.db").exists()
    assert _run(data, empty_postgres_url, "user", "add", "alice").exit_code == 0
    issued = _run(data, empty_postgres_url, "cert", "issue", "alice")
    assert issued.exit_code == 0, issued.output
    profile = _run(data, empty_postgres_url, "profile", "alice")
    assert profile.exit_code == 0 and "<cert>" in profile.stdout
    revoked = _run(data, empty_postgres_url, "cert", "revoke", "alice")
    assert revoked.exit_code == 0, revoked.output


def test_second_gateway_in_the_same_database_is_refused(
    tmp_path: Path, empty_postgres_url: str
) -> None:
    first = _run(tmp_path / "one", empty_postgres_url, "init", "--public-address", "a.example")
    assert first.exit_code == 0, first.output
    second = _run(tmp_path / "two", empty_postgres_url, "init", "--public-address", "b.example")
    assert second.exit_code != 0
    assert second.stderr.strip().splitlines() == [
        "error: the database already holds a gateway; use a fresh database"
    ]
    assert not (tmp_path / "two").exists()
