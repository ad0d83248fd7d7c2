"""CLI commands in their own processes while the gateway keeps writing to the same SQLite
file: every command succeeds (no "database is locked"), and so does every gateway write."""

from __future__ import annotations

import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

from click.testing import CliRunner
from sqlalchemy import Engine
from sqlmodel import select

from sslvpn.cli import main
from sslvpn.config import database_url
from sslvpn.store import db, queries
from sslvpn.store.models import Certificate, VpnSessionRecord

BOUND_SECONDS = 120  # per CLI call; a hang fails the test instead of blocking the suite
DEVICES = 3
SSLVPN = Path(sys.executable).parent / "sslvpn"  # the installed console script


class GatewayWriter(threading.Thread):
    """The gateway's accounting: lease, open record, counters, close, until told to stop."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(daemon=True)
        self.engine = engine
        self.stop = threading.Event()
        self.written = 0
        self.failure: Exception | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self._one_session(f"gw{self.written}")
                self.written += 1
        except Exception as exc:  # reported by the test, not lost in the thread
            self.failure = exc

    def _one_session(self, session_id: str) -> None:
        now = datetime.now(UTC)
        with db.session(self.engine, write=True) as s:
            queries.set_lease(s, serial=session_id, address=f"10.8.0.{self.written % 250 + 2}")
            queries.open_session_record(
                s, session_id=session_id, gateway_name="default", user_name="alice",
                certificate_serial=session_id, real_address="198.18.0.2:1194",
                vpn_address="10.8.0.2", protocol="udp", connected_at=now,
            )
        with db.session(self.engine, write=True) as s:
            queries.update_session_counters(s, session_id=session_id, bytes_in=1, bytes_out=2)
        with db.session(self.engine, write=True) as s:
            queries.close_session_record(s, session_id=session_id, at=now, reason="test")


def _cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own interpreter and package
        [str(SSLVPN), "--data-dir", str(data_dir), *args],
        capture_output=True, text=True, timeout=BOUND_SECONDS, check=False,
    )


def test_cli_writes_succeed_while_the_gateway_writes(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    runner = CliRunner()
    for args in (("init", "--public-address", "vpn.example.test"), ("user", "add", "alice")):
        result = runner.invoke(main, ["--data-dir", str(data_dir), *args])
        assert result.exit_code == 0, result.output
    engine = db.open_engine(database_url(data_dir, None))
    gateway = GatewayWriter(engine)
    gateway.start()
    try:
        # each issue reads the user, makes a key, then writes: the pattern that used to fail
        results = [_cli(data_dir, "cert", "issue", "alice", "--device", f"d{n}")
                   for n in range(DEVICES)]
        results.append(_cli(data_dir, "user", "disable", "alice"))
    finally:
        gateway.stop.set()
        gateway.join(BOUND_SECONDS)
    assert not gateway.is_alive() and gateway.failure is None, gateway.failure
    assert [(r.returncode, r.stderr) for r in results] == [(0, "")] * (DEVICES + 1)
    with db.session(engine, write=False) as s:
        devices = {c.device for c in s.exec(select(Certificate)).all() if c.kind == "client"}
        records = s.exec(select(VpnSessionRecord)).all()
    engine.dispose()
    assert devices == {f"d{n}" for n in range(DEVICES)}
    assert gateway.written > 0 and len(records) == gateway.written
    assert all(r.disconnected_at is not None for r in records)
