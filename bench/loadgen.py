"""Load generator: many OpenVPN clients from our own sans-I/O client core, no TUN each.

Run inside the client namespace as ``python -m bench.loadgen``. Each simulated client has
its own certificate and UDP socket and a ``ClientSession``; one epoll loop moves datagrams
and fires timers, so clients finish full handshakes and then send keepalives like idle
real clients. Clients start in waves of ``--wave``; after each stage (a number of
established sessions) the loop keeps the sessions alive for ``--hold`` seconds, reads the
server's resident memory from /proc (the pid namespace is shared) and prints one JSON line.
"""

from __future__ import annotations

import argparse
import heapq
import json
import resource
import selectors
import socket
import time
from collections import Counter
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from bench.measure import process_tree
from sslvpn.openvpn.client import ClientConfig, ClientSession
from sslvpn.openvpn.events import SessionClosed, SessionEstablished
from sslvpn.openvpn.static_key import parse_static_key
from sslvpn.openvpn.tls import TlsContext, TlsCredentials
from sslvpn.openvpn.tls_wrap import TlsCryptCodec

STALL_S = 15.0  # a stage also ends when no session got established for this long


def memory_kib(root: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) summed over a process tree, KiB."""
    rss = hwm = 0
    for pid in process_tree(root):
        try:
            lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            if line.startswith("VmRSS:"):
                rss += int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm += int(line.split()[1])
    return rss, hwm


class Swarm:
    """The simulated clients, their sockets and one timer heap."""

    def __init__(self, server: tuple[str, int], configs: list[ClientConfig]) -> None:
        self.server = server
        self.configs = configs
        self.sessions: list[ClientSession] = []
        self.sockets: list[socket.socket] = []
        self.selector = selectors.DefaultSelector()
        self.timers: list[tuple[float, int]] = []
        self.established = 0
        self.failed = 0
        self.failures: Counter[str] = Counter()
        self.last_established = 0.0

    def start(self, count: int) -> None:
        for _ in range(min(count, len(self.configs) - len(self.sessions))):
            index = len(self.sessions)
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.connect(self.server)
            self.selector.register(sock, selectors.EVENT_READ, index)
            self.sockets.append(sock)
            self.sessions.append(ClientSession(self.configs[index], time.monotonic()))
            self._pump(index, time.monotonic())

    def _pump(self, index: int, now: float) -> None:
        session, sock = self.sessions[index], self.sockets[index]
        for datagram in session.datagrams_to_send(now):
            try:
                sock.send(datagram)
            except OSError:
                break  # a full socket buffer is loss; the protocol retransmits
        for event in iter(session.next_event, None):
            if isinstance(event, SessionEstablished):
                self.established += 1
                self.last_established = time.monotonic()
            elif isinstance(event, SessionClosed):
                self.failed += 1
                self.failures[event.reason[:60]] += 1
        timer = session.get_timer()
        if timer is not None:
            heapq.heappush(self.timers, (timer, index))

    def step(self, until: float) -> None:
        """Move datagrams and fire timers for at most ``until - now`` seconds."""
        now = time.monotonic()
        wait = min(until, self.timers[0][0] if self.timers else until) - now
        for key, _ in self.selector.select(max(0.0, min(wait, 0.2))):
            index = key.data
            sock, session = self.sockets[index], self.sessions[index]
            now = time.monotonic()
            while True:
                try:
                    data = sock.recv(4096)
                except OSError:
                    break
                session.receive_datagram(data, now)
            self._pump(index, now)
        now = time.monotonic()
        while self.timers and self.timers[0][0] <= now:
            due, index = heapq.heappop(self.timers)
            session = self.sessions[index]
            if session.get_timer() == due:
                session.handle_timer(now)
                self._pump(index, now)

    def run_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.step(end)


def load_configs(path: Path, ca_pem: bytes, tls_crypt_key: bytes) -> list[ClientConfig]:
    """One ClientConfig per line of ``path`` (JSON: cert and key PEM)."""
    trust = (x509.load_pem_x509_certificate(ca_pem),)
    configs = []
    for line in path.read_text().splitlines():
        item = json.loads(line)
        credentials = TlsCredentials(
            certificate=x509.load_pem_x509_certificate(item["cert"].encode()),
            private_key=load_pem_private_key(item["key"].encode(), None),  # type: ignore[arg-type]
            trust=trust,
        )
        configs.append(ClientConfig(tls=TlsContext(credentials, server=False),
                                    codec=TlsCryptCodec(tls_crypt_key, server=False)))
    return configs


def run(args: argparse.Namespace) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # one socket per client
    host, port = args.server.rsplit(":", 1)
    configs = load_configs(args.credentials, args.ca.read_bytes(),
                           parse_static_key(args.tls_crypt.read_text()))
    swarm = Swarm((host, int(port)), configs)
    rss, hwm = memory_kib(args.server_pid)
    print(json.dumps({"stage": 0, "established": 0, "failed": 0, "rate": 0.0,
                      "rss_kib": rss, "hwm_kib": hwm, "failures": {}}), flush=True)
    for target in (int(s) for s in args.stages.split(",")):
        began, base = time.monotonic(), swarm.established
        deadline = began + args.stage_timeout
        while swarm.established + swarm.failed < target and time.monotonic() < deadline \
                and time.monotonic() - max(began, swarm.last_established) < STALL_S:
            in_flight = len(swarm.sessions) - swarm.established - swarm.failed
            if in_flight < args.wave and len(swarm.sessions) < target:
                swarm.start(min(args.wave - in_flight, target - len(swarm.sessions)))
            swarm.step(deadline)
        elapsed = max(1e-6, swarm.last_established - began)
        swarm.run_for(args.hold)
        rss, hwm = memory_kib(args.server_pid)
        print(json.dumps({"stage": target, "established": swarm.established,
                          "failed": swarm.failed, "rate": (swarm.established - base) / elapsed,
                          "rss_kib": rss, "hwm_kib": hwm, "failures": swarm.failures}),
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    parser.add_argument("--server", required=True, help="HOST:PORT (UDP)")
    parser.add_argument("--server-pid", type=int, required=True)
    parser.add_argument("--credentials", type=Path, required=True)
    parser.add_argument("--ca", type=Path, required=True)
    parser.add_argument("--tls-crypt", type=Path, required=True)
    parser.add_argument("--stages", required=True, help="e.g. 1000,10000")
    parser.add_argument("--wave", type=int, default=1000, help="handshakes in flight at most")
    parser.add_argument("--hold", type=float, default=5.0)
    parser.add_argument("--stage-timeout", type=float, default=180.0,
                        help="seconds a stage may take before it reports what it reached")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
