"""Fixtures shared by the whole suite: a private PostgreSQL server and fresh databases on it."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import make_url, text

from sslvpn.store.db import open_engine

POSTGRES_ROOT = Path("/usr/lib/postgresql")  # Debian: one bin/ per major version
POSTGRES_OS_USER = "postgres"  # the server refuses to run as root
POSTGRES_START_TIMEOUT_S = 60
POSTGRES_DATABASE = "sslvpn_test"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _postgres_bin() -> Path:
    """The newest installed server's tools (15 on bookworm); fail, never skip, without one."""
    versions = sorted(
        (p for p in POSTGRES_ROOT.glob("*/bin") if (p / "initdb").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if not versions:
        pytest.fail(f"no PostgreSQL server tools under {POSTGRES_ROOT} (scripts/install-test-deps)")
    return versions[-1]


def _run_as_postgres(args: list[str]) -> None:
    """Run a PostgreSQL tool, as the postgres OS user when we are root."""
    extra: dict[str, Any] = {}
    if os.geteuid() == 0:
        extra = {"user": POSTGRES_OS_USER, "group": POSTGRES_OS_USER}
    done = subprocess.run(args, capture_output=True, text=True, check=False, **extra)
    if done.returncode != 0:
        pytest.fail(f"{args[0]} failed ({done.returncode}): {done.stderr or done.stdout}")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """``postgresql+psycopg://`` URL of a throwaway cluster on 127.0.0.1 (never skipped)."""
    bin_dir = _postgres_bin()
    root = Path(tempfile.mkdtemp(prefix="sslvpn-pg-"))
    data, log = root / "data", root / "server.log"
    if os.geteuid() == 0:
        shutil.chown(root, POSTGRES_OS_USER, POSTGRES_OS_USER)
    port = _free_port()
    server_options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off"
    pg_ctl = str(bin_dir / "pg_ctl")
    try:
        _run_as_postgres(
            [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
             "-E", "UTF8", "--no-sync"]
        )  # fmt: skip
        # -w makes pg_ctl poll until the server accepts connections, bounded by -t.
        _run_as_postgres(
            [pg_ctl, "-D", str(data), "-l", str(log), "-o", server_options, "-w",
             "-t", str(POSTGRES_START_TIMEOUT_S), "start"]
        )  # fmt: skip
        _run_as_postgres(
            [str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
             POSTGRES_DATABASE]
        )  # fmt: skip
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/{POSTGRES_DATABASE}"
    finally:
        if (data / "postmaster.pid").exists():
            _run_as_postgres([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"])
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def empty_postgres_url(postgres_url: str) -> Iterator[str]:
    """A brand-new, empty PostgreSQL database, dropped afterwards."""
    name = f"empty_{uuid.uuid4().hex[:12]}"
    admin = open_engine(postgres_url).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    yield make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.engine.dispose()
