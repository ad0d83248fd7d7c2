"""Fixtures shared by the whole suite: a private PostgreSQL server and fresh databases on it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings
from sqlalchemy import make_url, text

from sslvpn.store.db import open_engine
from tests.pgcluster import postgres_cluster

# Wall-clock limits on examples measure the machine, not the code: under `make test`'s workers
# sharing two cores, an example took 339 ms against the 200 ms default deadline and failed.
settings.register_profile("suite", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("suite")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """``postgresql+psycopg://`` URL of a throwaway cluster on 127.0.0.1 (never skipped)."""
    with postgres_cluster() as cluster:
        yield cluster.url


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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The interop tests, which mostly wait on real peers, come first: under `make test`'s
    pytest-xdist workers (one module at a time each, see pyproject.toml) the many short unit
    tests then fill the end of the run instead of one long wait starting last."""
    items.sort(key=lambda item: item.get_closest_marker("interop") is None)
