"""`serve`'s composition without root: the portal and the IPsec service run beside the gateway
(on a MemoryTun), print where they are, answer for the in-process gateway, and go away with it;
a broken store or a failing IPsec service never takes the gateway down.
"""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import time
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Network
from pathlib import Path

import aiohttp
import pytest
from click.testing import CliRunner

from sslvpn.cli import main, serve, serve_node
from sslvpn.cli.serve import announce, ipsec_task
from sslvpn.cli.serve_node import PortalPlan, portal_task, shown_url
from sslvpn.config import DataPaths
from sslvpn.runtime.gateway import Gateway, GatewayOptions
from sslvpn.runtime.openvpn_setup import OpenVpnCredentials, build_acceptor
from sslvpn.runtime.service import GatewayService, ServeOptions
from sslvpn.runtime.tun import MemoryTun
from sslvpn.store import StoreError, db, queries
from sslvpn.store.async_store import AsyncStore
from tests.runtime.fakes import MemoryPolicy
from tests.runtime.loopback import make_data_folder


@pytest.mark.parametrize(("url", "public", "shown"), [
    ("https://0.0.0.0:8443/", "vpn.example.com", "https://vpn.example.com:8443/"),
    ("https://[::]:8443/", "2001:db8::1", "https://[2001:db8::1]:8443/"),
    ("http://127.0.0.1:8080/", "vpn.example.com", "http://127.0.0.1:8080/"),
    ("https://0.0.0.0:8443/", None, "https://0.0.0.0:8443/"),
])
def test_a_wildcard_portal_is_shown_at_the_public_address(
    url: str, public: str | None, shown: str
) -> None:
    assert shown_url(url, public) == shown


def _service(tmp_path: Path) -> tuple[GatewayService, MemoryTun, DataPaths]:
    """`serve` as composed by the CLI (portal and IPsec beside the gateway) on a MemoryTun."""
    paths, engine = make_data_folder(tmp_path)
    tun = MemoryTun()
    plan = PortalPlan("127.0.0.1:0", None, None, "127.0.0.1")
    store = AsyncStore(engine)
    service = GatewayService(
        paths, store,
        ServeOptions(listen=("127.0.0.1",), port=0, protocols="tcp", configure_network=False,
                     extra_tasks=(ipsec_task(store), portal_task(paths, engine, plan)),
                     on_ready=announce),
        tun_factory=lambda _name: tun,
    )
    return service, tun, paths


async def _closed(service: GatewayService) -> None:
    await service.store.close()
    service.store.engine.dispose()


async def _printed(capsys: pytest.CaptureFixture[str]) -> str:
    """What serve printed up to the first admin's one-time password."""
    printed = ""
    async with asyncio.timeout(20):
        while "one-time password" not in printed:
            printed += capsys.readouterr().out
            await asyncio.sleep(0.05)
    return printed


async def test_portal_and_ipsec_run_beside_the_gateway(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    service, tun, _paths = _service(tmp_path)
    task = asyncio.create_task(service.run())
    printed = await _printed(capsys)
    assert re.search(r"^gateway: OpenVPN on tcp 127\.0\.0\.1:\d+$", printed, re.MULTILINE)
    match = re.search(r"^portal: (http://127\.0\.0\.1:\d+/)$", printed, re.MULTILINE)
    assert match, printed
    async with aiohttp.ClientSession() as http, http.get(match.group(1) + "login") as response:
        assert response.status == 200
    assert service.gateway is not None
    gateway = service.gateway
    assert len(gateway.tunnel_status_providers) == 1 and gateway.tunnel_status() == []
    service.stop()
    async with asyncio.timeout(10):
        await task
    assert gateway.tunnel_status_providers == [] and tun.closed
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectionError):
            await http.get(match.group(1))
    await _closed(service)


