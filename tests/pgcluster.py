"""A throwaway PostgreSQL cluster on 127.0.0.1 that a test may stop, start and freeze.

The suite's shared cluster (``postgres_url`` in tests/conftest.py) is one of these; a test
that needs the store to go away (stopped, or hung like a SIGSTOPped server) starts a private
one so the shared cluster never stops under other tests.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

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


class PostgresCluster:
    """One cluster in a temporary folder with one database; ``url`` reaches it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bin = _postgres_bin()
        self.data = root / "data"
        self.port = _free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{POSTGRES_DATABASE}"
        # the same server through its unix socket, which reaches it from any network namespace
        self.socket_url = (f"postgresql+psycopg://postgres@/{POSTGRES_DATABASE}"
                           f"?host={root}&port={self.port}")

    def start(self) -> None:
        """Start the server and wait (bounded by pg_ctl -t) until it accepts connections."""
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off"
        _run_as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.data),
                          "-l", str(self.root / "server.log"), "-o", options, "-w",
                          "-t", str(POSTGRES_START_TIMEOUT_S), "start"])

    def stop(self, mode: str = "fast") -> None:
        _run_as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w",
                          "stop"])

    @property
    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    @contextlib.contextmanager
    def frozen(self, limit: float | None = None) -> Iterator[None]:
        """SIGSTOP the postmaster and every backend (a hung server: its sockets stay open
        and connect() still succeeds, nothing answers); SIGCONT them however the block ends,
        or after ``limit`` seconds, so code that wrongly waits for the server on the test's
        own event loop fails the test instead of hanging it."""
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        stopped: list[int] = []

        def thaw() -> None:
            for pid in reversed(stopped):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

        timer = threading.Timer(limit, thaw) if limit is not None else None
        try:
            os.kill(postmaster, signal.SIGSTOP)  # first, so it forks no new backend
            stopped.append(postmaster)
            for pid in _children(postmaster):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
                    stopped.append(pid)
            if timer is not None:
                timer.start()
            yield
        finally:
            if timer is not None:
                timer.cancel()
            thaw()


def _children(parent: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == parent:
                found.append(int(stat.parent.name))
    return found


@contextlib.contextmanager
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A started cluster with the ``sslvpn_test`` database; stopped and removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="sslvpn-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, POSTGRES_OS_USER, POSTGRES_OS_USER)
    cluster = PostgresCluster(root)
    try:
        _run_as_postgres([str(cluster.bin / "initdb"), "-D", str(cluster.data), "-U", "postgres",
                          "-A", "trust", "-E", "UTF8", "--no-sync"])
        cluster.start()
        _run_as_postgres([str(cluster.bin / "createdb"), "-h", "127.0.0.1", "-p",
                          str(cluster.port), "-U", "postgres", POSTGRES_DATABASE])
        yield cluster
    finally:
        if cluster.running:
            cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)
