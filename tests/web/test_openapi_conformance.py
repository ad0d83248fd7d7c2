"""Schemathesis drives every /api/v1 operation with generated input and checks that each
answer (status, content type, body) is what the served OpenAPI document promises."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from sslvpn.store import db, queries
from tests.web.conftest import PATIENT, FakeGateway, issue_for, make_site
from web.app import create_app, start_portal
from web.import_links import token_hash
from web.openapi import document
from web.portal import PortalSettings

TOKEN = "svt_conformance-token"
schema = schemathesis.openapi.from_dict(document())
schema.config.update(headers={"Authorization": f"Bearer {TOKEN}"})
# Derandomised: the same wide sample every run, so CI never flakes on a lucky draw.
schema.config.generation.update(deterministic=True)


@pytest.fixture(scope="module")
def api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The portal on a loopback port, served from its own thread and event loop."""
    site = make_site(Path(tmp_path_factory.mktemp("api")) / "data")
    with db.session(site.engine, write=True) as s:
        root = queries.get_user(s, name="root")
        assert root.id is not None
        queries.add_api_token(s, user_id=root.id, name="st", token_hash=token_hash(TOKEN))
    gateway = FakeGateway()
    gateway.add("s1", "alice", issue_for(site, "alice"))
    loop = asyncio.new_event_loop()
    settings = PortalSettings(store_budget=PATIENT)
    app = create_app(engine=site.engine, paths=site.paths, control=gateway, settings=settings)
    served = loop.run_until_complete(start_portal(app, "127.0.0.1:0", None))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield served.url.rstrip("/") + "/api/v1"
    finally:
        asyncio.run_coroutine_threadsafe(served.runner.cleanup(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()
        site.engine.dispose()


# One test per operation with its own id ("GET /users"): schemathesis' own parametrize gives
# all of them one node id, and pytest-xdist (make test) schedules by node id, so it ran one
# operation of the 53.
OPERATIONS = [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize("operation", OPERATIONS, ids=[op.label for op in OPERATIONS])
def test_api_matches_its_openapi_document(
    operation: schemathesis.APIOperation, api_url: str
) -> None:
    # A password's strength is zxcvbn's verdict, which no schema can state: a schema-valid
    # password may be refused (400 with the reason). Every other check still applies.
    creates_user = operation.method.upper() == "POST" and operation.path == "/users"
    excluded = [positive_data_acceptance] if creates_user else []

    @given(case=operation.as_strategy())
    @settings(max_examples=40, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def conforms(case: schemathesis.Case) -> None:
        case.call_and_validate(base_url=api_url, excluded_checks=excluded)

    conforms()


def test_served_document_is_the_one_tested(api_url: str) -> None:
    with urllib.request.urlopen(f"{api_url}/openapi.json", timeout=30) as answer:  # noqa: S310
        assert json.load(answer) == document()
