"""`sslvpn sessions` and `sslvpn kick` against a gateway's control socket."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
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
    peer_info = {"a1": b"\nIV_VER=2.4.12\nIV_PLAT=linux\nIV_SSO=webauth\n",
                 "b2": b"\nIV_VER=3.10\nIV_PLAT=ios\nIV_GUI_VER=net.openvpn.connect.ios_3.5\n"}
    for serial in ("a1", "b2"):
        core = FakeCore()
        client = gateway.new_session(core, transmit=lambda _d: None, protocol="udp",
                                     real_address="198.18.0.2:5000", on_closed=lambda: None)
        assert client.driver is not None
        client.driver.feed(VERIFY + serial.encode() + peer_info[serial])
        await decided(core)
        cores[serial] = core
    server = ControlServer(gateway, DataPaths(tmp_path).control_socket)
    await server.start()
    try:
        code, table = await asyncio.to_thread(_cli, tmp_path, "sessions")
        assert code == 0
        assert "alice" in table and "10.8.0.2" in table and "laptop" in table
        summary, header, first, second = table.splitlines()[:4]
        assert summary.startswith("clients held: 0 (not authenticated yet: udp 0, tcp 0; at "
                                  "most 16 per source)")
        assert header.split()[-2:] == ["IDLE", "CLIENT"]
        assert all(re.search(r" \d+s ", row) for row in (first, second)), table  # idle, short
        assert first.endswith(" 2.4.12 linux")
        assert second.endswith(" 3.10 ios (net.openvpn.connect.ios_3.5)")
        code, text = await asyncio.to_thread(_cli, tmp_path, "sessions", "--json")
        shown = json.loads(text)
        rows = shown["sessions"]
        assert shown["listeners"]["half_open"] == {"udp": 0, "tcp": 0}
        assert [r["user"] for r in rows] == ["alice", "bob"]
        assert [(r["client_version"], r["client_platform"], r["client_gui"]) for r in rows] == [
            ("2.4.12", "linux", None), ("3.10", "ios", "net.openvpn.connect.ios_3.5")]
        assert "webauth" not in text  # IV_SSO and the like are never recorded
        for older, users in (("2.5", ["alice"]), ("2.4.12", []), ("3.10.1", ["alice", "bob"])):
            code, text = await asyncio.to_thread(
                _cli, tmp_path, "sessions", "--json", "--older-than", older)
            assert [r["user"] for r in json.loads(text)["sessions"]] == users, older
        code, text = await asyncio.to_thread(_cli, tmp_path, "sessions", "--older-than", "x2")
        assert code == 2 and "'x2' is not a version such as 2.6 or 2.5.11" in text
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
