"""The two-node fleet topology for interop tests: clients, two `serve --node` hosts, a VPC.

    sslvpn client i 198.18.0.(10+i) --+                 +-- 10.10.0.2  node a (serve --node a)
                                       +- "internet" ---+-- 198.18.0.1 node a   tun 10.8.0.0/26
                                       |   (a bridge)   +-- 198.18.0.2 node b   tun 10.8.0.64/26
                                       |                +-- 10.10.0.3  node b
    VPC 10.10.0.10 (a bridge)  routes 10.8.0.0/26 via 10.10.0.2 and 10.8.0.64/26 via 10.10.0.3

Both nodes share one PostgreSQL database (a private cluster reached through its unix socket,
which works from every namespace) and a copy of the same ``pki/`` folder, each in its own
data folder (its own control socket). Each serves its portal over HTTPS on its internet
address, port 8443. Every client gets its own namespace (each openvpn client installs the
VPC route). A node can be SIGKILLed and started again, or vanish from the internet (every
packet on its link dropped) while its process runs on; everything is removed on exit.
Tests pass their own namespace ``prefix`` so parallel modules never collide.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Engine
from sqlmodel import col, select

from sslvpn.cli import main
from sslvpn.config import DataPaths
from sslvpn.store import db
from sslvpn.store.models import VpnSessionRecord
from tests.interop.conftest import SSLVPN, VPC_HOST
from tests.netns import Namespace, NetnsLab, file_contains, wait_until
from tests.pgcluster import PostgresCluster

PORT = 1194
PORTAL_PORT = 8443
VPC_NETWORK = "10.10.0.0/24"
CONNECTED = "Initialization Sequence Completed"
NODES = {  # name -> (internet address, VPC-side address, sub-pool)
    "a": ("198.18.0.1", "10.10.0.2", "10.8.0.0/26"),
    "b": ("198.18.0.2", "10.10.0.3", "10.8.0.64/26"),
}
VANISH = """table inet vanish {{
  chain in {{ type filter hook input priority -300; iifname "{link}" drop; }}
  chain out {{ type filter hook output priority -300; oifname "{link}" drop; }}
}}
"""
INTERNET_HOST = "198.18.0.254"  # the internet segment's own address: portal tools run there
REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from ")


@dataclass
class FleetNode:
    """One gateway host: its namespace, data folder and (while running) `serve` process."""

    fleet: FleetLab
    name: str
    ns: Namespace
    public_address: str
    vpc_address: str
    pool: str
    data_dir: Path
    log: Path
    internet_link: str
    proc: subprocess.Popen[bytes] | None = None

    @property
    def portal_url(self) -> str:
        return f"https://{self.public_address}:{PORTAL_PORT}/"

    def start(self) -> None:
        """Start `serve --node` and wait (bounded) until it listens on TCP and its portal
        answers."""
        marks = ("listening on tcp", "portal: ")
        before = [self._log_text().count(mark) for mark in marks]
        self.proc = self.ns.spawn(
            [SSLVPN, "--data-dir", str(self.data_dir), "--database-url", self.fleet.database_url,
             "serve", "--node", self.name, "--listen", self.public_address, "--workers", "1",
             "--portal-listen", f"{self.public_address}:{PORTAL_PORT}"],
            log=self.log,
        )
        def started() -> bool:
            text = self._log_text()
            return all(text.count(mark) > seen for mark, seen in zip(marks, before, strict=True))

        if not wait_until(started, 30):
            pytest.fail(f"node {self.name} did not start:\n{self._log_text()[-3000:]}")

    def kill(self) -> float:
        """SIGKILL the node (no goodbye to anyone); returns the wall-clock time of the kill."""
        assert self.proc is not None
        killed_at = time.time()
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None
        return killed_at

    def vanish(self) -> float:
        """Drop every packet on the node's internet link, as a host that lost power or its
        network does (no RST, no ICMP: clients only see silence; the process runs on).
        Returns the wall-clock time of the cut; `reappear` undoes it."""
        self.ns.run("nft", "-f", "-", stdin=VANISH.format(link=self.internet_link))
        return time.time()

    def reappear(self) -> None:
        self.ns.run("nft", "delete", "table", "inet", "vanish")

    def _log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class FleetClient:
    """A real openvpn 2.6 client in its own namespace, and optionally a pinger to the VPC."""

    fleet: FleetLab
    ns: Namespace
    serial: str
    profile: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    ping_log: Path | None = None
    pinger: subprocess.Popen[bytes] | None = None

    def launch(self, log: Path) -> None:
        """(Re)start openvpn with the profile, logging to ``log``; any pinger stops."""
        self.stop()
        self.log, self.ping_log = log, None
        self.proc = self.ns.spawn(["openvpn", "--config", str(self.profile), "--disable-dco",
                                   "--verb", "3", "--log", str(log)])

    def stop(self) -> None:
        """Stop openvpn and the pinger (the namespace stays)."""
        for proc in (self.pinger, self.proc):
            if proc is not None:
                self.fleet.lab.stop(proc)
        self.proc = self.pinger = None

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_connected(self, timeout: float = 30) -> None:
        if not wait_until(file_contains(self.log, CONNECTED), timeout):
            pytest.fail(f"client {self.serial} did not connect:\n{self.text()[-3000:]}")

    def address(self) -> str | None:
        """The tunnel's IPv4 address in the client's namespace, if it has one now."""
        out = self.ns.run("ip", "-4", "-o", "addr", "show", "dev", "tun0", check=False)
        match = re.search(r" inet (\d+\.\d+\.\d+\.\d+)/", out)
        return match.group(1) if match else None

    def start_pinging(self) -> None:
        """``ping -i 0.2`` to the VPC host, each reply time-stamped (``-D``)."""
        self.ping_log = self.log.with_suffix(".ping")
        self.pinger = self.ns.spawn(["ping", "-D", "-i", "0.2", "-W", "1", VPC_HOST],
                                    log=self.ping_log)

    def replies(self) -> list[float]:
        """Wall-clock times of the ping replies so far."""
        if self.ping_log is None or not self.ping_log.exists():
            return []
        lines = self.ping_log.read_text(errors="replace").splitlines()
        return [float(m.group(1)) for m in map(REPLY.match, lines) if m]


@dataclass
class FleetLab:
    """The namespaces, the shared database, both nodes and the clients of one test module."""

    lab: NetnsLab
    work: Path
    database_url: str
    internet: Namespace
    vpc: Namespace
    internet_bridge: str
    nodes: dict[str, FleetNode] = field(default_factory=dict)
    clients: list[FleetClient] = field(default_factory=list)

    @property
    def data_dir(self) -> Path:
        """The data folder the CLI verbs use (node a's; both share the database)."""
        return self.nodes["a"].data_dir

    def cli(self, *args: str, stdin: str | None = None, check: bool = True) -> Result:
        """An `sslvpn` verb in-process against the fleet's database."""
        result = CliRunner().invoke(
            main, ["--data-dir", str(self.data_dir), "--database-url", self.database_url, *args],
            input=stdin,
        )
        if check and result.exit_code != 0:
            raise AssertionError(f"sslvpn {' '.join(args)} failed: {result.output}")
        return result

    def engine(self) -> Engine:
        """A store engine on the shared database (dispose it when done)."""
        return db.open_engine(self.database_url)

    def issue(self, user: str, device: str) -> str:
        """A certificate for user/device (the user is created on first use); its serial."""
        if user not in self.cli("user", "list").output:
            self.cli("user", "add", user)
        return self.cli("cert", "issue", user, "--device", device).output.split()[1]

    def profile(self, user: str, device: str) -> Path:
        """The ``.ovpn`` `sslvpn profile` makes (every node's remotes)."""
        path = self.work / f"{user}-{device}.ovpn"
        self.cli("profile", user, "--device", device, "-o", str(path))
        return path

    def start_client(self, user: str, device: str) -> FleetClient:
        """Issue a certificate, make its profile and start openvpn in a new namespace."""
        index = len(self.clients)
        serial = self.issue(user, device)
        profile = self.profile(user, device)
        ns = self.lab.namespace(f"c{index}")
        self.lab.attach(ns, f"198.18.0.{10 + index}/24", self.internet, self.internet_bridge)
        log = self.work / f"client-{index}-{device}.log"
        client = FleetClient(self, ns, serial, profile, log)
        client.launch(log)
        self.clients.append(client)
        return client

    def ca_file(self) -> str:
        return str(DataPaths(self.data_dir).ca_cert)


def open_sessions(fleet: FleetLab) -> list[VpnSessionRecord]:
    """The sessions the shared store shows open now."""
    engine = fleet.engine()
    try:
        with db.session(engine, write=False) as s:
            query = select(VpnSessionRecord).where(col(VpnSessionRecord.disconnected_at).is_(None))
            return list(s.exec(query).all())
    finally:
        engine.dispose()


class AddressWatch:
    """Reads the open sessions from the store every 0.2 s; remembers any address that two
    open sessions held at once."""

    def __init__(self, fleet: FleetLab) -> None:
        self.fleet = fleet
        self.doubled: list[tuple[str, int]] = []
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            counts = Counter(r.vpn_address for r in open_sessions(self.fleet))
            self.doubled += [(a, n) for a, n in counts.items() if n > 1]
            self.samples += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def _require(binary: str) -> None:
    if shutil.which(binary) is None:
        pytest.fail(f"{binary} is not installed (run scripts/install-test-deps)")


@contextlib.contextmanager
def build_fleet(work: Path, postgres: PostgresCluster, *, prefix: str) -> Iterator[FleetLab]:
    """The namespaces, a fleet of nodes a and b made with the CLI on ``postgres``, both
    nodes running; removed (processes, namespaces) however the block ends."""
    for binary in ("openvpn", "ip", "ping", "nft"):
        _require(binary)
    lab = NetnsLab(prefix)
    try:
        internet, vpc = lab.namespace("inet"), lab.namespace("vpc")
        internet_bridge, vpc_bridge = lab.bridge(internet), lab.bridge(vpc)
        internet.run("ip", "addr", "add", f"{INTERNET_HOST}/24", "dev", internet_bridge)
        vpc.run("ip", "addr", "add", f"{VPC_HOST}/24", "dev", vpc_bridge)
        fleet = FleetLab(lab, work, postgres.socket_url, internet, vpc, internet_bridge)
        for name, (public, vpc_side, pool) in NODES.items():
            ns = lab.namespace(f"n{name}")
            link = lab.attach(ns, f"{public}/24", internet, internet_bridge)
            lab.attach(ns, f"{vpc_side}/24", vpc, vpc_bridge)
            vpc.run("ip", "route", "add", pool, "via", vpc_side)
            fleet.nodes[name] = FleetNode(fleet, name, ns, public, vpc_side, pool,
                                          work / f"node-{name}", work / f"node-{name}.log", link)
        fleet.cli("init", "--public-address", NODES["a"][0], "--port", str(PORT),
                  "--proto", "both", "--vpc", VPC_NETWORK)
        for name, (public, vpc_side, pool) in NODES.items():
            fleet.cli("node", "add", name, "--public-address", public, "--pool", pool,
                      "--vpc-address", vpc_side)
        shutil.copytree(DataPaths(fleet.data_dir).pki_dir,
                        DataPaths(fleet.nodes["b"].data_dir).pki_dir)
        fleet.nodes["b"].data_dir.chmod(0o700)
        for node in fleet.nodes.values():
            node.start()
        yield fleet
    finally:
        lab.close()


def portal(fleet: FleetLab, node: str, *args: str, stdin: str = "") -> str:
    """Run tests/interop/portal_client.py in a client-side namespace against a node's portal."""
    client_tool = str(Path(__file__).with_name("portal_client.py"))
    return fleet.internet.run(sys.executable, client_tool, fleet.nodes[node].portal_url,
                              fleet.ca_file(), *args, stdin=stdin, timeout=60)
