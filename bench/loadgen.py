"""Load generator: many OpenVPN clients from our own sans-I/O client core, no TUN each.

Run inside the client namespace as ``python -m bench.loadgen``. Each simulated client has
its own certificate and UDP socket and a ``ClientSession``; one epoll loop moves datagrams
and fires timers, so clients finish full handshakes and then send keepalives like idle
real clients. Clients start in waves of ``--wave``, spread round-robin over the
``--sources`` addresses (as real users come from many addresses: one address would measure
the server's per-source budget of clients not yet authenticated); after each stage (a number of
established sessions) the loop keeps the sessions alive for ``--hold`` seconds, reads the
server's resident memory from /proc (the pid namespace is shared) and prints one JSON line.

Accounting: every session is counted once, as established (it came up; ``lost`` if it
closed later) or failed (closed before coming up). Lost datagrams are retransmitted by
the core, so late sessions are normal under a burst: a stage's ``rate`` is the sessions
that came up during the stage (not the hold) over the time to the last of them, and
``t50_s``/``t90_s``/``t100_s`` say when that share of the stage's new clients was up.
``server_rcvbuf_errors`` is the server namespace's UDP ``RcvbufErrors`` during the stage
(/proc/<pid>/net/snmp), ``send_errors`` the datagrams our own full socket buffers lost.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
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

#: A stage also ends when no session got established for this long: longer than the gap
#: between a client's 4th and 5th retransmission (16 s; tls-timeout 2 s, doubling, like 2.6),
#: so a stage does not end just before a wave of retransmissions that is due.
STALL_S = 20.0


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


def udp_rcvbuf_errors(pid: int) -> int | None:
    """UDP ``RcvbufErrors`` of the network namespace ``pid`` lives in (datagrams it lost)."""
    try:
        lines = [line.split() for line in Path(f"/proc/{pid}/net/snmp").read_text().splitlines()
                 if line.startswith("Udp:")]
        return int(dict(zip(lines[0], lines[1], strict=True))["RcvbufErrors"])
    except (OSError, IndexError, KeyError, ValueError):
        return None


def share_up_after(up_after: list[float], clients: int, share: float) -> float | None:
    """Seconds until ``share`` of ``clients`` were up (``up_after`` ascending), or None."""
    needed = max(1, math.ceil(share * clients))
    return round(up_after[needed - 1], 3) if len(up_after) >= needed else None


class Swarm:
    """The simulated clients, their sockets and one timer heap."""

    def __init__(self, server: tuple[str, int], configs: list[ClientConfig],
                 sources: tuple[str, ...] = ("",)) -> None:
        self.server = server
        self.sources = sources  # local addresses the clients bind, in turn ("": any)
        self.configs = configs
        self.sessions: list[ClientSession] = []
        self.sockets: list[socket.socket] = []
        self.selector = selectors.DefaultSelector()
        self.timers: list[tuple[float, int]] = []
        self.up: set[int] = set()  # indexes of sessions that came up
        self.up_times: list[float] = []  # when each came up, in order
        self.failed = 0  # closed before coming up
        self.lost = 0  # closed after coming up
        self.failures: Counter[str] = Counter()
        self.send_errors = 0

    @property
    def established(self) -> int:
        return len(self.up_times)

    @property
    def last_established(self) -> float:
        return self.up_times[-1] if self.up_times else 0.0

    @property
    def in_flight(self) -> int:
        """Sessions started that neither came up nor failed yet."""
        return len(self.sessions) - self.established - self.failed

    def waiting(self, now: float) -> dict[str, object]:
        """Where the sessions in flight stand: without the server's reset, next timer."""
        pending = [s for i, s in enumerate(self.sessions) if i not in self.up and not s.closed]
        timers = sorted(t - now for s in pending if (t := s.get_timer()) is not None)
        return {"in_flight": len(pending),
                "in_flight_no_reset": sum(1 for s in pending if s.identity.peer is None),
                "in_flight_next_timer_s": round(timers[len(timers) // 2], 1) if timers else None}

    def start(self, count: int) -> None:
        for _ in range(min(count, len(self.configs) - len(self.sessions))):
            index = len(self.sessions)
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.bind((self.sources[index % len(self.sources)], 0))
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
                self.send_errors += 1  # a full socket buffer is loss; the core retransmits
        for event in iter(session.next_event, None):
            if isinstance(event, SessionEstablished) and index not in self.up:
                self.up.add(index)
                self.up_times.append(time.monotonic())
            elif isinstance(event, SessionClosed):
                if index in self.up:
                    self.lost += 1
                    self.failures["after up: " + event.reason[:50]] += 1
                else:
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
    sources = tuple(args.sources.split(",")) if args.sources else ("",)
    swarm = Swarm((host, int(port)), configs, sources)
    rss, hwm = memory_kib(args.server_pid)
    print(json.dumps({"stage": 0, "established": 0, "live": 0, "failed": 0, "lost": 0,
                      "rate": 0.0, "rss_kib": rss, "hwm_kib": hwm, "failures": {}}), flush=True)
    for target in (int(s) for s in args.stages.split(",")):
        print(json.dumps(run_stage(swarm, args, target)), flush=True)


def run_stage(swarm: Swarm, args: argparse.Namespace, target: int) -> dict[str, object]:
    """Bring the swarm up to ``target`` sessions, hold them, and describe the stage."""
    began, base, clients = time.monotonic(), swarm.established, target - len(swarm.sessions)
    drops_before, send_errors = udp_rcvbuf_errors(args.server_pid), swarm.send_errors
    deadline = began + args.stage_timeout
    while swarm.established + swarm.failed < target and time.monotonic() < deadline \
            and time.monotonic() - max(began, swarm.last_established) < STALL_S:
        if swarm.in_flight < args.wave and len(swarm.sessions) < target:
            swarm.start(min(args.wave - swarm.in_flight, target - len(swarm.sessions)))
        swarm.step(deadline)
    up_after = [t - began for t in swarm.up_times[base:]]  # before the hold: the burst only
    waiting = swarm.waiting(time.monotonic())
    swarm.run_for(args.hold)
    rss, hwm = memory_kib(args.server_pid)
    drops_after = udp_rcvbuf_errors(args.server_pid)
    return {
        "stage": target, "established": swarm.established,
        "live": swarm.established - swarm.lost, "failed": swarm.failed, "lost": swarm.lost,
        "rate": len(up_after) / max(1e-6, up_after[-1]) if up_after else 0.0,
        **{f"t{round(share * 100)}_s": share_up_after(up_after, clients, share)
           for share in (0.5, 0.9, 1.0)},
        "send_errors": swarm.send_errors - send_errors,
        "server_rcvbuf_errors": None if drops_before is None or drops_after is None
        else drops_after - drops_before,
        **waiting, "rss_kib": rss, "hwm_kib": hwm, "failures": swarm.failures,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    parser.add_argument("--server", required=True, help="HOST:PORT (UDP)")
    parser.add_argument("--server-pid", type=int, required=True)
    parser.add_argument("--credentials", type=Path, required=True)
    parser.add_argument("--ca", type=Path, required=True)
    parser.add_argument("--tls-crypt", type=Path, required=True)
    parser.add_argument("--stages", required=True, help="e.g. 1000,10000")
    parser.add_argument("--wave", type=int, default=1000, help="handshakes in flight at most")
    parser.add_argument("--sources", default="",
                        help="A,B,...: local addresses the clients bind in turn (default: "
                             "the route's)")
    parser.add_argument("--hold", type=float, default=5.0)
    parser.add_argument("--stage-timeout", type=float, default=180.0,
                        help="seconds a stage may take before it reports what it reached")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
