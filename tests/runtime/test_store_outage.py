"""The whole gateway service (MemoryTun, loopback sockets, the IPsec service beside it) while
the store is away: nothing on the event loop waits for it.

Every SQL statement is checked for the thread it runs on: none may run on the loop's; and
the loop runs in asyncio debug mode, where no callback may take longer than ``SLOW``. Two faults:
SQLite held with ``BEGIN EXCLUSIVE`` by another process (readers still read in WAL mode,
writers wait), and a store whose every statement hangs (what a SIGSTOPped PostgreSQL does).
During each, a client connects and the revocation sweep and the IPsec reload run; the
connected client's packets keep flowing; a client that cannot be checked is told
``AUTH_FAILED,TEMP``; the log says once that the store is unavailable and once that it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event

from sslvpn.cli.serve import ipsec_task
from sslvpn.config import DataPaths
from sslvpn.openvpn.client import ClientConfig
from sslvpn.runtime.gateway import RETRY_AFTER
from sslvpn.runtime.service import GatewayService
from sslvpn.store.async_store import AsyncStore
from sslvpn.store.models import Certificate
from tests.runtime import loopback
from tests.runtime.fakes import ipv4
from tests.runtime.loopback import (
    client_config,
    connect,
    connected,
    issue,
    make_data_folder,
    running_service,
)

VPC_HOST = "10.10.0.10"
# Seconds: a loop callback longer than this fails the test. Not 50 ms: on a busy 2-core host
# the loop's own TLS work and the host's scheduling make callbacks of up to ~90 ms with no
# store call anywhere near the loop, and a store call on the loop is caught whatever its
# length by the statement check; under these faults a store call lasts 0.5 s or more.
SLOW = 0.25
HANG_BOUND = 3.0  # seconds a "hung" statement waits at most (the old code ran them on the loop)
LOCKER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
"""


@contextlib.asynccontextmanager
async def sqlite_held_exclusive(database: Path) -> AsyncIterator[None]:
    """Another process holds ``BEGIN EXCLUSIVE`` on the file until the block ends."""
    locker = await asyncio.create_subprocess_exec(
        sys.executable, "-c", LOCKER, str(database),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    assert locker.stdin is not None and locker.stdout is not None
    try:
        async with asyncio.timeout(10):
            assert await locker.stdout.readline() == b"locked\n"
        yield
    finally:
        locker.stdin.close()
        async with asyncio.timeout(10):
            await locker.wait()


class Statements:
    """Every SQL statement's thread: those run on the loop's thread are the failures."""

    def __init__(self, engine: Engine) -> None:
        self.loop_thread = threading.get_ident()
        self.on_the_loop: list[str] = []
        self.hang = threading.Event()  # set: every statement hangs (bounded) in its thread
        self.released = threading.Event()
        event.listen(engine, "before_cursor_execute", self._before)

    def _before(self, *args: Any) -> None:
        if threading.get_ident() == self.loop_thread:
            self.on_the_loop.append(str(args[2]).split("\n")[0])
        if self.hang.is_set():
            self.released.wait(HANG_BOUND)


@contextlib.contextmanager
def slow_callbacks(caplog: pytest.LogCaptureFixture) -> Iterator[Callable[[], list[str]]]:
    """asyncio debug mode with the ``SLOW`` limit; yields the slow callbacks it reported."""
    loop = asyncio.get_running_loop()
    debug, limit = loop.get_debug(), loop.slow_callback_duration
    loop.set_debug(True)
    loop.slow_callback_duration = SLOW
    start = len(caplog.records)
    try:
        yield lambda: [r.getMessage() for r in caplog.records[start:]
                       if r.name == "asyncio" and "took" in r.getMessage()]
    finally:
        loop.set_debug(debug)
        loop.slow_callback_duration = limit


def count_sweeps(service: GatewayService) -> Callable[[], int]:
    """How many sweep passes asked the store (answered or not) from now on."""
    assert service.gateway is not None
    policy = service.gateway.policy
    asked = policy.unauthorized
    passes = [0]

    async def counted(serials: Any) -> dict[str, str]:
        passes[0] += 1
        return await asked(serials)

    policy.unauthorized = counted  # type: ignore[method-assign]
    return lambda: passes[0]


async def until(condition: Callable[[], bool], timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def round_trip(client: loopback.TestClient, tun: Any) -> None:
    """One packet each way through the tunnel of ``client``."""
    outbound = ipv4(client.address, VPC_HOST, b"ping")
    client.send(outbound)
    await until(lambda: outbound in tun.written)
    reply = ipv4(VPC_HOST, client.address, b"pong")
    tun.inject(reply)
    assert await client.wait_packet() == reply


@dataclass
class Served:
    """The service with alice connected; bob's certificate is still unused."""

    paths: DataPaths
    service: GatewayService
    tun: Any
    store: AsyncStore
    statements: Statements
    alice: loopback.TestClient
    bob: Certificate
    sweeps: Callable[[], int]

    def config(self, *, tcp: bool = False) -> ClientConfig:
        return client_config(self.paths, self.bob, v2=False, tcp=tcp)


@contextlib.asynccontextmanager
async def served(tmp_path: Path, store_timeout: float) -> AsyncIterator[Served]:
    """The whole gateway service, the IPsec service beside it, and alice connected."""
    paths, engine = make_data_folder(tmp_path)
    alice, bob = issue(paths, engine, "alice"), issue(paths, engine, "bob")
    statements = Statements(engine)
    store = AsyncStore(engine, timeout=store_timeout)
    async with running_service(paths, engine, store=store,
                               extra_tasks=(ipsec_task(store),)) as (service, tun):
        first = await connected(service, client_config(paths, alice, v2=False, tcp=False))
        yield Served(paths, service, tun, store, statements, first, bob, count_sweeps(service))
    assert statements.on_the_loop == []
    engine.dispose()


async def test_sqlite_held_exclusive_by_another_process(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with served(tmp_path, store_timeout=1.0) as gw:
        async with sqlite_held_exclusive(gw.paths.database):
            with slow_callbacks(caplog) as slow:
                bob = await connected(gw.service, gw.config(tcp=True))
                await until(lambda: gw.sweeps() >= 3)
                await round_trip(gw.alice, gw.tun)
                await round_trip(bob, gw.tun)
                assert slow() == []
        for client in (gw.alice, bob):
            client.close_transport()


async def test_a_hung_store_stalls_nothing_and_new_clients_are_told_to_retry(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with served(tmp_path, store_timeout=0.5) as gw:
        caplog.clear()
        with slow_callbacks(caplog) as slow:
            gw.statements.hang.set()
            refused = await connect(gw.service, gw.config())
            async with asyncio.timeout(10):
                await refused.closed.wait()
            assert refused.session.auth_failed == (
                f"TEMP[backoff {RETRY_AFTER}]:the server cannot check certificates right now")
            swept = gw.sweeps()
            await until(lambda: gw.sweeps() >= swept + 3)
            await round_trip(gw.alice, gw.tun)
            assert not gw.store.available
            gw.statements.hang.clear()
            gw.statements.released.set()
            await until(lambda: gw.store.available)
            bob = await connected(gw.service, gw.config())
            await round_trip(bob, gw.tun)
            assert slow() == []
        for client in (gw.alice, refused, bob):
            client.close_transport()
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
            and r.name.startswith("sslvpn") and not r.name.endswith("loop_watchdog")]
    assert len(said) == 2, said  # nothing but: down once, back once
    assert said[0].startswith("the store is unavailable")
    assert said[1].startswith("the store is available again")
