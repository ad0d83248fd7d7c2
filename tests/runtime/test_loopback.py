"""The whole gateway service on loopback, driven by the client-role session core."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from sqlalchemy import event

from client_profiles import lifecycle
from sslvpn.openvpn.events import SessionClosed
from sslvpn.store import db, queries
from tests.runtime.fakes import ipv4
from tests.runtime.loopback import (
    UdpClientProtocol,
    client_config,
    connect,
    connected,
    issue,
    make_data_folder,
    running_service,
)

VPC_HOST = "10.10.0.10"


@pytest.mark.parametrize(
    ("tcp", "v2", "listen"),
    [(False, False, "127.0.0.1"), (True, True, "127.0.0.1"), (False, True, "::1"),
     (True, False, "::1")],
    ids=["udp-tls-crypt", "tcp-tls-crypt-v2", "udp6-tls-crypt-v2", "tcp6-tls-crypt"],
)
async def test_connect_and_packets_both_ways(
    tmp_path: Path, tcp: bool, v2: bool, listen: str
) -> None:
    paths, engine = make_data_folder(tmp_path)
    row = issue(paths, engine, "alice")
    async with running_service(paths, engine, listen) as (service, tun):
        client = await connected(service, client_config(paths, row, v2=v2, tcp=tcp))
        me = client.address
        assert me == "10.8.0.2"
        assert any(o == "route 10.10.0.0 255.255.255.0" for o in client.session.pushed_options)
        outbound = ipv4(me, VPC_HOST, b"echo request")
        client.send(outbound)
        await tun.wait_written(lambda p: p == outbound)
        inbound = ipv4(VPC_HOST, me, b"echo reply")
        tun.inject(inbound)
        assert await client.wait_packet() == inbound
        # anti-spoofing and VPC-only: neither reaches the TUN
        client.send(ipv4("10.8.0.99", VPC_HOST, b"spoofed"))
        client.send(ipv4(me, "192.0.2.1", b"internet"))
        marker = ipv4(me, VPC_HOST, b"marker")
        client.send(marker)
        await tun.wait_written(lambda p: p == marker)
        assert not any(b"spoofed" in p or b"internet" in p for p in tun.written)
        assert service.gateway is not None
        assert service.gateway.drops["spoofed-source"] == 1
        assert service.gateway.drops["outside-vpc"] == 1
        [info] = service.gateway.list_sessions()
        expected = ("alice", "tcp" if tcp else "udp", me)
        assert (info.user, info.protocol, info.vpn_address) == expected
        assert info.real_address.startswith("[::1]:" if ":" in listen else "127.0.0.1:")
        client.close_transport()
    engine.dispose()


async def test_kick_revocation_sweep_and_lease_reuse(tmp_path: Path) -> None:
    paths, engine = make_data_folder(tmp_path)
    alice = issue(paths, engine, "alice")
    bob = issue(paths, engine, "bob")
    async with running_service(paths, engine) as (service, _tun):
        gateway = service.gateway
        assert gateway is not None
        first = await connected(service, client_config(paths, alice, v2=False, tcp=False))
        assert first.address == "10.8.0.2"
        [info] = gateway.list_sessions()
        assert gateway.kick(info.session_id)
        async with asyncio.timeout(5):
            await first.closed.wait()  # the client was told (RESTART)
        first.close_transport()
        other = await connected(service, client_config(paths, bob, v2=False, tcp=True))
        assert other.address == "10.8.0.3"  # alice's lease is kept free
        again = await connected(service, client_config(paths, alice, v2=False, tcp=False))
        assert again.address == "10.8.0.2"
        # revoked by "another process": the sweep disconnects within its interval
        lifecycle.revoke(engine, paths, serial=alice.serial, actor="test")
        async with asyncio.timeout(5):
            await again.closed.wait()
        assert [s.user for s in gateway.list_sessions()] == ["bob"]
        # disabling a user works the same way
        with db.session(engine, write=True) as s:  # the gateway writes meanwhile
            queries.set_user_disabled(s, name="bob", disabled=True)
        async with asyncio.timeout(5):
            await other.closed.wait()
        assert gateway.list_sessions() == []
        # and a revoked certificate is refused at connect time with the reason
        refused = await connect(service, client_config(paths, alice, v2=False, tcp=False))
        async with asyncio.timeout(10):
            await refused.closed.wait()
        assert refused.session.auth_failed == "certificate revoked"
        for client in (again, other, refused):
            client.close_transport()
    with db.session(engine) as s:
        records = queries.list_session_records(s, user_name="alice")
    assert {r.disconnect_reason for r in records} == {"kicked by admin", "certificate revoked"}
    engine.dispose()


async def test_a_slow_store_holds_no_push_reply_of_a_client_it_admitted_before(
        tmp_path: Path) -> None:
    """While the store's admission reads hang, a client whose certificate a read admitted a
    moment ago connects again at once (the snapshot), and a disabled user's client still
    waits for the read and is refused when it comes."""
    paths, engine = make_data_folder(tmp_path)
    alice = issue(paths, engine, "alice")
    bob = issue(paths, engine, "bob")
    reading = threading.Event()
    reading.set()
    held: list[str] = []

    def slow_admission_reads(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if "max_sessions" in statement and not reading.is_set():  # admission reads only
            held.append(statement)
            reading.wait(30)  # longer than `connected` waits

    event.listen(engine, "before_cursor_execute", slow_admission_reads)
    try:
        async with running_service(paths, engine) as (service, _tun):
            first = await connected(service, client_config(paths, alice, v2=False, tcp=False))
            first.close_transport()
            with db.session(engine, write=True) as s:
                queries.set_user_disabled(s, name="bob", disabled=True)
            reading.clear()
            again = await connected(service, client_config(paths, alice, v2=False, tcp=False))
            refused = await connect(service, client_config(paths, bob, v2=False, tcp=False))
            async with asyncio.timeout(5):  # alice's confirming read and bob's read, hung
                while len(held) < 2:
                    await asyncio.sleep(0.01)
            assert not refused.closed.is_set()  # bob waits for the store
            reading.set()
            async with asyncio.timeout(10):
                await refused.closed.wait()
            assert refused.session.auth_failed == "user disabled"
            assert not again.closed.is_set()
            for client in (again, refused):
                client.close_transport()
    finally:
        reading.set()
        event.remove(engine, "before_cursor_execute", slow_admission_reads)
    engine.dispose()


async def test_shutdown_tells_connected_clients(tmp_path: Path) -> None:
    paths, engine = make_data_folder(tmp_path)
    row = issue(paths, engine, "alice")
    async with running_service(paths, engine) as (service, tun):
        client = await connected(service, client_config(paths, row, v2=False, tcp=False))
    async with asyncio.timeout(5):
        await client.closed.wait()
    assert any(isinstance(e, SessionClosed) and "RESTART" in e.reason for e in client.events)
    assert tun.closed
    assert not paths.control_socket.exists()
    client.close_transport()
    engine.dispose()


async def test_udp_client_floats_to_a_new_address(tmp_path: Path) -> None:
    paths, engine = make_data_folder(tmp_path)
    row = issue(paths, engine, "alice")
    async with running_service(paths, engine) as (service, tun):
        client = await connected(service, client_config(paths, row, v2=False, tcp=False))
        assert service.gateway is not None
        [before] = service.gateway.list_sessions()
        # the client's NAT mapping changes: same session, new source port
        loop = asyncio.get_running_loop()
        moved, _ = await loop.create_datagram_endpoint(
            lambda: UdpClientProtocol(client), remote_addr=service.udp[0].address)
        assert client.driver is not None
        client.driver._transmit = moved.sendto  # type: ignore[assignment]
        me = client.address
        outbound = ipv4(me, VPC_HOST, b"from the new address")
        client.send(outbound)
        await tun.wait_written(lambda p: p == outbound)
        [after] = service.gateway.list_sessions()
        assert after.session_id == before.session_id
        assert after.real_address != before.real_address
        inbound = ipv4(VPC_HOST, me, b"to the new address")
        tun.inject(inbound)
        assert await client.wait_packet() == inbound  # arrived through the new socket
        # a forged packet with the peer-id from yet another address does not move it
        forger, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, remote_addr=service.udp[0].address)
        peer_id = client.session.data_peer_id
        assert peer_id is not None
        forger.sendto(bytes([0x48]) + peer_id.to_bytes(3, "big") + bytes(40))
        async with asyncio.timeout(5):
            while not service.udp[0].drops["float-unauthenticated"]:
                await asyncio.sleep(0.01)
        [still] = service.gateway.list_sessions()
        assert still.real_address == after.real_address
        for transport in (forger, moved):
            transport.close()
        client.close_transport()
    engine.dispose()
