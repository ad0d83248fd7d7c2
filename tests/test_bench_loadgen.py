"""The load generator's accounting: each simulated session counts once, lateness is timed
over all its processes; its clients come from several source addresses."""

from __future__ import annotations

import json
import os
import socket
from collections import deque
from pathlib import Path
from typing import Any, cast

from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from bench.loadgen import (
    STALL_S,
    Swarm,
    combine,
    load_configs,
    share_of,
    share_sources,
    share_up_after,
    udp_rcvbuf_errors,
)
from sslvpn.openvpn.client import ClientSession
from sslvpn.openvpn.constants import HAND_WINDOW
from sslvpn.openvpn.events import Event, SessionClosed, SessionEstablished
from sslvpn.openvpn.static_key import parse_static_key
from sslvpn.openvpn.tls import TlsContext, TlsCredentials, TlsEngine
from sslvpn.runtime.admission import HALF_OPEN_PER_ADDRESS
from tests.runtime.loopback import client_config, issue, make_data_folder

UP = SessionEstablished(cipher="AES-256-GCM", key_derivation="tls-ekm", peer_id=0,
                        tls_version="TLSv1.3")


class _Scripted:
    """Stands in for a ClientSession: emits the given events, sends nothing."""

    def __init__(self, *events: Event) -> None:
        self._events = deque(events)

    def datagrams_to_send(self, now: float) -> list[bytes]:
        return []

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        return None


def test_each_session_counts_once_and_closes_after_coming_up_are_lost() -> None:
    swarm = Swarm(("198.18.0.1", 1194), [])
    swarm.sessions = [cast(ClientSession, s) for s in (
        _Scripted(UP, SessionClosed("ping-restart")),  # came up, then lost
        _Scripted(SessionClosed("TLS key negotiation did not finish")),  # failed
        _Scripted(UP, UP),  # a repeated event is still one session
        _Scripted(),  # still in flight
    )]
    swarm.sockets = [cast(socket.socket, None)] * 4  # never used: nothing to send
    for index in range(4):
        swarm._pump(index, 0.0)
    assert (swarm.established, swarm.failed, swarm.lost, swarm.in_flight) == (2, 1, 1, 1)
    assert swarm.failures == {"after up: ping-restart": 1,
                              "TLS key negotiation did not finish": 1}


def test_a_session_told_to_retry_later_starts_again_after_its_backoff() -> None:
    """AUTH_FAILED,TEMP (the server's store busy) is no failure: a real client comes back
    after the backoff, so the simulated one stays in flight and is started again then."""
    swarm = Swarm(("198.18.0.1", 1194), [])
    swarm.sessions = [cast(ClientSession, _Scripted(
        SessionClosed("AUTH_FAILED TEMP[backoff 5]:the server cannot check certificates")))]
    swarm.sockets = [cast(socket.socket, None)]
    swarm._pump(0, 100.0)
    assert (swarm.failed, swarm.retried, swarm.in_flight) == (0, 1, 1)
    assert swarm.timers == [(105.0, 0)] and swarm.retry_at == {0: 105.0}


def test_share_up_after_counts_against_the_stage_size() -> None:
    up_after = [0.1, 0.2, 2.2, 2.3]
    assert share_up_after(up_after, 4, 0.5) == 0.2
    assert share_up_after(up_after, 4, 1.0) == 2.3
    assert share_up_after(up_after, 10, 0.5) is None  # only 4 of 10 came up


def test_rcvbuf_errors_are_read_from_the_process_namespace() -> None:
    assert isinstance(udp_rcvbuf_errors(os.getpid()), int)
    assert udp_rcvbuf_errors(2**22 + 7) is None  # no such process


