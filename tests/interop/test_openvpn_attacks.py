"""The OpenVPN listeners under attack, on the wire: forged resets and a TCP flood.

Packets are built with the project's own client core from a leaked key (the tls-crypt key,
a tls-crypt-v2 client key) and sent from a raw socket with a forged source address, the
victim 198.18.0.77 on the client namespace's link; an nft counter there counts what the
gateway reflects to it. The TCP flood runs from the second client namespace (eight source
addresses) while real openvpn 2.6 clients connect one after the other from the first.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sslvpn.openvpn.client import ClientConfig
from sslvpn.runtime.control import ListenerStatus
from tests.interop.attacks import (
    IP_UDP_HEADERS,
    add_victim,
    forge_udp,
    leaked_config,
    link_of,
    resets,
    start_tcp_flood,
    stop_tcp_flood,
    victim_count,
    write_packets,
)
from tests.interop.conftest import (
    GATEWAY_OUTER,
    PORT,
    SSLVPN,
    Topology,
    build_topology,
    update_settings,
)
from tests.netns import file_contains, wait_until

pytestmark = pytest.mark.interop
log = logging.getLogger(__name__)

VICTIM = "198.18.0.77"
CONNECTED = "Initialization Sequence Completed"
RETRANSMIT_WINDOW = 7.0  # seconds: past a 2.6 server's first two retransmissions (2 s, 6 s)
FLOOD_SOURCES = [f"198.19.0.{n}" for n in range(2, 10)]


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    with build_topology(tmp_path_factory.mktemp("o20-attacks"), prefix="o20") as topo:
        add_victim(topo.client_ns, "198.18.0.2", VICTIM, PORT)
        cl2_link = link_of(topo.second_client_ns, "198.19.0.2")
        for source in FLOOD_SOURCES[1:]:
            topo.second_client_ns.run("ip", "addr", "add", f"{source}/32", "dev", cl2_link)
        topo.issue("mallory", "leaked")
        topo.issue("alice", "laptop")
        yield topo


def _leaked(topo: Topology, *, v2: bool, tcp: bool = False) -> ClientConfig:
    return leaked_config(topo.data_dir, topo.issued["mallory/leaked"], v2=v2, tcp=tcp)


def _forge(topo: Topology, name: str, packets: list[bytes], sport: int) -> None:
    path = write_packets(topo.work / f"{name}.bin", packets)
    assert forge_udp(topo.client_ns, VICTIM, GATEWAY_OUTER, PORT, path, sport) == len(packets)


def _status(topo: Topology) -> ListenerStatus:
    return topo.control.listener_status()


def _restart_gateway(topo: Topology) -> None:
    """Stop the module's gateway and start it again on the stored settings."""
    assert topo.gateway is not None
    topo.lab.stop(topo.gateway)
    topo.gateway_log = topo.work / f"gateway-{time.monotonic_ns()}.log"
    topo.gateway = topo.gateway_ns.spawn(
        [SSLVPN, "--data-dir", str(topo.data_dir), "serve", "--listen", GATEWAY_OUTER,
         "--workers", "1"],
        log=topo.gateway_log)
    if not wait_until(file_contains(topo.gateway_log, "listening on tcp"), 20):
        pytest.fail("gateway did not start again:\n" + topo.gateway_log.read_text())


