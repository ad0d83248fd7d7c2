"""The OpenVPN listeners under attack, on the wire: forged resets and a TCP flood.

Packets are built with the project's own client core from a leaked key (the tls-crypt key,
a tls-crypt-v2 client key) and sent from a raw socket with a forged source address, the
victim 198.18.0.77 on the client namespace's link; an nft counter there counts what the
gateway reflects to it. The TCP flood runs from the second client namespace (eight source
addresses) while real openvpn 2.6 clients connect one after the other from the first.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sslvpn.config import DataPaths
from sslvpn.openvpn.client import ClientConfig, ClientSession
from sslvpn.runtime.control import ListenerStatus
from sslvpn.store import db, queries
from tests.interop.conftest import (
    GATEWAY_OUTER,
    PORT,
    SSLVPN,
    Topology,
    build_topology,
    update_settings,
)
from tests.netns import Namespace, file_contains, wait_until
from tests.runtime.loopback import client_config

pytestmark = pytest.mark.interop
log = logging.getLogger(__name__)

FLOOD_TOOL = str(Path(__file__).with_name("flood_tool.py"))
VICTIM = "198.18.0.77"
CONNECTED = "Initialization Sequence Completed"
RETRANSMIT_WINDOW = 7.0  # seconds: past a 2.6 server's first two retransmissions (2 s, 6 s)
FLOOD_SOURCES = [f"198.19.0.{n}" for n in range(2, 10)]


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    with build_topology(tmp_path_factory.mktemp("o20-attacks"), prefix="o20") as topo:
        cli_link = _link_of(topo.client_ns, "198.18.0.2")
        topo.client_ns.run("ip", "addr", "add", f"{VICTIM}/32", "dev", cli_link)
        cl2_link = _link_of(topo.second_client_ns, "198.19.0.2")
        for source in FLOOD_SOURCES[1:]:
            topo.second_client_ns.run("ip", "addr", "add", f"{source}/32", "dev", cl2_link)
        topo.client_ns.run("nft", "-f", "-", stdin=(
            "table ip o20victim {\n chain in {\n  type filter hook input priority 0;\n"
            f"  ip daddr {VICTIM} udp sport {PORT} counter drop\n }}\n}}\n"))
        topo.issue("mallory", "leaked")
        topo.issue("alice", "laptop")
        yield topo


def _link_of(ns: Namespace, address: str) -> str:
    for line in ns.run("ip", "-o", "-4", "addr", "show").splitlines():
        if f" {address}/" in line:
            return line.split()[1]
    raise AssertionError(f"no link with {address}")


def _leaked_config(topo: Topology, *, v2: bool, tcp: bool = False) -> ClientConfig:
    """A client configuration from mallory's certificate row: its tls-crypt-v2 client key,
    or the gateway's tls-crypt key."""
    paths = DataPaths(topo.data_dir)
    engine = db.open_engine(f"sqlite:///{paths.database}")
    try:
        with db.session(engine, write=False) as s:
            row = queries.get_certificate(s, serial=topo.issued["mallory/leaked"])
    finally:
        engine.dispose()
    return client_config(paths, row, v2=v2, tcp=tcp)


def _resets(config: ClientConfig, count: int) -> list[bytes]:
    """``count`` first packets, each of a new client (its own session id)."""
    return [ClientSession(config, time.time()).datagrams_to_send(time.time())[0]
            for _ in range(count)]


def _write(path: Path, packets: list[bytes]) -> Path:
    path.write_bytes(b"".join(struct.pack("!H", len(p)) + p for p in packets))
    return path


def _victim_counter(topo: Topology) -> tuple[int, int]:
    """Packets and bytes the gateway sent to the victim so far."""
    listing = json.loads(topo.client_ns.run("nft", "-j", "list", "table", "ip", "o20victim"))
    for item in listing["nftables"]:
        expr = item.get("rule", {}).get("expr", [])
        for part in expr:
            if "counter" in part:
                return part["counter"]["packets"], part["counter"]["bytes"]
    raise AssertionError("no victim counter")


def _forge(topo: Topology, name: str, packets: list[bytes], sport: int) -> None:
    path = _write(topo.work / f"{name}.bin", packets)
    sent = topo.client_ns.run(sys.executable, FLOOD_TOOL, "udp", VICTIM, GATEWAY_OUTER,
                              str(PORT), str(path), str(sport))
    assert int(sent) == len(packets)


def _status(topo: Topology) -> ListenerStatus:
    return topo.control.listener_status()


def _restart_gateway(topo: Topology) -> None:
    """Stop the module's gateway and start it again on the stored settings."""
    assert topo.gateway is not None
    topo.lab.stop(topo.gateway)
    topo.gateway_log = topo.work / f"gateway-{time.monotonic_ns()}.log"
    topo.gateway = topo.gateway_ns.spawn(
        [SSLVPN, "--data-dir", str(topo.data_dir), "serve", "--listen", GATEWAY_OUTER],
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
    v2 = _leaked_config(topo, v2=True)
    legacy = dataclasses.replace(v2, early_negotiation=False)  # what OpenVPN 2.5 sends
    forged = _resets(legacy, 100) + _resets(v2, 50) + _resets(_leaked_config(topo, v2=False), 50)
    before = _victim_counter(topo)
    _forge(topo, "forged-default", forged, 20000)
    assert wait_until(lambda: _status(topo).refused.get("no-cookie-support", 0) == 100, 10)
    time.sleep(RETRANSMIT_WINDOW)  # a measurement window, not a synchronisation
    packets, size = (a - b for a, b in zip(_victim_counter(topo), before, strict=True))
    status = _status(topo)
    log.info(f"force-cookie on: {len(forged)} forged resets -> {packets} packets, {size} bytes "
          f"at the victim (factor {packets / len(forged):.2f}, bytes "
          f"{size / sum(len(p) + 28 for p in forged):.2f}); {status}")
    assert packets == 100 and size < sum(len(p) + 28 for p in forged[100:])
    assert status.half_open["udp"] == 0

    update_settings(topo.data_dir, tls_crypt_v2_force_cookie=False)
    try:
        _restart_gateway(topo)
        before = _victim_counter(topo)
        forged = _resets(legacy, 100)
        _forge(topo, "forged-no-cookie", forged, 30000)
        assert wait_until(lambda: _status(topo).half_open["udp"] == 16, 10)
        time.sleep(RETRANSMIT_WINDOW)
        packets, size = (a - b for a, b in zip(_victim_counter(topo), before, strict=True))
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
    reset = _resets(_leaked_config(topo, v2=False, tcp=True), 1)
    path = _write(topo.work / "tcp-reset.bin", reset)
    flood = subprocess.Popen(
        ["ip", "netns", "exec", topo.second_client_ns.name, sys.executable, FLOOD_TOOL,
         "tcp", GATEWAY_OUTER, str(PORT), str(path), "400", *FLOOD_SOURCES],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)
    topo.lab.processes.append(flood)  # type: ignore[arg-type]
    profile = topo.profile("alice", "laptop", "tcp")
    times: list[float] = []
    try:
        assert flood.stdout is not None and flood.stdout.readline().strip() == "ready"
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
        made = flood.communicate("", timeout=30)[0].strip()
    log.info(f"TCP flood ({made} connections made): 20 real clients connected in "
          f"{min(times):.3f}-{max(times):.3f} s (median {statistics.median(times):.3f}); "
          f"{status}")
    assert max(times) < 0.5, times
    assert status.refused.get("half-open-per-address", 0) > 0
