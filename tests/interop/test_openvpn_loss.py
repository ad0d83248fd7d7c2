"""The real openvpn 2.6 client over a lossy link: 5 % and 10 % of the UDP datagrams dropped
each way in the client's namespace (``Namespace.set_udp_loss``).

One topology for the module, with ``CLIENTS`` extra client namespaces, each on its own link
to the gateway and with its own loss rules, so that clients connect at the same time rather
than one after another (a try's outcome depends on its own link's draws, not on the wall
clock). Per loss rate: 20 tries, each a fresh client process stopped once connected and each
within the client's handshake window, spread over those namespaces; meanwhile a client in
the topology's own client namespace (lossy too) moves 1 MB each way over a TCP stream
through the tunnel, checked by SHA-256.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from tests.interop.conftest import (
    GATEWAY_OUTER,
    PORT,
    STREAM_PORT,
    STREAM_TOOL,
    VPC_HOST,
    Topology,
    build_topology,
)
from tests.netns import Namespace, file_contains, wait_until

pytestmark = pytest.mark.interop

CONNECTED = "Initialization Sequence Completed"
TRIES = 20
CLIENTS = 10  # namespaces trying at once: two tries each
HAND_WINDOW = 60.0  # the client's default: beyond it the handshake has failed
ONE_MB = 1024 * 1024


@dataclass
class Lossy:
    topo: Topology
    clients: list[Namespace]  # one link to the gateway each, its own loss rules
    profiles: list[str]  # a user of its own for each client namespace, then the stream's

    @property
    def every_namespace(self) -> list[Namespace]:
        return [self.topo.client_ns, *self.clients]


@pytest.fixture(scope="module")
def lossy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lossy]:
    with build_topology(tmp_path_factory.mktemp("ovpn-loss"), prefix="ls") as topo:
        clients, profiles = [], []
        for n in range(CLIENTS + 1):
            if n < CLIENTS:
                ns = topo.lab.namespace(f"l{n}")
                topo.lab.link(ns, f"198.19.{10 + n}.2/24", topo.gateway_ns,
                              f"198.19.{10 + n}.1/24")
                ns.run("ip", "route", "add", f"{GATEWAY_OUTER}/32", "via", f"198.19.{10 + n}.1")
                clients.append(ns)
            topo.issue(f"lossy{n}", "phone")  # the CLI runs here, never in the threads
            profiles.append(str(topo.profile(f"lossy{n}", "phone", "udp")))
        yield Lossy(topo, clients, profiles)


def _connect_once(topo: Topology, ns: Namespace, profile: str, attempt: str) -> float | None:
    """Start a client in ``ns``, return seconds until it is connected (None: not within the
    handshake window), stop it."""
    log = topo.work / f"loss-{attempt}-{time.monotonic_ns()}.log"
    started = time.monotonic()
    proc = ns.spawn(["openvpn", "--config", profile, "--disable-dco",
                     "--verb", "3", "--log", str(log)])
    try:
        if not wait_until(file_contains(log, CONNECTED), HAND_WINDOW, interval=0.05):
            return None
        return time.monotonic() - started
    finally:
        topo.lab.stop(proc)


def _tries(lossy: Lossy, percent: int, n: int) -> list[float | None]:
    """Client namespace ``n``'s share of the tries, one after another, with its own
    certificate (clients at once are different users, as on a real network)."""
    return [_connect_once(lossy.topo, lossy.clients[n], lossy.profiles[n], f"{percent}-{k}")
            for k in range(n, TRIES, CLIENTS)]


def _stream(topo: Topology, mode: str) -> dict[str, object]:
    out = topo.client_ns.run(sys.executable, STREAM_TOOL, mode, VPC_HOST, str(STREAM_PORT),
                             str(ONE_MB), timeout=180)
    return dict(json.loads(out))


def _streams(lossy: Lossy, percent: int) -> tuple[dict[str, object], dict[str, object]]:
    """Connect in the topology's client namespace and move 1 MB up, then 1 MB down."""
    topo, profile = lossy.topo, lossy.profiles[-1]
    log = topo.work / f"loss-stream-{percent}.log"
    proc = topo.client_ns.spawn(["openvpn", "--config", profile, "--disable-dco",
                                 "--verb", "3", "--log", str(log)])
    try:
        assert wait_until(file_contains(log, CONNECTED), HAND_WINDOW), log.read_text()
        return _stream(topo, "put"), _stream(topo, "get")
    finally:
        topo.lab.stop(proc)


@pytest.mark.parametrize("percent", [5, 10])
def test_connects_every_time_and_keeps_a_stream_intact(lossy: Lossy, percent: int) -> None:
    for ns in lossy.every_namespace:
        ns.set_udp_loss(percent, port=PORT)
    try:
        with ThreadPoolExecutor(CLIENTS + 1) as pool:
            streams = pool.submit(_streams, lossy, percent)
            shares = [pool.submit(_tries, lossy, percent, n) for n in range(CLIENTS)]
            took = [seconds for share in shares for seconds in share.result()]
            up, down = streams.result()
        assert len(took) == TRIES
        failed = [n for n, seconds in enumerate(took) if seconds is None]
        assert not failed, f"tries that did not connect within {HAND_WINDOW} s: {failed}"
        times = [seconds for seconds in took if seconds is not None]
        sys.stderr.write(f"\n[interop] {percent} % loss each way: {TRIES}/{TRIES} connected, "
                         f"median {statistics.median(times):.2f} s, max {max(times):.2f} s\n")
        assert up["ok"] and up["bytes"] == ONE_MB, up
        assert down["ok"] and down["bytes"] == ONE_MB, down
        assert sum(ns.udp_loss_dropped() for ns in lossy.every_namespace) > 0  # lossy indeed
    finally:
        for ns in lossy.every_namespace:
            ns.set_udp_loss(0, port=PORT)
