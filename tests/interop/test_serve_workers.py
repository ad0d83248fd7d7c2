"""`sslvpn serve --workers 2` with real openvpn 2.6 clients, in network namespaces.

Both workers share the port (SO_REUSEPORT, the supervisor's steered UDP group) and each
serves its half of the pool through its own TUN. A UDP client whose source port changes six
times (a rebinding NAT) keeps its session: its data packets reach its worker by peer-id
lane whatever the new port. A client on each worker pings the VPC host
and moves 50 MB each way, hash-checked, over UDP and then over TCP; `sessions`, the
admin's portal and the metrics (served by the supervisor) see both, and the portal's kick
ends the one on the second worker. A SIGKILLed worker is started again by the supervisor and
its client reconnects, while the other worker's client loses no ping (the supervisor holds
every worker's socket, so the group never changes size or order: with sockets of the
workers' own, the second kill is the order that moved every flow of the survivor). Revoking
the certificate of a TCP client on the second worker ends its session within 5 s (by the
supervisor's sweep: the workers do not sweep), and a client that vanished and came back on
the other worker replaces its old session as within one process. SIGTERM to the supervisor
stops every worker cleanly (clients told, TUNs gone).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sslvpn.config import DataPaths
from tests.interop.conftest import (
    GATEWAY_OUTER,
    PORT,
    STREAM_PORT,
    STREAM_TOOL,
    VPC_HOST,
    Topology,
    build_topology,
    sslvpn,
)
from tests.interop.test_metrics import FETCH
from tests.netns import Namespace, file_contains, wait_until
from tests.runtime.test_metrics import promtool_check, samples, value

pytestmark = pytest.mark.interop

CONNECTED = "Initialization Sequence Completed"
SLICES = (ipaddress.IPv4Network("10.8.0.0/25"), ipaddress.IPv4Network("10.8.0.128/25"))
FIFTY_MB = 50 * 1024 * 1024
PORTAL_CLIENT = str(Path(__file__).with_name("portal_client.py"))
METRICS_PORT = 9541
REPLY = re.compile(r"^\[(\d+\.\d+)\] .*bytes from.* icmp_seq=(\d+)")


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    with build_topology(tmp_path_factory.mktemp("workers"), prefix="w15",
                        serve_args=("--workers", "2", "--metrics-listen", str(METRICS_PORT)),
                        start_timeout=60) as topo:
        log = topo.gateway_log
        if not wait_until(lambda: log.read_text().count("listening on tcp") >= 2, 60):
            pytest.fail("both workers did not start:\n" + log.read_text())
        yield topo


class Client:
    """One openvpn client and its pinger in a namespace."""

    def __init__(self, topo: Topology, ns: Namespace, profile: Path) -> None:
        self.topo, self.ns, self.profile = topo, ns, profile
        self.log = topo.work / f"{profile.stem}-{time.monotonic_ns()}.log"
        self.proc = ns.spawn(["openvpn", "--config", str(profile), "--disable-dco",
                              "--verb", "3", "--log", str(self.log)])
        self.ping_log = self.log.with_suffix(".ping")
        self.pinger: subprocess.Popen[bytes] | None = None

    def connected(self, timeout: float = 30) -> bool:
        return wait_until(file_contains(self.log, CONNECTED), timeout)

    def address(self) -> ipaddress.IPv4Address:
        out = self.ns.run("ip", "-4", "-o", "addr", "show", "dev", "tun0")
        match = re.search(r" inet (\d+\.\d+\.\d+\.\d+)/", out)
        assert match, out
        return ipaddress.IPv4Address(match.group(1))

    def start_pinging(self) -> None:
        self.pinger = self.ns.spawn(["ping", "-D", "-i", "0.2", "-W", "1", VPC_HOST],
                                    log=self.ping_log)

    def replies(self) -> list[float]:
        return [at for at, _ in self.answered()]

    def answered(self) -> list[tuple[float, int]]:
        """(time, icmp_seq) of each ping reply so far."""
        if not self.ping_log.exists():
            return []
        lines = self.ping_log.read_text(errors="replace").splitlines()
        return [(float(m.group(1)), int(m.group(2))) for m in map(REPLY.match, lines) if m]

    def stop(self) -> None:
        for proc in (self.pinger, self.proc):
            if proc is not None:
                self.topo.lab.stop(proc)


def _workers(topo: Topology) -> dict[int, int]:
    """Worker index -> pid, from the supervisor's children's command lines."""
    assert topo.gateway is not None
    found = {}
    children = Path(f"/proc/{topo.gateway.pid}/task/{topo.gateway.pid}/children")
    for pid in children.read_text().split():
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"--worker-slot" in argv:
            found[int(argv[argv.index(b"--worker-slot") + 1].split(b"/")[0])] = int(pid)
    return found


def _scrape(topo: Topology) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """One scrape of the supervisor's metrics from inside the gateway's namespace, checked
    by promtool."""
    status, _, text = topo.gateway_ns.run(
        sys.executable, "-c", FETCH, f"http://127.0.0.1:{METRICS_PORT}/metrics").partition("\n")
    assert status == "200", text
    promtool_check(text)
    return samples(text)


def _slice_of(address: ipaddress.IPv4Address) -> int:
    """The worker serving ``address`` (worker i hands out slice i)."""
    return next(i for i, s in enumerate(SLICES) if address in s)


def _connect_on(topo: Topology, ns: Namespace, user: str, worker: int | None,
                started: list[Client], proto: str = "udp") -> Client:
    """A pinging client on ``worker`` (None: any): the kernel hashes each client's source
    port, so reconnect until it lands there (one chance in two each time)."""
    for _ in range(12):
        client = Client(topo, ns, topo.profile(user, "laptop", proto))
        started.append(client)
        assert client.connected(), client.log.read_text()
        if worker is None or _slice_of(client.address()) == worker:
            assert client.ns.ok("ping", "-c", "2", "-i", "0.2", "-W", "2", VPC_HOST)
            client.start_pinging()
            assert wait_until(lambda c=client: len(c.replies()) >= 3, 10)  # type: ignore[misc]
            return client
        client.stop()
    pytest.fail(f"twelve connections of {user} all missed worker {worker}")


def _moves_fifty_mb(client: Client, label: str) -> None:
    """50 MB up and 50 MB down between ``client`` and the VPC host, each checked by SHA-256."""
    rates = []
    for mode in ("put", "get"):
        out = client.ns.run(sys.executable, STREAM_TOOL, mode, VPC_HOST, str(STREAM_PORT),
                            str(FIFTY_MB), timeout=180)
        result = json.loads(out)
        assert result["ok"] and result["bytes"] == FIFTY_MB, result
        rates.append(result["mbps"])
    sys.stderr.write(f"\n[interop] {label}: 50 MB up {rates[0]} Mbit/s, down {rates[1]} "
                     "Mbit/s, hash-checked\n")


def _portal(topo: Topology, *action: str) -> str:
    """The admin, logged in to the portal that the supervisor serves (loopback HTTP in the
    gateway's namespace), does one thing and prints the page."""
    printed = topo.gateway_log.read_text()
    url = re.search(r"^portal: (\S+)$", printed, re.MULTILINE)
    password = re.search(r"one-time password (\S+)$", printed, re.MULTILINE)
    assert url is not None and password is not None, printed
    ca = str(DataPaths(topo.data_dir).ca_cert)
    return topo.gateway_ns.run(sys.executable, PORTAL_CLIENT, url.group(1), ca, "admin",
                               *action, stdin=password.group(1) + "\n", timeout=60)


def _kill(topo: Topology, worker: int, victim: Client, survivor: Client) -> int:
    """SIGKILL ``worker``; once the supervisor restarted it and ``victim`` pings again,
    return how many of the survivor's pings went unanswered since the kill."""
    pid = _workers(topo)[worker]
    killed_at = time.time()
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: sorted(_workers(topo)) == [0, 1]
                      and pid not in _workers(topo).values(), 10)
    assert wait_until(lambda: any(t > killed_at + 1 for t in victim.replies()), 90), \
        victim.log.read_text()[-3000:]
    recovered = min(t for t in victim.replies() if t > killed_at + 1) - killed_at
    answered = survivor.answered()
    before = max(seq for at, seq in answered if at <= killed_at)
    since = {seq for at, seq in answered if at > killed_at}
    lost = sum(1 for seq in range(before + 1, max(since, default=before)) if seq not in since)
    times = [killed_at, *(at for at, _ in answered if at > killed_at)]
    gap = max(b - a for a, b in zip(times, times[1:], strict=False))
    sys.stderr.write(f"\n[interop] worker {worker} SIGKILLed: its client pings again "
                     f"{recovered:.1f} s later; the other worker's client lost {lost} of "
                     f"{len(since) + lost} pings (longest gap {gap:.2f} s)\n")
    return lost


