"""`serve --node NAME`: the gateway hands out addresses from the node's sub-pool only, beats
its heartbeat, and stops when the node is removed; with no node named, nodes in the store
are a refusal, not a second gateway on the whole pool."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine

from client_profiles import fleet
from sslvpn.cli import main, serve
from sslvpn.cli.serve import announce
from sslvpn.runtime.node import NodeUnknown, vpc_side_addresses
from sslvpn.runtime.service import GatewayService, ServeOptions
from sslvpn.runtime.tun import MemoryTun
from sslvpn.store import db, queries
from sslvpn.store.async_store import AsyncStore
from tests.runtime.loopback import (
    client_config,
    connected,
    issue,
    make_data_folder,
    running_service,
)


def _add_nodes(engine: Engine) -> None:
    fleet.add_node(engine, name="a", public_addresses=["198.18.0.1"], actor="test")
    fleet.add_node(engine, name="b", public_addresses=["198.18.0.2"], pool="10.8.0.64/26",
                   actor="test")


async def _until(condition: Callable[[], bool], timeout: float = 10) -> None:
    """Poll a blocking check (a store read) off the loop until it holds."""
    async with asyncio.timeout(timeout):
        while not await asyncio.to_thread(condition):
            await asyncio.sleep(0.02)


async def test_a_node_serves_its_sub_pool_and_beats_its_heartbeat(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths, engine = make_data_folder(tmp_path)
    with db.session(engine, write=True) as s:
        settings = queries.get_settings(s)
        settings.pool6_cidr = "fd00:8::/64"
        queries.save_settings(s, settings=settings)
    _add_nodes(engine)
    row = issue(paths, engine, "alice")
    async with running_service(paths, engine, node="b", heartbeat_interval=0.05) as (service, _):
        assert service.gateway is not None
        assert service.gateway.pool.network == ipaddress.IPv4Network("10.8.0.64/26")
        announce(service)
        assert capsys.readouterr().out.splitlines()[-1] == (
            "node: b, client addresses from 10.8.0.64/26")
        client = await connected(service, client_config(paths, row, v2=False, tcp=False))
        assert client.address == "10.8.0.66"  # .65 is node b's own tunnel address
        pushed = client.session.pushed_options
        assert "route-gateway 10.8.0.65" in pushed
        assert "ifconfig-ipv6 fd00:8::42/122 fd00:8::41" in pushed  # host 66 mirrored
        assert {"ping 5", "ping-restart 12"} <= set(pushed)  # the keepalive set at init

        def up_with_a_session() -> bool:
            [_, b] = fleet.node_statuses(engine)
            return b.state == "up" and b.sessions == 1

        await _until(up_with_a_session)
        [a, b] = fleet.node_statuses(engine)
        assert (a.state, a.sessions, b.software_version) == ("down", 0, "0.1.0")
        with db.session(engine, write=False) as s:
            [record] = queries.list_session_records(s, open_only=True)
        assert (record.node, record.vpn_address) == ("b", "10.8.0.66")
        client.close_transport()
    engine.dispose()


async def test_a_removed_node_stops_serving(tmp_path: Path) -> None:
    paths, engine = make_data_folder(tmp_path)
    _add_nodes(engine)
    tun = MemoryTun()
    service = GatewayService(
        paths, AsyncStore(engine),
        ServeOptions(listen=("127.0.0.1",), port=0, configure_network=False, node="a",
                     heartbeat_interval=0.05),
        tun_factory=lambda _name: tun,
    )
    task = asyncio.create_task(service.run())
    async with asyncio.timeout(10):
        await service.ready.wait()
    await asyncio.to_thread(fleet.remove_node, engine, name="a", actor="test")
    async with asyncio.timeout(10):
        await task  # the heartbeat found its row gone and stopped the service
    assert tun.closed
    await service.store.close()
    engine.dispose()


@pytest.mark.parametrize(("node", "message"), [
    (None, "this database has nodes (a, b): run `sslvpn serve --node NAME` (or set SSLVPN_NODE)"),
    ("c", "no node named 'c'; add it with `sslvpn node add c ...`"),
])
async def test_serve_refuses_to_guess_the_node(
    tmp_path: Path, node: str | None, message: str
) -> None:
    paths, engine = make_data_folder(tmp_path)
    _add_nodes(engine)
    service = GatewayService(paths, AsyncStore(engine),
                             ServeOptions(node=node, configure_network=False),
                             tun_factory=lambda _name: MemoryTun())
    with pytest.raises(NodeUnknown) as refused:
        await service.run()
    assert str(refused.value) == message
    await service.store.close()
    engine.dispose()


def test_serve_takes_the_node_from_the_flag_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths, engine = make_data_folder(tmp_path)
    engine.dispose()
    seen: list[str | None] = []

    def service(_paths: object, _engine: object, options: ServeOptions) -> None:
        seen.append(options.node)

    monkeypatch.setattr(serve, "GatewayService", service)
    monkeypatch.setattr(serve, "serve", lambda _service: None)
    monkeypatch.setattr(serve, "run", lambda _main: None)
    base = ["--data-dir", str(paths.data_dir), "serve", "--no-portal", "--workers", "1"]
    assert CliRunner().invoke(main, [*base, "--node", "a"]).exit_code == 0
    assert CliRunner().invoke(main, base, env={"SSLVPN_NODE": "b"}).exit_code == 0
    assert CliRunner().invoke(main, base, env={"SSLVPN_NODE": ""}).exit_code == 0
    assert seen == ["a", "b", None]


def test_the_vpc_side_address_is_the_one_the_routing_table_picks() -> None:
    loopback = [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("127.1.0.0/16")]
    assert vpc_side_addresses(loopback) == ["127.0.0.1"]
    assert vpc_side_addresses([]) == []
