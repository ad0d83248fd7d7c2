"""The real openvpn 2.6 client over a lossy link: 5 % and 10 % of the UDP datagrams dropped
each way in the client namespace (``Namespace.set_udp_loss``).

One topology for the module; per loss rate the client connects 20 times (a fresh client
process each time, stopped once connected), each within the client's handshake window, and
then a TCP stream through the tunnel moves 1 MB each way, checked by SHA-256.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Iterator

import pytest

from tests.interop.conftest import (
    PORT,
    STREAM_PORT,
    STREAM_TOOL,
    VPC_HOST,
    Topology,
    build_topology,
)
from tests.netns import file_contains, wait_until

pytestmark = pytest.mark.interop

CONNECTED = "Initialization Sequence Completed"
TRIES = 20
HAND_WINDOW = 60.0  # the client's default: beyond it the handshake has failed
ONE_MB = 1024 * 1024


@pytest.fixture(scope="module")
def lossy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    with build_topology(tmp_path_factory.mktemp("ovpn-loss"), prefix="ls") as topo:
        yield topo


def _connect_once(topo: Topology, profile: str, attempt: int) -> float | None:
    """Start a client, return seconds until it is connected (None: not within the
    handshake window), stop it."""
    log = topo.work / f"loss-{attempt}-{time.monotonic_ns()}.log"
    started = time.monotonic()
    proc = topo.client_ns.spawn(["openvpn", "--config", profile, "--disable-dco",
                                 "--verb", "3", "--log", str(log)])
    try:
        if not wait_until(file_contains(log, CONNECTED), HAND_WINDOW, interval=0.02):
            return None
        return time.monotonic() - started
    finally:
        topo.lab.stop(proc)


def _stream(topo: Topology, mode: str) -> dict[str, object]:
    out = topo.client_ns.run(sys.executable, STREAM_TOOL, mode, VPC_HOST, str(STREAM_PORT),
                             str(ONE_MB), timeout=180)
    return dict(json.loads(out))


@pytest.mark.parametrize("percent", [5, 10])
def test_connects_every_time_and_keeps_a_stream_intact(lossy: Topology, percent: int) -> None:
    device = f"lossy-{percent}"
    lossy.issue("alice", device)
    profile = str(lossy.profile("alice", device, "udp"))
    lossy.client_ns.set_udp_loss(percent, port=PORT)
    try:
        took = [_connect_once(lossy, profile, n) for n in range(TRIES)]
        failed = [n for n, seconds in enumerate(took) if seconds is None]
        assert not failed, f"tries that did not connect within {HAND_WINDOW} s: {failed}"
        times = [seconds for seconds in took if seconds is not None]
        sys.stderr.write(f"\n[interop] {percent} % loss each way: {TRIES}/{TRIES} connected, "
                         f"median {statistics.median(times):.2f} s, max {max(times):.2f} s\n")
        log = lossy.work / f"loss-stream-{percent}.log"
        proc = lossy.client_ns.spawn(["openvpn", "--config", profile, "--disable-dco",
                                      "--verb", "3", "--log", str(log)])
        try:
            assert wait_until(file_contains(log, CONNECTED), HAND_WINDOW)
            up, down = _stream(lossy, "put"), _stream(lossy, "get")
        finally:
            lossy.lab.stop(proc)
        assert up["ok"] and up["bytes"] == ONE_MB, up
        assert down["ok"] and down["bytes"] == ONE_MB, down
        assert lossy.client_ns.udp_loss_dropped() > 0  # the link was lossy indeed
    finally:
        lossy.client_ns.set_udp_loss(0, port=PORT)
