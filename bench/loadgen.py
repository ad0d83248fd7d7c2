"""Load generator: many OpenVPN clients from our own sans-I/O client core, no TUN each.

Run inside the client namespace as ``python -m bench.loadgen``. Each simulated client has
its own certificate and UDP socket and a ``ClientSession``; one epoll loop per process moves
datagrams and fires timers, so clients finish full handshakes and then send keepalives like
idle real clients. ``--processes P`` splits the clients over P processes (shares), each
holding up to its open-file limit of sockets and using a core of its own; this process only
tells them each stage's target, times the stage from their reports and adds up their CPU
time (``loadgen_cpu_s``; the server's whole process tree: ``server_cpu_s``, so the share of
the cores each side took is plain). Clients start in waves of ``--wave``, spread round-robin
over the ``--sources`` addresses (as real users come from many addresses: one address would
measure the server's per-source budget of clients not yet authenticated); after each stage
(a number of established sessions) the loop keeps the sessions alive for ``--hold`` seconds,
reads the server's resident memory from /proc (the pid namespace is shared) and prints one
JSON line.

Accounting: every session is counted once, as established (it came up; ``lost`` if it
closed later) or failed (closed before coming up); one told to come back later
(``AUTH_FAILED,TEMP[backoff N]``) starts again after N seconds, as a real client does, and
is counted in ``retried``. Lost datagrams are retransmitted by
the core, so late sessions are normal under a burst: a stage's ``rate`` is the sessions
that came up during the stage (not the hold) over the time to the last of them, and
``t50_s``/``t90_s``/``t100_s`` say when that share of the stage's new clients was up.
``server_rcvbuf_errors`` is the server namespace's UDP ``RcvbufErrors`` during the stage
(/proc/<pid>/net/snmp), ``send_errors`` the datagrams our own full socket buffers lost.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import json
import math
import os
import re
import resource
import select
import selectors
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from bench.measure import process_tree
from sslvpn.openvpn.client import ClientConfig, ClientSession
from sslvpn.openvpn.constants import HAND_WINDOW
from sslvpn.openvpn.events import SessionClosed, SessionEstablished
from sslvpn.openvpn.static_key import parse_static_key
from sslvpn.openvpn.tls import TlsContext, TlsCredentials
from sslvpn.openvpn.tls_wrap import TlsCryptCodec

TEMP_BACKOFF = re.compile(r"AUTH_FAILED TEMP\[backoff (\d+)\]")

#: The key-exchange groups the simulated clients offer: those a stock OpenVPN 2.6 client on
#: OpenSSL 3.0 (Debian's, the bench's real clients) offers first, so ours and OpenVPN do the
#: handshake real clients make (our own core's default would offer X25519MLKEM768 first: a
#: larger handshake than the real clients', against ours only, since OpenVPN here cannot).
STOCK_CLIENT_GROUPS = "X25519:P-256"

#: A stage also ends when no session got established for this long: a whole hand-window and
#: a little more, so every client in flight when the last one came up has either come up or
#: failed by then. 20 s (past a client's 4th retransmission) ended the 50,000 stage on a
#: host loaded 10 times over after 200 of its 300 s, at 7,049 sessions with 1,000 handshakes
#: in flight, which the server went on accepting.
STALL_S = HAND_WINDOW + 5.0


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
        self.retried = 0  # told to come back later (AUTH_FAILED,TEMP): started again
        self.retry_at: dict[int, float] = {}  # client index: when it starts again
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
                elif (backoff := TEMP_BACKOFF.search(event.reason)) is not None:
                    self._retry(index, now + int(backoff.group(1)))
                    self.failures["retried: " + event.reason[:50]] += 1
                else:
                    self.failed += 1
                    self.failures[event.reason[:60]] += 1
        timer = session.get_timer()
        if timer is not None:
            heapq.heappush(self.timers, (timer, index))

    def _retry(self, index: int, due: float) -> None:
        """Start client ``index`` again at ``due``, as a real client told to come back later
        (AUTH_FAILED,TEMP with a backoff) does; it stays in flight meanwhile."""
        self.retried += 1
        self.retry_at[index] = due
        heapq.heappush(self.timers, (due, index))

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
            if self.retry_at.get(index) == due:
                del self.retry_at[index]
                self.sessions[index] = ClientSession(self.configs[index], now)
                self._pump(index, now)
                continue
            session = self.sessions[index]
            if session.get_timer() == due:
                session.handle_timer(now)
                self._pump(index, now)

    def run_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.step(end)


def load_configs(path: Path, ca_pem: bytes, tls_crypt_key: bytes,
                 share: tuple[int, int] = (0, 1)) -> list[ClientConfig]:
    """One ClientConfig per line of ``path`` (JSON: cert and key PEM), of lines ``index``,
    ``index + count`` ... for ``share`` (index, count)."""
    trust = (x509.load_pem_x509_certificate(ca_pem),)
    configs = []
    keys: dict[str, PrivateKeyTypes] = {}  # the bench's clients share one key: parsed once
    index, count = share
    for line in path.read_text().splitlines()[index::count]:
        item = json.loads(line)
        if item["key"] not in keys:
            keys[item["key"]] = load_pem_private_key(item["key"].encode(), None)
        credentials = TlsCredentials(
            certificate=x509.load_pem_x509_certificate(item["cert"].encode()),
            private_key=keys[item["key"]],  # type: ignore[arg-type]
            trust=trust,
        )
        configs.append(ClientConfig(tls=TlsContext(credentials, server=False,
                                                   groups=STOCK_CLIENT_GROUPS),
                                    codec=TlsCryptCodec(tls_crypt_key, server=False)))
    return configs


def share_of(target: int, index: int, count: int) -> int:
    """Share ``index``'s part of ``target`` sessions split over ``count`` processes."""
    return target // count + (1 if index < target % count else 0)


