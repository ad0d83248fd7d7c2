"""TCP admission on loopback: a source's half-open budget, and running out of descriptors.

Loopback answers from every 127.0.0.0/8 address, so one host plays several sources.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from sslvpn.cli import main, serve
from sslvpn.runtime.admission import HALF_OPEN_PER_ADDRESS, OUT_OF_DESCRIPTORS
from sslvpn.runtime.service import GatewayService
from sslvpn.store import db, queries
from tests.runtime.loopback import (
    client_config,
    connected,
    issue,
    make_data_folder,
    running_service,
)

# Holds COUNT idle TCP connections to HOST:PORT from 127.0.1.<n> (PER_SOURCE each), prints
# how many it holds, then waits for stdin to close.
HOLDER = """
import resource, socket, sys
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
host, port, count, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
held = []
for i in range(count):
    s = socket.socket()
    s.bind((f"127.0.1.{i // per + 1}", 0))
    s.settimeout(5)
    try:
        s.connect((host, port))
    except OSError:
        s.close()
        continue
    held.append(s)
print(len(held), flush=True)
sys.stdin.read()
"""


async def _read_closed(reader: asyncio.StreamReader) -> bool:
    """Whether the gateway closed the connection (within 2 s)."""
    try:
        async with asyncio.timeout(2):
            return await reader.read() == b""
    except TimeoutError:
        return False


async def test_one_source_holds_at_most_its_half_open_budget(tmp_path: Path) -> None:
    """A flood of idle connections from one address stops at its budget; another
    address's client connects at once, and the counts show it all."""
    paths, engine = make_data_folder(tmp_path)
    row = issue(paths, engine, "alice")
    async with running_service(paths, engine) as (service, _tun):
        host, port = service.tcp[0].address
        flood = [await asyncio.open_connection(host, port, local_addr=("127.0.0.3", 0))
                 for _ in range(HALF_OPEN_PER_ADDRESS + 4)]
        closed = await asyncio.gather(*(_read_closed(r) for r, _w in flood[-4:]))
        assert closed == [True] * 4
        assert service.gateway is not None
        status = service.gateway.listener_status()
        assert status.half_open["tcp"] == HALF_OPEN_PER_ADDRESS
        assert status.refused == {"half-open-per-address": 4}
        assert status.top_refused_sources == {"127.0.0.3": 4}
        client = await connected(service, client_config(paths, row, v2=False, tcp=True))
        status = service.gateway.listener_status()
        assert status.half_open["tcp"] == HALF_OPEN_PER_ADDRESS and status.clients == 17
        client.close_transport()
        for _reader, writer in flood:
            writer.close()
    engine.dispose()


async def test_max_clients_refuses_the_excess_cleanly_with_a_log_line(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """OpenVPN's max-clients: with 2 held, a third client's connection is closed at once,
    counted and logged; an authenticated client counts as much as a half-open one."""
    paths, engine = make_data_folder(tmp_path)
    row = issue(paths, engine, "alice")
    with db.session(engine, write=True) as s:
        settings = queries.get_settings(s)
        settings.max_clients = 2
        queries.save_settings(s, settings=settings)
    async with running_service(paths, engine) as (service, _tun):
        assert service.gateway is not None
        client = await connected(service, client_config(paths, row, v2=False, tcp=True))
        host, port = service.tcp[0].address
        idle = await asyncio.open_connection(host, port)
        with caplog.at_level(logging.WARNING, "sslvpn.runtime.admission"):
            reader, writer = await asyncio.open_connection(host, port)
            assert await _read_closed(reader)
        status = service.gateway.listener_status()
        assert status.refused == {"max-clients": 1} and status.clients == 2
        assert status.limits["max_clients"] == 2
        assert "the gateway holds max-clients (2) clients (first from 127.0.0.1)" in caplog.text
        writer.close()
        idle[1].close()
        client.close_transport()
    engine.dispose()


async def test_running_out_of_descriptors_is_said_once_with_the_limit_and_the_fix(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Open-file limit 256 and 600 idle connections (from 60 addresses, 10 each): the
    gateway keeps running, says so once, and accepts again once descriptors are free."""
    paths, engine = make_data_folder(tmp_path)
    row = issue(paths, engine, "alice")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    async with running_service(paths, engine) as (service, _tun):
        assert service.gateway is not None
        host, port = service.tcp[0].address
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))  # after serve raised it
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLDER, host, str(port), "600", "10"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            with caplog.at_level(logging.INFO, "sslvpn.runtime.admission"):
                assert holder.stdout is not None
                held = await asyncio.to_thread(holder.stdout.readline)
                assert int(held) == 600  # the kernel completed them; most wait in the backlog
                async with asyncio.timeout(10):  # three tries, a pause apart: said once
                    while service.gateway.listener_status().refused.get(OUT_OF_DESCRIPTORS,
                                                                        0) < 3:
                        await asyncio.sleep(0.05)
        finally:
            holder.communicate("", timeout=30)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        said = [r.getMessage() for r in caplog.records
                if "out of file descriptors" in r.getMessage()]
        assert len(said) == 1
        assert "the open-file limit is 256" in said[0] and "LimitNOFILE=" in said[0]
        client = await connected(service, client_config(paths, row, v2=False, tcp=True))
        client.close_transport()
    engine.dispose()


async def test_serve_half_open_per_address_raises_a_sources_budget(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An office behind one NAT address: `serve --half-open-per-address 24` lets one source
    hold 24 clients that have not authenticated (16 by default), and says so with the other
    caps; 0 is refused as a usage error."""
    paths, engine = make_data_folder(tmp_path)
    captured: list[GatewayService] = []

    async def fake_serve(service: GatewayService) -> None:
        captured.append(service)

    monkeypatch.setattr(serve, "serve", fake_serve)
    for value, code in (("0", 2), ("24", 0)):
        result = await asyncio.to_thread(
            CliRunner().invoke, main, ["--data-dir", str(paths.data_dir), "serve",
                                       "--no-portal", "--workers", "1",
                                       "--half-open-per-address", value])
        assert result.exit_code == code, result.output
    [chosen] = captured
    chosen.store.engine.dispose()
    budget = chosen.options.half_open_per_address
    assert budget == 24 > HALF_OPEN_PER_ADDRESS
    async with running_service(paths, engine, half_open_per_address=budget) as (service, _):
        host, port = service.tcp[0].address
        flood = [await asyncio.open_connection(host, port, local_addr=("127.0.0.3", 0))
                 for _ in range(budget + 2)]
        closed = await asyncio.gather(*(_read_closed(r) for r, _w in flood))
        assert closed == [False] * budget + [True] * 2
        assert service.gateway is not None
        status = service.gateway.listener_status()
        assert status.half_open["tcp"] == budget
        assert status.refused == {"half-open-per-address": 2}
        assert status.limits["half_open_per_address"] == budget
        for _reader, writer in flood:
            writer.close()
    engine.dispose()
