"""Store outages under `sslvpn serve` with real openvpn 2.6 clients (issue 17 targets).

A connected client pings a VPC host every 0.2 s while the store goes away for 20 s: SQLite
held by another process with ``BEGIN EXCLUSIVE``, a PostgreSQL SIGSTOPped (hung: sockets
open, nothing answers). A second client connects during the outage and the revocation sweep
and the IPsec reload keep running. The pinging client's largest gap stays under 1 s in the
same session, the new client connects once the store is back, and the gateway log says once
that the store is unavailable and once that it is back. Last, a client started while
PostgreSQL is stopped is told ``AUTH_FAILED,TEMP`` (not a plain AUTH_FAILED, on which openvpn
exits for good) and connects by itself once PostgreSQL is started again.
Each PostgreSQL case runs against a private cluster, never the suite's shared one.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import col, select

from sslvpn.store import db
from sslvpn.store.db import open_engine
from sslvpn.store.models import VpnSessionRecord
from tests.interop.conftest import VPC_HOST, Topology, build_topology
from tests.interop.test_openvpn_client import CONNECTED, OpenVpnClient
from tests.netns import file_contains, wait_until
from tests.pgcluster import PostgresCluster

pytestmark = pytest.mark.interop

HOLD = 20.0  # seconds the store is away (the issue's figure)
MAX_GAP = 1.0  # seconds: the largest ping gap allowed during the outage
DOWN = "the store is unavailable"
BACK = "the store is available again"
REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from ")
LOCKER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("ROLLBACK")
"""


def _report(what: str) -> None:
    sys.stderr.write(f"\n[store-outage] {what}\n")


@pytest.fixture(scope="module")
def sqlite_topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    with build_topology(tmp_path_factory.mktemp("store-sqlite"), prefix="so") as topo:
        yield topo


