"""An initialised data folder (SQLite store, PKI files) for lifecycle and interop tests."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine

from client_profiles import accounts, lifecycle
from sslvpn.config import DataPaths, database_url
from sslvpn.store.db import open_engine, upgrade


@dataclass(frozen=True)
class Gateway:
    paths: DataPaths
    engine: Engine


def make_gateway(root: Path, **init: object) -> Gateway:
    """Initialise a data folder in ``root`` with `lifecycle.initialise` and user alice."""
    paths = DataPaths(root)
    root.mkdir(mode=0o700, exist_ok=True)
    engine = open_engine(database_url(root, None))
    upgrade(engine)
    options: dict[str, object] = {"public_addresses": ["198.18.0.1"], **init}
    lifecycle.initialise(paths, engine, **options)  # type: ignore[arg-type]
    accounts.add_user(engine, name="alice", actor="test")
    return Gateway(paths, engine)


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    gw = make_gateway(tmp_path / "data")
    yield gw
    gw.engine.dispose()