async def test_a_portal_request_meeting_a_locked_store_never_stalls_the_gateway_loop(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The portal runs on its own loop: a login whose audit write waits for a locked
    SQLite file gets its 503 while the gateway's loop keeps its 10 ms ticks."""
    service, _tun, paths = _service(tmp_path)
    task = asyncio.create_task(service.run())
    printed = await _printed(capsys)
    url = re.search(r"^portal: (\S+)$", printed, re.MULTILINE)
    password = re.search(r"one-time password (\S+)$", printed, re.MULTILINE)
    assert url and password, printed
    gaps: list[float] = []

    async def tick() -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.01)
            gaps.append(time.monotonic() - before)

    ticker = asyncio.create_task(tick())
    holder = sqlite3.connect(paths.database, isolation_level=None)
    try:
        jar = aiohttp.CookieJar(unsafe=True)  # keep cookies of an IP address host
        async with aiohttp.ClientSession(base_url=url.group(1), cookie_jar=jar) as http:
            async with http.get("/admin/sessions", allow_redirects=False) as page:
                assert page.status == 303  # to the login page: not logged in yet
            form = {"name": "admin", "password": password.group(1),
                    "csrf_token": await _csrf(http, "/login")}
            holder.execute("BEGIN EXCLUSIVE")
            gaps.clear()
            async with http.post("/login", data=form, allow_redirects=False) as answer:
                assert answer.status == 503
            assert max(gaps) < 0.5, max(gaps)
            holder.execute("ROLLBACK")
            async with asyncio.timeout(20):  # the stuck audit write commits; logins work again
                while await _status(http.post("/login", data=form, allow_redirects=False)) != 303:
                    await asyncio.sleep(0.1)
            own = {"password": password.group(1), "new_password": password.group(1),
                   "confirm": password.group(1),
                   "csrf_token": await _csrf(http, "/account/password")}
            async with http.post("/account/password", data=own, allow_redirects=False) as done:
                assert done.status == 303  # the one-time password is now the admin's own
            async with http.get("/admin/sessions") as sessions:  # the gateway answers, via
                assert sessions.status == 200  # ThreadSafeControl on its own loop
                assert "No live sessions" in await sessions.text()
    finally:
        holder.close()
        ticker.cancel()
        service.stop()
        async with asyncio.timeout(10):
            await task
        await _closed(service)


async def _status(request: Awaitable[aiohttp.ClientResponse]) -> int:
    async with await request as response:
        return response.status


async def _csrf(http: aiohttp.ClientSession, path: str) -> str:
    async with http.get(path) as page:
        found = re.search(r'name="csrf_token" value="([^"]+)"', await page.text())
    assert found
    return found.group(1)


async def test_a_broken_store_at_first_start_is_only_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    asked: list[object] = []

    def ensure(engine: object) -> str | None:
        asked.append(engine)
        raise StoreError("database error: disk I/O error")

    monkeypatch.setattr(serve_node, "ensure_first_admin", ensure)
    assert await serve_node.first_admin(None) is None  # type: ignore[arg-type]
    assert asked == [None]  # asked once: the writer lock already waits for a busy store
    assert "cannot create the first admin (database error: disk I/O error)" in caplog.text


async def test_a_failed_ipsec_service_is_started_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs: list[object] = []
    again = asyncio.Event()

    class Failing:
        def __init__(self, _engine: object, **_options: object) -> None:
            pass

        def tunnel_status(self) -> list[object]:
            return []

        def tunnel_action(self, name: str, action: str) -> str:
            return action

        async def run(self) -> None:
            runs.append(self)
            if len(runs) == 1:
                raise RuntimeError("a bug in the IPsec service")
            again.set()
            await asyncio.Event().wait()

    monkeypatch.setattr(serve, "IpsecService", Failing)
    monkeypatch.setattr(serve, "IPSEC_RESTART_DELAY", 0.0)
    gateway = Gateway(MemoryTun(), GatewayOptions(pool=IPv4Network("10.8.0.0/24"),
                                                  vpc_networks=()), MemoryPolicy())
    task = asyncio.create_task(serve.ipsec_task(None)(gateway))  # type: ignore[arg-type]
    async with asyncio.timeout(5):
        await again.wait()
    assert len(runs) == 2 and len(gateway.tunnel_status_providers) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert gateway.tunnel_status_providers == []