@pytest.fixture(scope="module")
def pg_topology(postgres: PostgresCluster, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[Topology]:
    with pytest.MonkeyPatch.context() as env:
        # the CLI verbs and the gateway (in its own network namespace: the unix socket)
        env.setenv("SSLVPN_DATABASE_URL", postgres.socket_url)
        with build_topology(tmp_path_factory.mktemp("store-pg"), prefix="sp") as topo:
            yield topo


class Pinger:
    """``ping -i 0.2`` from the client namespace, each reply time-stamped (-D)."""

    def __init__(self, topo: Topology) -> None:
        self.topo = topo
        self.log = topo.work / f"ping-{time.monotonic_ns()}.log"
        self.proc = topo.client_ns.spawn(["ping", "-D", "-i", "0.2", "-W", "1", VPC_HOST],
                                         log=self.log)
        if not wait_until(lambda: len(self.replies()) >= 3, 10):
            pytest.fail("no ping replies through the tunnel:\n" + self.log.read_text())

    def replies(self) -> list[float]:
        lines = self.log.read_text(errors="replace").splitlines()
        return [float(m.group(1)) for m in map(REPLY.match, lines) if m]

    def largest_gap(self) -> float:
        """Stop pinging once replies come again (bounded), SIGINT so ping flushes its output;
        the longest time between two replies, or since the last one when they never resumed."""
        now = time.time()
        wait_until(lambda: any(t > now + 0.5 for t in self.replies()), 10)
        stopped = time.time()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        self.topo.lab.stop(self.proc)
        times = [*self.replies(), stopped]
        return max(b - a for a, b in zip(times, times[1:], strict=False))


def _session_of(topo: Topology, serial: str) -> str | None:
    for session in topo.control.list_sessions():
        if session.certificate_serial == serial:
            return session.session_id
    return None


@contextlib.contextmanager
def _pinging_client(topo: Topology, clients: list[OpenVpnClient]) -> Iterator[Pinger]:
    """Alice connected over UDP and pinging; yields the pinger, checks her session after."""
    serial = topo.issue("alice", f"ping-{len(clients)}")
    alice = OpenVpnClient(topo, topo.profile("alice", f"ping-{len(clients)}", "udp"))
    clients.append(alice)
    alice.wait_for(CONNECTED)
    session = _session_of(topo, serial)
    assert session is not None
    yield Pinger(topo)
    assert _session_of(topo, serial) == session, "the pinging client lost its session"
    assert alice.text().count(CONNECTED) == 1, alice.text()[-2000:]


def _profile(topo: Topology, device: str) -> Path:
    """Bob's profile, made while the store answers (the CLI writes to it)."""
    topo.issue("bob", device)
    return topo.profile("bob", device, "udp")


def _second_client(topo: Topology, clients: list[OpenVpnClient], profile: Path) -> OpenVpnClient:
    bob = OpenVpnClient(topo, profile, ns=topo.second_client_ns)
    clients.append(bob)
    return bob


def _settled(topo: Topology, url: str) -> None:
    """No live session and every session record closed, so no accounting write is due."""
    engine = open_engine(url)
    try:
        def quiet() -> bool:
            with db.session(engine, write=False) as s:
                open_records = s.exec(select(VpnSessionRecord).where(
                    col(VpnSessionRecord.disconnected_at).is_(None))).all()
            return not topo.control.list_sessions() and not open_records

        assert wait_until(quiet, 20)
    finally:
        engine.dispose()


def _one_outage_logged(topo: Topology, since: int) -> None:
    """The outage after byte ``since`` of the gateway log: one line down, one back, no
    traceback."""
    text = topo.gateway_log.read_text(errors="replace")[since:]
    assert (text.count(DOWN), text.count(BACK), text.count("Traceback")) == (1, 1, 0), text


@pytest.fixture
def started() -> Iterator[list[OpenVpnClient]]:
    clients: list[OpenVpnClient] = []
    yield clients
    for client in clients:
        client.stop()


def _log_size(topo: Topology) -> int:
    return len(topo.gateway_log.read_text(errors="replace"))


def test_sqlite_held_exclusive_by_another_process(
    sqlite_topology: Topology, started: list[OpenVpnClient]
) -> None:
    topo = sqlite_topology
    profile = _profile(topo, "sqlite")
    with _pinging_client(topo, started) as pinger:
        with subprocess.Popen([sys.executable, "-c", LOCKER, str(topo.data_dir / "sslvpn.db"),
                               str(HOLD)], stdout=subprocess.PIPE, text=True) as locker:
            try:
                assert locker.stdout is not None and locker.stdout.readline() == "locked\n"
                bob = _second_client(topo, started, profile)
                bob.wait_for(CONNECTED, timeout=HOLD + 30)
                assert locker.wait(HOLD + 10) == 0
            finally:
                if locker.poll() is None:
                    locker.kill()
        gap = pinger.largest_gap()
    _report(f"SQLite BEGIN EXCLUSIVE {HOLD:.0f} s: largest ping gap {gap:.2f} s")
    assert gap < MAX_GAP


def test_postgres_hung_20s(pg_topology: Topology, postgres: PostgresCluster,
                           started: list[OpenVpnClient]) -> None:
    topo = pg_topology
    profile = _profile(topo, "hung")
    with _pinging_client(topo, started) as pinger:
        since = _log_size(topo)
        with postgres.frozen():
            bob = _second_client(topo, started, profile)
            deadline = time.monotonic() + HOLD
            assert not wait_until(file_contains(bob.log, CONNECTED), HOLD)  # no store, no entry
            assert time.monotonic() >= deadline
        thawed = time.monotonic()
        bob.wait_for(CONNECTED, timeout=30)
        waited = time.monotonic() - thawed
        gap = pinger.largest_gap()
        _report(f"PostgreSQL SIGSTOP {HOLD:.0f} s: largest ping gap {gap:.2f} s; "
                f"the client started during it connected {waited:.1f} s after SIGCONT")
        assert gap < MAX_GAP
        assert wait_until(file_contains(topo.gateway_log, BACK), 10)
    assert "AUTH_FAILED,TEMP" in bob.text() or "AUTH_FAILED" not in bob.text(), bob.text()
    _one_outage_logged(topo, since)


def test_a_client_started_while_postgres_is_down_gets_in_when_it_is_back(
    pg_topology: Topology, postgres: PostgresCluster, started: list[OpenVpnClient]
) -> None:
    topo = pg_topology
    profile = _profile(topo, "stopped")
    _settled(topo, postgres.url)
    since = _log_size(topo)
    postgres.stop()
    try:
        begun = time.monotonic()
        carol = _second_client(topo, started, profile)
        carol.wait_for("AUTH_FAILED,TEMP", timeout=15)
        assert carol.proc.poll() is None  # a plain AUTH_FAILED would have ended openvpn
        left = HOLD - (time.monotonic() - begun)
        assert not wait_until(file_contains(carol.log, CONNECTED), left)
    finally:
        postgres.start()
    restarted = time.monotonic()
    carol.wait_for(CONNECTED, timeout=60 - (restarted - begun))
    after = time.monotonic() - restarted
    _report(f"PostgreSQL stopped {restarted - begun:.0f} s: the client connected {after:.1f} s "
            f"after the start, {time.monotonic() - begun:.1f} s after it was started")
    assert carol.proc.poll() is None
    assert wait_until(file_contains(topo.gateway_log, BACK), 10)
    _one_outage_logged(topo, since)