def _move_source_port(ns: Namespace, port: int, to: int) -> None:
    """Make the client's datagrams to the gateway leave from port ``to`` instead of
    ``port`` (and the answers come back to ``port``), as a NAT rebinding does, by rewriting
    them before conntrack in the client's namespace; the client itself knows nothing."""
    ns.run("nft", "-f", "-", stdin=f"""
table ip w15float
delete table ip w15float
table ip w15float {{
  chain out {{
    type filter hook output priority raw;
    ip daddr {GATEWAY_OUTER} udp sport {port} udp dport {PORT} notrack udp sport set {to}
  }}
  chain back {{
    type filter hook prerouting priority raw;
    ip saddr {GATEWAY_OUTER} udp sport {PORT} udp dport {to} notrack udp dport set {port}
  }}
}}
""")


def test_a_client_whose_source_port_changes_keeps_its_session(topology: Topology) -> None:
    """Six new source ports: the group's hash would send about half of them to the worker
    that does not hold the session, but its data packets go by peer-id lane (the steering
    program) to the one that does, which floats the session and pins it at the new address;
    the client never reconnects and its pings go on."""
    topo = topology
    topo.issue("fay", "laptop")
    started: list[Client] = []
    try:
        fay = _connect_on(topo, topo.client_ns, "fay", None, started)
        listed = json.loads(sslvpn(topo.data_dir, "sessions", "--json").output)["sessions"]
        [address] = [row["real_address"] for row in listed if row["user"] == "fay"]
        port = int(address.rsplit(":", 1)[1])
        began = time.time()
        for to in range(41001, 41007):
            _move_source_port(topo.client_ns, port, to)
            moved_at = time.time()
            assert wait_until(file_contains(topo.gateway_log, f"to 198.18.0.2:{to}"), 10), \
                topo.gateway_log.read_text()[-3000:]
            assert wait_until(lambda t=moved_at: sum(  # type: ignore[misc]
                r > t for r in fay.replies()) >= 3, 10)
        answered = fay.answered()
        since = sorted(seq for at, seq in answered if at > began)
        lost = sum(1 for seq in range(since[0], since[-1]) if seq not in set(since))
        sys.stderr.write(f"\n[interop] a client floated over 6 source ports on 2 workers: "
                         f"{lost} of {len(since) + lost} pings lost, no reconnection\n")
        assert fay.log.read_text().count(CONNECTED) == 1, fay.log.read_text()[-3000:]
        fay.stop()  # its exit notice, from the last port, ends the session at once
        assert wait_until(lambda: "fay" not in sslvpn(topo.data_dir, "sessions").output, 10)
    finally:
        for client in started:
            client.stop()
        topo.client_ns.run("nft", "delete", "table", "ip", "w15float", check=False)


