"""`sslvpn sessions` and `sslvpn kick` against a gateway's control socket."""

from __future__ import annotations

import asyncio
import ipaddress
import json
from pathlib import Path

from click.testing import CliRunner

from sslvpn.cli import main
from sslvpn.config import DataPaths
from sslvpn.runtime.control_server import ControlServer
from sslvpn.runtime.gateway import Gateway, GatewayOptions
from sslvpn.runtime.tun import MemoryTun
from tests.runtime.fakes import VERIFY, FakeCore, MemoryPolicy, decided


def _cli(data_dir: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--data-dir", str(data_dir), *args])
    return result.exit_code, result.output


async def test_sessions_table_json_and_kick(tmp_path: Path) -> None:
    policy = MemoryPolicy()
    policy.add("a1", "alice")
    policy.add("b2", "bob")
    gateway = Gateway(MemoryTun(), GatewayOptions(pool=ipaddress.IPv4Network("10.8.0.0/24"),
                                                  vpc_networks=()), policy)
    await gateway.start()
    cores = {}
    for serial in ("a1", "b2"):
        core = FakeCore()
        client = gateway.new_session(core, transmit=lambda _d: None, protocol="udp",
                                     real_address="198.18.0.2:5000", on_closed=lambda: None)
        assert client.driver is not None
        client.driver.feed(VERIFY + serial.encode())
        await decided(core)
        cores[serial] = core
    server = ControlServer(gateway, DataPaths(tmp_path).control_socket)
    await server.start()
    try:
        code, table = await asyncio.to_thread(_cli, tmp_path, "sessions")
        assert code == 0
        assert "alice" in table and "10.8.0.2" in table and "laptop" in table
        summary, header = table.splitlines()[:2]
        assert summary.startswith("clients held: 0 (not authenticated yet: udp 0, tcp 0)")
        assert header.split()[-1] == "IDLE" and " 0s" in table
        code, text = await asyncio.to_thread(_cli, tmp_path, "sessions", "--json")
        shown = json.loads(text)
        rows = shown["sessions"]
        assert shown["listeners"]["half_open"] == {"udp": 0, "tcp": 0}
        assert [r["user"] for r in rows] == ["alice", "bob"]
        code, text = await asyncio.to_thread(_cli, tmp_path, "kick", rows[0]["session_id"])
        assert (code, text.strip()) == (0, "ended 1 session")
        assert cores["a1"].closed and not cores["b2"].closed
        code, text = await asyncio.to_thread(_cli, tmp_path, "kick", "bob", "--reason", "bye")
        assert (code, text.strip()) == (0, "ended 1 session")
        await gateway.records.flush()  # accounting is written behind
        assert policy.closed[-1].reason == "bye"
        code, text = await asyncio.to_thread(_cli, tmp_path, "kick", "nobody")
        assert code == 1 and "no live session or user named 'nobody'" in text
        code, text = await asyncio.to_thread(_cli, tmp_path, "sessions")
        assert (code, text.strip().splitlines()[-1]) == (0, "no live sessions")
    finally:
        await server.close()


def test_no_running_gateway_is_one_clear_line(tmp_path: Path) -> None:
    for args in (("sessions",), ("kick", "alice")):
        code, text = _cli(tmp_path, *args)
        assert code == 1
        assert text.strip() == f"Error: no gateway running (no control socket at "\
                               f"{DataPaths(tmp_path).control_socket})"
