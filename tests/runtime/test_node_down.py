"""A down node, seen from a running `serve --node`: its heartbeat ends the live sessions of
a node that stopped beating (in the store, "node down"), and a node that was taken for down
while it ran ends those sessions itself at its next sweep, as it does a kick asked through
the store."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import update

from client_profiles import fleet
from sslvpn.store import db, fleet_queries, queries
from sslvpn.store.models import VpnSessionRecord, utcnow
from tests.runtime.loopback import (
    client_config,
    connected,
    issue,
    make_data_folder,
    running_service,
)


async def _until(condition: Callable[[], bool], timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not await asyncio.to_thread(condition):
            await asyncio.sleep(0.02)


async def test_a_running_node_ends_the_sessions_of_a_node_that_stopped_beating(
    tmp_path: Path,
) -> None:
    paths, engine = make_data_folder(tmp_path)
    fleet.add_node(engine, name="a", public_addresses=["198.18.0.1"], actor="test")
    fleet.add_node(engine, name="b", public_addresses=["198.18.0.2"], actor="test")
    with db.session(engine, write=True) as s:  # node a never beat: down
        queries.open_session_record(
            s, session_id="udp-a", gateway_name="default", node="a", user_name="alice",
            certificate_serial="ab", real_address="198.51.100.7:5000", vpn_address="10.8.0.2",
            protocol="udp", connected_at=utcnow())
        queries.set_lease(s, serial="ab", address="10.8.0.2")

    def ended() -> bool:
        with db.session(engine, write=False) as s:
            return not queries.list_session_records(s, open_only=True)

    async with running_service(paths, engine, node="b", heartbeat_interval=0.05):
        await _until(ended)
    with db.session(engine, write=False) as s:
        [record] = queries.list_session_records(s)
        assert record.disconnect_reason == "node down"
        assert queries.leased_addresses(s) == {}
        assert [e.actor for e in queries.list_audit(s, action="node.down")] == ["node b"]
    engine.dispose()


async def test_a_node_taken_for_down_or_asked_through_the_store_ends_its_sessions(
    tmp_path: Path,
) -> None:
    paths, engine = make_data_folder(tmp_path)
    fleet.add_node(engine, name="b", public_addresses=["198.18.0.2"], actor="test")
    rows = [issue(paths, engine, "alice", device) for device in ("laptop", "phone")]
    async with running_service(paths, engine, node="b", heartbeat_interval=0.05) as (service, _):
        gateway = service.gateway
        assert gateway is not None
        clients = [await connected(service, client_config(paths, row, v2=False, tcp=False))
                   for row in rows]
        [laptop, phone] = sorted(gateway.list_sessions(), key=lambda s: s.device)

        def recorded() -> bool:
            with db.session(engine, write=False) as s:
                return len(queries.list_session_records(s, open_only=True)) == 2

        await _until(recorded)
        with db.session(engine, write=True) as s:  # what a survivor did while b was cut off
            s.connection().execute(
                update(VpnSessionRecord).where(VpnSessionRecord.session_id == laptop.session_id)
                .values(disconnected_at=utcnow(), disconnect_reason="node down"))
            fleet_queries.request_end(s, session_id=phone.session_id, reason="kicked by carol")
        await _until(lambda: not gateway.list_sessions())
        for client in clients:
            client.close_transport()
    with db.session(engine, write=False) as s:
        reasons = {r.session_id: r.disconnect_reason for r in queries.list_session_records(s)}
    assert reasons == {laptop.session_id: "node down", phone.session_id: "kicked by carol"}
    engine.dispose()