def test_an_admin_certificate_needs_its_key(tmp_path: Path) -> None:
    paths, engine = make_data_folder(tmp_path)
    engine.dispose()
    result = CliRunner().invoke(main, ["--data-dir", str(paths.data_dir), "serve",
                                       "--portal-cert", str(paths.ca_cert)])
    assert result.exit_code == 2 and "give both --portal-cert and --portal-key" in result.output


@pytest.mark.parametrize(("cores", "args", "workers"), [
    ({0, 1, 2}, (), 3),  # the default: one worker per usable core
    ({0}, (), 1),  # one usable core: one process, no supervisor
    ({0, 1, 2}, ("--workers", "1"), 1),
    ({0}, ("--workers", "2"), 2),
])
def test_serve_runs_one_worker_per_usable_core_unless_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cores: set[int], args: tuple[str, ...],
    workers: int
) -> None:
    """`--workers` defaults to the cores this process may run on (its affinity, as taskset
    or a container's cpuset limits it); 1 keeps one process."""
    paths, engine = make_data_folder(tmp_path)
    engine.dispose()
    ran: list[int] = []

    async def fake_serve(_service: GatewayService) -> None:
        ran.append(1)

    async def fake_supervise(_paths: object, _engine: object, plan: serve_node.WorkersPlan,
                             *_rest: object) -> None:
        ran.append(plan.count)

    monkeypatch.setattr(serve, "serve", fake_serve)
    monkeypatch.setattr(serve_node, "supervise_node", fake_supervise)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: cores)
    result = CliRunner().invoke(main, ["--data-dir", str(paths.data_dir), "serve", "--no-portal",
                                       *args])
    assert result.exit_code == 0, result.output
    assert ran == [workers]


def test_connect_freq_initial_reaches_every_acceptor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths, engine = make_data_folder(tmp_path)
    engine.dispose()
    captured: list[GatewayService] = []

    async def fake_serve(service: GatewayService) -> None:
        captured.append(service)

    monkeypatch.setattr(serve, "serve", fake_serve)
    result = CliRunner().invoke(main, ["--data-dir", str(paths.data_dir), "serve", "--no-portal",
                                       "--workers", "1", "--connect-freq-initial", "5", "2"])
    assert result.exit_code == 0, result.output
    options = captured[0].options
    assert options.connect_freq == (5, 2.0)
    with db.session(captured[0].store.engine) as s:
        settings = queries.get_settings(s)
    credentials = OpenVpnCredentials.load(paths, settings)
    limited = build_acceptor(credentials, tcp=False, connect_freq=options.connect_freq)
    default = build_acceptor(credentials, tcp=False)
    for acceptor in (limited._v1, limited._v2):
        assert acceptor is not None
        assert (acceptor.config.reset_rate, acceptor.config.reset_period) == (5, 2.0)
    assert default._v1 is not None and default._v1.config.reset_rate == 100


def test_serve_rebuilds_an_old_sqlite_file_and_prunes_among_its_daily_hooks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths, engine = make_data_folder(tmp_path)
    with db.session(engine, write=True) as s:
        queries.record_audit(s, actor="t", action="ancient",
                             at=datetime.now(UTC) - timedelta(days=500))
    engine.dispose()
    old = sqlite3.connect(paths.database, isolation_level=None)
    old.execute("PRAGMA auto_vacuum=NONE")
    old.execute("VACUUM")  # as a file made before incremental auto-vacuum
    old.close()
    captured: list[GatewayService] = []

    async def fake_serve(service: GatewayService) -> None:
        captured.append(service)

    monkeypatch.setattr(serve, "serve", fake_serve)
    result = CliRunner().invoke(main, ["--data-dir", str(paths.data_dir), "serve", "--no-portal",
                                       "--workers", "1"])
    assert result.exit_code == 0, result.output
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA auto_vacuum").scalar() == 2  # incremental
    for hook in captured[0].options.daily_hooks:  # the service runs each in a thread
        hook()
    with db.session(engine, write=False) as s:
        assert queries.list_audit(s, action="ancient") == []
    engine.dispose()
