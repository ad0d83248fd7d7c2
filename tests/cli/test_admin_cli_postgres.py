"""The admin commands against a real PostgreSQL (the `--database-url` path)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import make_url, text

from sslvpn.cli import main
from sslvpn.store.db import open_engine

pytestmark = pytest.mark.postgres


@pytest.fixture
def fresh_postgres_url(postgres_url: str) -> Iterator[str]:
    """A brand-new database on the suite's PostgreSQL server, dropped afterwards."""
    name = f"cli_{uuid.uuid4().hex[:12]}"
    admin = open_engine(postgres_url).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    yield make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.engine.dispose()


def _run(data_dir: Path, url: str, *args: str) -> Result:
    return CliRunner().invoke(
        main, ["--data-dir", str(data_dir), "--database-url", url, *args], catch_exceptions=False
    )


def test_lifecycle_on_postgres(tmp_path: Path, fresh_postgres_url: str) -> None:
    data = tmp_path / "var"
    assert _run(data, fresh_postgres_url, "init", "--public-address", "a.example").exit_code == 0
    assert not (data / "sslvpn.db").exists()
    assert _run(data, fresh_postgres_url, "user", "add", "alice").exit_code == 0
    issued = _run(data, fresh_postgres_url, "cert", "issue", "alice")
    assert issued.exit_code == 0, issued.output
    profile = _run(data, fresh_postgres_url, "profile", "alice")
    assert profile.exit_code == 0 and "<cert>" in profile.stdout
    revoked = _run(data, fresh_postgres_url, "cert", "revoke", "alice")
    assert revoked.exit_code == 0, revoked.output


def test_second_gateway_in_the_same_database_is_refused(
    tmp_path: Path, fresh_postgres_url: str
) -> None:
    first = _run(tmp_path / "one", fresh_postgres_url, "init", "--public-address", "a.example")
    assert first.exit_code == 0, first.output
    second = _run(tmp_path / "two", fresh_postgres_url, "init", "--public-address", "b.example")
    assert second.exit_code != 0
    assert second.stderr.strip().splitlines() == [
        "error: the database already holds a gateway; use a fresh database"
    ]
    assert not (tmp_path / "two").exists()