def share_sources(sources: tuple[str, ...], index: int, count: int) -> tuple[str, ...]:
    """The sources share ``index`` takes in turn, so that its k-th client binds the source of
    client ``index + k * count`` of one swarm: every source still gets its turn."""
    return tuple(sources[(index + k * count) % len(sources)] for k in range(len(sources)))


def run_share(args: argparse.Namespace) -> None:
    """One process of the generator: its share of the clients, driven by stage commands
    (``TARGET BEGAN`` on stdin, answered with one JSON line) and kept alive in between."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # one socket per client
    index, count = (int(part) for part in args.share.split("/"))
    host, port = args.server.rsplit(":", 1)
    configs = load_configs(args.credentials, args.ca.read_bytes(),
                           parse_static_key(args.tls_crypt.read_text()), (index, count))
    sources = tuple(args.sources.split(",")) if args.sources else ("",)
    swarm = Swarm((host, int(port)), configs, share_sources(sources, index, count))
    wave = max(1, share_of(args.wave, index, count))
    print("ready", flush=True)  # its TLS contexts are made: the stages may be timed
    while True:
        while not select.select([sys.stdin], [], [], 0)[0]:
            swarm.step(time.monotonic() + 0.05)
        command = sys.stdin.readline().split()
        if not command:
            return
        target, began = int(command[0]), float(command[1])
        print(json.dumps(reach(swarm, args, target, began, wave)), flush=True)


def reach(swarm: Swarm, args: argparse.Namespace, target: int, began: float,
          wave: int) -> dict[str, object]:
    """Bring the swarm up to ``target`` sessions (or the stage's time limit, or a stall)."""
    base, send_errors, retried = swarm.established, swarm.send_errors, swarm.retried
    deadline = began + args.stage_timeout
    while swarm.established + swarm.failed < target and time.monotonic() < deadline \
            and time.monotonic() - max(began, swarm.last_established) < STALL_S:
        if swarm.in_flight < wave and len(swarm.sessions) < target:
            swarm.start(min(wave - swarm.in_flight, target - len(swarm.sessions)))
        swarm.step(deadline)
    return {"established": swarm.established, "failed": swarm.failed, "lost": swarm.lost,
            "retried": swarm.retried - retried,
            "up_after": [round(t - began, 4) for t in swarm.up_times[base:]],
            "send_errors": swarm.send_errors - send_errors,
            **swarm.waiting(time.monotonic()), "failures": swarm.failures}


def combine(reports: list[dict[str, Any]], target: int, clients: int) -> dict[str, object]:
    """One stage line from the shares' reports (``clients``: the stage's new clients)."""
    up_after = sorted(t for report in reports for t in report["up_after"])
    failures: Counter[str] = Counter()
    for report in reports:
        failures.update(report["failures"])
    timers = sorted(r["in_flight_next_timer_s"] for r in reports
                    if r["in_flight_next_timer_s"] is not None)
    established, lost = (sum(r[key] for r in reports) for key in ("established", "lost"))
    return {
        "stage": target, "established": established, "live": established - lost,
        "failed": sum(r["failed"] for r in reports), "lost": lost,
        "retried": sum(r.get("retried", 0) for r in reports),
        "rate": len(up_after) / max(1e-6, up_after[-1]) if up_after else 0.0,
        **{f"t{round(share * 100)}_s": share_up_after(up_after, clients, share)
           for share in (0.5, 0.9, 1.0)},
        "send_errors": sum(r["send_errors"] for r in reports),
        "in_flight": sum(r["in_flight"] for r in reports),
        "in_flight_no_reset": sum(r["in_flight_no_reset"] for r in reports),
        "in_flight_next_timer_s": timers[len(timers) // 2] if timers else None,
        "failures": failures,
    }


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time of processes, seconds (/proc/<pid>/stat)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15
    return total / os.sysconf("SC_CLK_TCK")


def run(args: argparse.Namespace) -> None:
    """Start ``--processes`` shares, run the stages, print one JSON line per stage."""
    command = [sys.executable, "-m", "bench.loadgen", *sys.argv[1:]]
    shares = [subprocess.Popen([*command, "--share", f"{i}/{args.processes}"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
              for i in range(args.processes)]
    try:
        for share in shares:  # loading tens of thousands of credentials takes a while
            if share.stdout.readline().strip() != "ready":  # type: ignore[union-attr]
                raise RuntimeError(f"load generator share {share.pid} ended: {share.wait()}")
        rss, hwm = memory_kib(args.server_pid)
        print(json.dumps({"stage": 0, "established": 0, "live": 0, "failed": 0, "lost": 0,
                          "rate": 0.0, "rss_kib": rss, "hwm_kib": hwm, "failures": {}}),
              flush=True)
        previous = 0
        for target in (int(s) for s in args.stages.split(",")):
            print(json.dumps(run_stage(shares, args, target, previous)), flush=True)
            previous = target
    finally:
        for share in shares:
            with contextlib.suppress(OSError):
                share.stdin.close()  # type: ignore[union-attr]
        for share in shares:
            try:
                share.wait(30)
            except subprocess.TimeoutExpired:
                share.kill()
                share.wait()


def run_stage(shares: list[subprocess.Popen[str]], args: argparse.Namespace, target: int,
              previous: int) -> dict[str, object]:
    """Have every share reach its part of ``target``, hold, and describe the stage."""
    began = time.monotonic()
    drops_before = udp_rcvbuf_errors(args.server_pid)
    pids = [share.pid for share in shares]
    cpu_before = cpu_seconds(pids)
    server_cpu_before = cpu_seconds(process_tree(args.server_pid))
    for i, share in enumerate(shares):
        assert share.stdin is not None and share.stdout is not None  # noqa: S101 (piped)
        share.stdin.write(f"{share_of(target, i, len(shares))} {began}\n")
        share.stdin.flush()
    reports = []
    for share in shares:
        line = share.stdout.readline()  # type: ignore[union-attr]
        if not line:
            raise RuntimeError(f"load generator share {share.pid} ended: {share.wait()}")
        reports.append(json.loads(line))
    stage = combine(reports, target, target - previous)
    time.sleep(args.hold)  # the shares keep their sessions alive and sending keepalives
    rss, hwm = memory_kib(args.server_pid)
    drops_after = udp_rcvbuf_errors(args.server_pid)
    return {
        **stage,
        "server_rcvbuf_errors": None if drops_before is None or drops_after is None
        else drops_after - drops_before,
        "rss_kib": rss, "hwm_kib": hwm,
        "loadgen_processes": len(shares),
        "loadgen_cpu_s": round(cpu_seconds(pids) - cpu_before, 1),
        "server_cpu_s": round(cpu_seconds(process_tree(args.server_pid)) - server_cpu_before,
                              1),
        "loadgen_rss_kib": memory_kib(os.getpid())[0],
        "load_average": os.getloadavg(),
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
    parser.add_argument("--processes", type=int, default=1,
                        help="processes sharing the clients (each holds up to its open-file "
                             "limit of sockets and drives its part on its own core)")
    parser.add_argument("--share", default=None, help=argparse.SUPPRESS)  # INDEX/COUNT
    args = parser.parse_args()
    if args.share is not None:
        run_share(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