def _vanish(client: Client) -> None:
    """SIGKILL the client: no exit notice, its session stays until replaced or timed out."""
    for proc in (client.pinger, client.proc):
        if proc is not None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def test_a_device_reconnecting_on_the_other_worker_replaces_its_session(
    topology: Topology,
) -> None:
    """A client that vanished (no exit notice) and came back on the other worker: its old
    session there ends within a sweep round, as one process replaces it at once, not at its
    keepalive timeout."""
    topo = topology
    topo.issue("gus", "laptop")
    started: list[Client] = []

    def sessions() -> list[dict[str, str]]:
        listed = json.loads(sslvpn(topo.data_dir, "sessions", "--json").output)["sessions"]
        return [row for row in listed if row["user"] == "gus"]

    try:
        first = _connect_on(topo, topo.client_ns, "gus", None, started)
        old = _slice_of(first.address())
        _vanish(first)
        for _ in range(12):  # a landing on the old worker replaces in place: vanish, again
            again = Client(topo, topo.client_ns, topo.profile("gus", "laptop", "udp"))
            started.append(again)
            assert again.connected(), again.log.read_text()
            landed_at = time.monotonic()
            if _slice_of(again.address()) != old:
                break
            _vanish(again)
        else:
            pytest.fail("twelve connections of gus all landed on its old worker")
        assert wait_until(lambda: len(sessions()) == 1, 10), sessions()
        sys.stderr.write(f"\n[interop] a device back on the other worker: its old session "
                         f"ended {time.monotonic() - landed_at:.1f} s after it connected\n")
        [row] = sessions()
        assert _slice_of(ipaddress.IPv4Address(row["vpn_address"])) != old
        assert again.ns.ok("ping", "-c", "2", "-i", "0.2", "-W", "2", VPC_HOST)
    finally:
        for client in started:
            client.stop()