def test_forged_resets_are_reflected_at_most_once_and_never_retransmitted(
        topology: Topology) -> None:
    """With a leaked key, forged resets get at most one packet each at the victim: none for a
    tls-crypt-v2 client that cannot do the cookie (force-cookie, the default), one stateless
    cookie reply for the others; with force-cookie off, one answer per session made (at most
    16 from the victim's address) and no retransmission within the first two retransmit
    times. Before, each such reset made a session that sent its reset 5 times in ~30 s."""
    topo = topology
    v2 = _leaked(topo, v2=True)
    legacy = dataclasses.replace(v2, early_negotiation=False)  # what OpenVPN 2.5 sends
    forged = resets(legacy, 100) + resets(v2, 50) + resets(_leaked(topo, v2=False), 50)
    before = victim_count(topo.client_ns)
    _forge(topo, "forged-default", forged, 20000)
    assert wait_until(lambda: _status(topo).refused.get("no-cookie-support", 0) == 100, 10)
    time.sleep(RETRANSMIT_WINDOW)  # a measurement window, not a synchronisation
    packets, size = (a - b for a, b in zip(victim_count(topo.client_ns), before, strict=True))
    status = _status(topo)
    log.info(f"force-cookie on: {len(forged)} forged resets -> {packets} packets, {size} bytes "
          f"at the victim (factor {packets / len(forged):.2f}, bytes "
          f"{size / sum(len(p) + IP_UDP_HEADERS for p in forged):.2f}); {status}")
    assert packets == 100 and size < sum(len(p) + IP_UDP_HEADERS for p in forged[100:])
    assert status.half_open["udp"] == 0

    update_settings(topo.data_dir, tls_crypt_v2_force_cookie=False)
    try:
        _restart_gateway(topo)
        before = victim_count(topo.client_ns)
        forged = resets(legacy, 100)
        _forge(topo, "forged-no-cookie", forged, 30000)
        assert wait_until(lambda: _status(topo).half_open["udp"] == 16, 10)
        time.sleep(RETRANSMIT_WINDOW)
        packets, size = (a - b for a, b in zip(victim_count(topo.client_ns), before, strict=True))
        status = _status(topo)
        log.info(f"force-cookie off: {len(forged)} forged resets -> {packets} packets, {size} "
              f"bytes at the victim; {status}")
        assert packets == 16 and status.half_open["udp"] == 16
        assert status.refused == {"half-open-per-address": 84}
        assert status.top_refused_sources == {VICTIM: 84}
    finally:
        update_settings(topo.data_dir, tls_crypt_v2_force_cookie=True)
        _restart_gateway(topo)


def _connect_time(client_log: Path) -> float | None:
    """Seconds from the client's TCP connect attempt to connected (its own timestamps)."""
    start = done = None
    for line in client_log.read_text(errors="replace").splitlines():
        stamp, _, text = line.partition(" ")
        if start is None and "Attempting to establish TCP connection" in text:
            start = float(stamp)
        if CONNECTED in text:
            done = float(stamp)
            break
    return None if start is None or done is None else done - start


def test_a_tcp_flood_with_valid_resets_leaves_real_clients_connecting_at_once(
        topology: Topology) -> None:
    """Eight hosts keep 400 TCP connections coming with a valid reset each (a leaked
    tls-crypt key); 20 real openvpn 2.6 clients from another host connect one after the
    other, each within 0.5 s. Before, the UDP reset limiter applied to TCP and aborted
    rate-limited connections: legitimate clients waited seconds."""
    topo = topology
    reset = resets(_leaked(topo, v2=False, tcp=True), 1)
    path = write_packets(topo.work / "tcp-reset.bin", reset)
    profile = topo.profile("alice", "laptop", "tcp")
    times: list[float] = []
    flood = start_tcp_flood(topo.second_client_ns, GATEWAY_OUTER, PORT, path, 400,
                            FLOOD_SOURCES)
    try:
        assert wait_until(lambda: _status(topo).half_open["tcp"] >= 8 * 16 - 8, 20)
        for i in range(20):
            client_log = topo.work / f"tcp-legit-{i}.log"
            client = topo.client_ns.spawn(
                ["openvpn", "--config", str(profile), "--disable-dco", "--verb", "3",
                 "--machine-readable-output", "--dev", "null", "--route-noexec",
                 "--ifconfig-noexec", "--log", str(client_log)])
            try:
                assert wait_until(file_contains(client_log, CONNECTED), 20), \
                    client_log.read_text()[-2000:]
            finally:
                topo.lab.stop(client)
            took = _connect_time(client_log)
            assert took is not None
            times.append(took)
        status = _status(topo)
    finally:
        made = stop_tcp_flood(flood)
    log.info(f"TCP flood ({made} connections made): 20 real clients connected in "
          f"{min(times):.3f}-{max(times):.3f} s (median {statistics.median(times):.3f}); "
          f"{status}")
    assert max(times) < 0.5, times
    assert status.refused.get("half-open-per-address", 0) > 0
