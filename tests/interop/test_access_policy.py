"""Access policy against the real openvpn 2.6 client (issue 13).

A user in group "db" reaches 10.10.0.10:5432/tcp and nothing else: not :22, not another VPC
host (10.10.0.11), not by ping; the pushed routes name only 10.10.0.10. The client is given
a route to the whole VPC by hand, so what stops the rest is the gateway's data path, not
the routes. A rule added while connected lets its pings through within 5 s, and taking the
user out of the group cuts it off within 5 s, without a reconnect. `sslvpn policy check`
answers every case as the client observed it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.interop.conftest import VPC_HOST, Topology, build_topology, sslvpn
from tests.interop.test_openvpn_client import CONNECTED, OpenVpnClient
from tests.netns import file_contains, wait_until

pytestmark = pytest.mark.interop

OTHER_HOST = "10.10.0.11"  # a second address on the VPC host's link: another VPC host
LISTENER = """
import socket, sys, threading
def serve(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(16)
    while True:
        s.accept()[0].close()
for port in (5432, 22):
    threading.Thread(target=serve, args=(port,), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""
CONNECT = "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 2)"
LIVE_CHANGE = 5.0  # seconds a change may take to reach a connected client


@pytest.fixture(params=[1, 2], ids=["serve", "serve-workers-2"])
def topology(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Topology]:
    """One gateway process, or `serve --workers 2` (each worker polls the policy itself)."""
    with build_topology(tmp_path, prefix="pacc", serve_args=("--workers", str(request.param)),
                        start_timeout=60) as topo:
        log = topo.gateway_log
        if not wait_until(lambda: log.read_text().count("listening on tcp") >= request.param,
                          60):
            pytest.fail("the workers did not start:\n" + log.read_text())
        link = next(line.split()[1] for line in topo.vpc_ns.run("ip", "-o", "-4", "addr")
                    .splitlines() if f" {VPC_HOST}/" in line)
        topo.vpc_ns.run("ip", "addr", "add", f"{OTHER_HOST}/24", "dev", link)
        topo.vpc_ns.spawn([sys.executable, "-c", LISTENER], log=tmp_path / "listener.log")
        if not wait_until(file_contains(tmp_path / "listener.log", "ready"), 10):
            pytest.fail("the VPC listeners did not start")
        yield topo


def _report(what: str) -> None:
    sys.stderr.write(f"[interop] {what}\n")


def reaches(topo: Topology, destination: str) -> bool:
    """What the real client observes: a TCP connection (HOST:PORT) or a ping (HOST)."""
    host, _, port = destination.partition(":")
    if port:
        return topo.client_ns.ok(sys.executable, "-c", CONNECT, host, port, timeout=10)
    return topo.client_ns.ok("ping", "-c", "1", "-W", "1", host, timeout=10)


def check(topo: Topology, destination: str) -> bool:
    """What `sslvpn policy check ann DESTINATION` answers (its output is reported)."""
    output = sslvpn(topo.data_dir, "policy", "check", "ann", destination).output
    _report(f"$ sslvpn policy check ann {destination}\n{output.rstrip()}")
    return output.startswith("allow:")


def agree(topo: Topology, expected: dict[str, bool]) -> None:
    for destination, allowed in expected.items():
        assert reaches(topo, destination) is allowed, destination
        assert check(topo, destination) is allowed, destination


def within(seconds: float, condition: dict[str, bool], topo: Topology) -> float:
    """Seconds from now until a round of probes starts that observes ``condition``: each
    probe's first packet leaves at its start, so the change was in force by then."""
    start = time.monotonic()
    while time.monotonic() - start <= seconds:
        probed = time.monotonic()
        if all(reaches(topo, d) is a for d, a in condition.items()):
            return probed - start
        time.sleep(0.1)
    pytest.fail(f"not {condition} within {seconds} s")


def test_group_rules_reach_the_real_client_live(topology: Topology,
                                                request: pytest.FixtureRequest) -> None:
    topo = topology
    workers = request.node.callspec.params["topology"]
    data = topo.data_dir
    topo.issue("ann", "laptop")
    sslvpn(data, "group", "add", "db")
    sslvpn(data, "user", "groups", "ann", "--add", "db")
    sslvpn(data, "rule", "add", "--group", "db", "--to", f"{VPC_HOST}/32", "--proto", "tcp",
           "--port", "5432")
    sslvpn(data, "policy", "default", "nothing")
    # the gateway admits with the policy it last read (polled every 2 s, by every worker)
    assert wait_until(lambda: topo.gateway_log.read_text().count(
        "access policy revision 4") == workers, 10)
    client = OpenVpnClient(topo, topo.profile("ann", "laptop", "udp"))
    try:
        client.wait_for(CONNECTED)
        routes = topo.client_ns.run("ip", "-4", "route")
        assert f"{VPC_HOST} via" in routes and "10.10.0.0/24" not in routes, routes
        tun = routes.split(f"{VPC_HOST} via ")[1].split(" dev ")[1].split()[0]
        topo.client_ns.run("ip", "route", "add", "10.10.0.0/24", "dev", tun)  # by hand
        agree(topo, {f"{VPC_HOST}:5432": True, f"{VPC_HOST}:22": False,
                     f"{OTHER_HOST}:5432": False, VPC_HOST: False, OTHER_HOST: False})

        sslvpn(data, "rule", "add", "--group", "db", "--to", f"{VPC_HOST}/32", "--proto", "icmp")
        took = within(LIVE_CHANGE, {VPC_HOST: True}, topo)
        _report(f"ping allowed {took:.1f} s after rule add, no reconnect")
        agree(topo, {VPC_HOST: True, OTHER_HOST: False, f"{VPC_HOST}:5432": True})

        sslvpn(data, "user", "groups", "ann", "--remove", "db")
        took = within(LIVE_CHANGE, {f"{VPC_HOST}:5432": False, VPC_HOST: False}, topo)
        _report(f"cut off {took:.1f} s after leaving the group, no reconnect")
        agree(topo, {f"{VPC_HOST}:5432": False, VPC_HOST: False})
        assert client.text().count(CONNECTED) == 1  # never reconnected
        hits = sslvpn(data, "rule", "list").output
        assert "default (no rule matches): nothing" in hits
    finally:
        client.stop()