def test_workers_serve_slices_survive_kills_and_stop_cleanly(topology: Topology) -> None:
    topo = topology
    links = topo.gateway_ns.run("ip", "-4", "-o", "addr")
    assert "10.8.0.1/25" in links and "10.8.0.129/25" in links, links
    assert sorted(_workers(topo)) == [0, 1]
    topo.issue("ann", "laptop")
    topo.issue("bob", "laptop")
    started: list[Client] = []
    try:
        ann = _connect_on(topo, topo.client_ns, "ann", None, started)
        y = _slice_of(ann.address())
        x = 1 - y
        bob = _connect_on(topo, topo.second_client_ns, "bob", x, started)
        for client in (ann, bob):
            _moves_fifty_mb(client, f"UDP client on worker {_slice_of(client.address())}")
        # sessions, and the portal in the supervisor, see every worker (one control socket
        # each), and the portal's kick reaches the second worker
        listed = json.loads(sslvpn(topo.data_dir, "sessions", "--json").output)["sessions"]
        assert sorted(row["user"] for row in listed) == ["ann", "bob"]
        found = _scrape(topo)
        assert value(found, "sslvpn_sessions", node="default", proto="udp") == 2
        assert value(found, "sslvpn_handshakes_total", node="default", result="ok") >= 2
        assert value(found, "sslvpn_tunnel_bytes_total", node="default",
                     direction="in") >= 2 * FIFTY_MB
        on_second = ann if y == 1 else bob
        user = "ann" if on_second is ann else "bob"
        page = _portal(topo, "get", "/admin/sessions")
        assert "ann" in page and "bob" in page, page
        [kicked] = [row["session_id"] for row in listed if row["user"] == user]
        landed = _portal(topo, "kick", kicked)
        assert f"Session of {user} (laptop) ended." in landed, landed
        assert wait_until(file_contains(on_second.log, "SIGUSR1"), 10)
        on_second.stop()
        again = _connect_on(topo, on_second.ns, user, 1, started)
        ann, bob = (again, bob) if on_second is ann else (ann, again)
        # first kill: bob's worker; ann's stays, whichever worker's socket came first
        assert _kill(topo, x, bob, ann) == 0
        # had x's new process joined the reuseport group last with a socket of its own, y's
        # death now would move every flow of x to y's successor (measured: all of them)
        if _slice_of(bob.address()) != x:
            bob.stop()
            bob = _connect_on(topo, topo.second_client_ns, "bob", x, started)
        assert _kill(topo, y, ann, bob) == 0

        # TCP on each worker, and a revocation reaching the second through the store
        ann.stop()
        topo.issue("erin", "laptop")
        erin = _connect_on(topo, topo.client_ns, "erin", 0, started, proto="tcp")
        _moves_fifty_mb(erin, "TCP client on worker 0")
        erin.stop()
        serial = topo.issue("dave", "laptop")
        dave = _connect_on(topo, topo.client_ns, "dave", 1, started, proto="tcp")
        _moves_fifty_mb(dave, "TCP client on worker 1")
        sslvpn(topo.data_dir, "cert", "revoke", serial)
        revoked_at = time.monotonic()
        assert wait_until(lambda: "dave" not in sslvpn(topo.data_dir, "sessions").output, 5)
        sys.stderr.write(f"\n[interop] a TCP session on worker 1 ended "
                         f"{time.monotonic() - revoked_at:.1f} s after its revocation\n")
        assert wait_until(file_contains(dave.log, "AUTH_FAILED"), 30)

        assert topo.gateway is not None
        topo.gateway.send_signal(signal.SIGTERM)
        assert topo.gateway.wait(30) == 0
        assert topo.gateway_log.read_text().count("gateway stopped") >= 2
        assert "10.8.0" not in topo.gateway_ns.run("ip", "-4", "-o", "addr")
        assert wait_until(file_contains(bob.log, "SIGUSR1"), 10)
    finally:
        for client in started:
            client.stop()
