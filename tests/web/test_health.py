"""/healthz and /readyz on the portal and on the metrics listener; /metrics content types."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiohttp.test_utils import TestClient, TestServer

from sslvpn.runtime.metrics import Metrics, on_loop
from sslvpn.store.async_store import AsyncStore
from tests.web.conftest import Site
from web.health import CHECK_TIMEOUT, Health, store_reachable
from web.ops import create_ops_app, metrics_listen


async def test_the_portal_answers_probes_without_a_login(client: TestClient) -> None:
    alive = await client.get("/healthz", allow_redirects=False)
    assert alive.status == 200 and await alive.json() == {"alive": True}
    assert alive.headers["Cache-Control"] == "no-store"
    ready = await client.get("/readyz", allow_redirects=False)
    assert ready.status == 200
    assert await ready.json() == {"ready": True, "checks": {"store": True}}


async def _never() -> bool:
    await asyncio.Event().wait()
    return True


async def _no() -> bool:
    return False


async def test_readyz_names_each_failing_check_within_its_bound(site: Site) -> None:
    store = AsyncStore(site.engine)
    health = Health(checks={"store": store_reachable(store), "tun": _no, "listeners": _never})
    async with TestClient(TestServer(create_ops_app(Metrics(), health))) as probe:
        began = time.monotonic()
        answer = await probe.get("/readyz")
        took = time.monotonic() - began
        assert answer.status == 503
        assert await answer.json() == {
            "ready": False, "checks": {"store": True, "tun": False, "listeners": False}}
        assert took < CHECK_TIMEOUT + 1
        assert (await probe.get("/healthz")).status == 200  # no alive check: alive
    await store.close()


async def test_healthz_fails_when_the_gateway_loop_does_not_answer() -> None:
    stuck = asyncio.new_event_loop()  # never run, like a loop wedged in a long call
    try:
        health = Health(alive=lambda: on_loop(stuck, lambda: True, CHECK_TIMEOUT))
        async with TestClient(TestServer(create_ops_app(Metrics(), health))) as probe:
            answer = await probe.get("/healthz")
            assert answer.status == 503 and await answer.json() == {"alive": False}
    finally:
        stuck.close()


async def test_metrics_speak_prometheus_text_or_openmetrics_as_asked() -> None:
    async with TestClient(TestServer(create_ops_app(Metrics(), Health()))) as probe:
        plain = await probe.get("/metrics")
        assert plain.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert "process_cpu_seconds_total" in await plain.text()
        asked = await probe.get("/metrics", headers={
            "Accept": "application/openmetrics-text; version=1.0.0"})
        assert asked.headers["Content-Type"].startswith("application/openmetrics-text")
        assert (await asked.text()).endswith("# EOF\n")


def test_a_bare_port_listens_on_loopback() -> None:
    assert metrics_listen("9100") == "127.0.0.1:9100"
    assert metrics_listen("[::]:9100") == "[::]:9100"
    with pytest.raises(ValueError, match="HOST:PORT"):
        metrics_listen("localhost")