def test_clients_take_the_source_addresses_in_turn(tmp_path: Path) -> None:
    """The scale stage's wave spreads over its sources, so no source reaches the server's
    budget of clients not yet authenticated (one address was throttled to 16 at a time)."""
    paths, engine = make_data_folder(tmp_path)
    config = client_config(paths, issue(paths, engine, "alice"), v2=False, tcp=False)
    engine.dispose()
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(5)
    sources = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
    wave = 2 * HALF_OPEN_PER_ADDRESS
    swarm = Swarm(server.getsockname(), [config] * wave, sources)
    swarm.start(wave)
    try:
        seen = [server.recvfrom(4096)[1][0] for _ in range(wave)]  # each client's reset
    finally:
        server.close()
        for sock in swarm.sockets:
            sock.close()
    assert {host: seen.count(host) for host in sources} == {host: wave // 3 + (i < wave % 3)
                                                           for i, host in enumerate(sources)}
    assert max(seen.count(host) for host in sources) < HALF_OPEN_PER_ADDRESS


def test_shares_split_the_clients_and_keep_every_source_in_turn() -> None:
    """Split over 3 processes, 10,000 clients stay 10,000 and share k's j-th client binds
    the source client k + 3j of one swarm would."""
    assert [share_of(10_000, i, 3) for i in range(3)] == [3334, 3333, 3333]
    sources = tuple(f"198.18.0.{10 + i}" for i in range(4))
    for index in range(3):
        mine = share_sources(sources, index, 3)
        assert [mine[j % len(mine)] for j in range(8)] == \
            [sources[(index + 3 * j) % 4] for j in range(8)]


def test_a_stage_is_timed_over_every_share() -> None:
    """The shares' up times merge: 50 % of 4 new clients were up when the second of all
    came up, whichever share it was in; counts and failures add up."""
    reports: list[dict[str, Any]] = [
        {"established": 2, "failed": 0, "lost": 1, "up_after": [0.5, 3.0], "send_errors": 1,
         "in_flight": 0, "in_flight_no_reset": 0, "in_flight_next_timer_s": None,
         "failures": {"after up: x": 1}},
        {"established": 1, "failed": 1, "lost": 0, "up_after": [1.0], "send_errors": 0,
         "in_flight": 1, "in_flight_no_reset": 1, "in_flight_next_timer_s": 2.0,
         "failures": {"y": 1}},
    ]
    stage = combine(reports, 4, 4)
    assert (stage["established"], stage["live"], stage["failed"]) == (3, 2, 1)
    assert (stage["t50_s"], stage["t100_s"]) == (1.0, None)
    assert stage["rate"] == 1.0  # 3 up by 3.0 s
    assert stage["failures"] == {"after up: x": 1, "y": 1}


def test_simulated_clients_make_the_key_exchange_of_stock_clients(tmp_path: Path) -> None:
    """Against our server's default groups (X25519MLKEM768 first) a simulated client
    negotiates X25519, as the bench's real OpenVPN 2.6 clients (OpenSSL 3.0) and every
    client of the OpenVPN baseline do: ours is not timed on a larger handshake than theirs."""
    paths, engine = make_data_folder(tmp_path)
    row = issue(paths, engine, "alice")
    engine.dispose()
    assert row.key_pem is not None
    credentials = tmp_path / "clients.jsonl"
    credentials.write_text(json.dumps({"cert": row.cert_pem, "key": row.key_pem}) + "\n")
    [config] = load_configs(credentials, paths.ca_cert.read_bytes(),
                            parse_static_key(paths.tls_crypt_key.read_text()))
    ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    server_tls = TlsContext(TlsCredentials(
        certificate=x509.load_pem_x509_certificate(paths.server_cert.read_bytes()),
        private_key=load_pem_private_key(paths.server_key.read_bytes(), None),  # type: ignore[arg-type]
        trust=(ca,)), server=True)
    server, client = TlsEngine(server_tls), TlsEngine(config.tls)
    for _ in range(4):
        client.process()
        server.receive(client.outgoing())
        server.process()
        client.receive(server.outgoing())
    assert server.handshake_done and client.handshake_done
    assert server.group is not None and server.group.lower() == "x25519"


def test_a_stage_ends_on_a_stall_only_after_a_whole_hand_window() -> None:
    """A stage cut short by a stall must not leave clients still inside their hand-window:
    on a loaded host a 20 s gap ended the 50,000 stage with 1,000 handshakes in flight."""
    assert STALL_S > HAND_WINDOW
