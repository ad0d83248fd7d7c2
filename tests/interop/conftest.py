"""The OpenVPN interop topology: client ns <-> "internet" <-> gateway ns <-> VPC ns.

    sv-cli 198.18.0.2 ---- 198.18.0.1 sv-gw 10.10.0.1 ---- 10.10.0.10 sv-vpc
                                     (serve,   10.20.0.1 ---- 10.20.0.10 sv-out
                                      tun 10.8.0.1/24)

The VPC is 10.10.0.0/24; sv-out stands for "anything else the gateway can reach" and must
stay unreachable through the tunnel. sv-cl2 (198.19.0.2, routed to 198.18.0.1 through the
gateway) hosts a second client at the same time. One gateway (``sslvpn serve`` from a data
folder made with the real CLI) serves the whole module; each test starts its own client.
Everything is removed in finalizers, even when a test fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from sslvpn.cli import main
from sslvpn.config import DataPaths
from sslvpn.runtime.control_server import ControlClient
from sslvpn.store import db, queries
from tests.netns import Namespace, NetnsLab, file_contains, wait_until
from tests.pgcluster import PostgresCluster, postgres_cluster

SSLVPN = str(Path(sys.executable).with_name("sslvpn"))
STREAM_TOOL = str(Path(__file__).with_name("stream_tool.py"))
GATEWAY_OUTER = "198.18.0.1"
VPC_HOST = "10.10.0.10"
OUTSIDE_HOST = "10.20.0.10"
STREAM_PORT = 5001
PORT = 1194


def sslvpn(data_dir: Path, *args: str, check: bool = True) -> Result:
    """Run an `sslvpn` CLI verb in-process (click's runner) against the test's data folder.

    The running gateway writes to the same SQLite file; the CLI's write sessions take the
    store's writer lock and wait for the gateway's, so one run is enough.
    """
    result = CliRunner().invoke(main, ["--data-dir", str(data_dir), *args])
    if check and result.exit_code != 0:
        raise AssertionError(f"sslvpn {' '.join(args)} failed: {result.output}")
    return result


@dataclass
class Topology:
    lab: NetnsLab
    client_ns: Namespace
    gateway_ns: Namespace
    vpc_ns: Namespace
    outside_ns: Namespace
    second_client_ns: Namespace
    data_dir: Path
    work: Path
    gateway_log: Path
    gateway: subprocess.Popen[bytes] | None = None
    issued: dict[str, str] = field(default_factory=dict)  # "user/device" -> serial

    def issue(self, user: str, device: str) -> str:
        """A certificate for user/device (the user is created on first use)."""
        if user not in sslvpn(self.data_dir, "user", "list").output:
            sslvpn(self.data_dir, "user", "add", user)
        out = sslvpn(self.data_dir, "cert", "issue", user, "--device", device).output
        serial = out.split()[1]
        self.issued[f"{user}/{device}"] = serial
        return serial

    @property
    def control(self) -> ControlClient:
        """The running gateway's control socket (a unix socket works across namespaces)."""
        return ControlClient(DataPaths(self.data_dir).control_socket)

    def profile(self, user: str, device: str, proto: str) -> Path:
        path = self.work / f"{user}-{device}-{proto}.ovpn"
        sslvpn(self.data_dir, "profile", user, "--device", device, "--proto", proto,
               "-o", str(path))
        return path


def _require(binary: str) -> None:
    if shutil.which(binary) is None:
        pytest.fail(f"{binary} is not installed (run scripts/install-test-deps)")


@contextlib.contextmanager
def build_topology(work: Path, *, snat: bool = False, prefix: str = "sv",
                   serve_args: Sequence[str] = (), start_timeout: float = 20,
                   serve_env: Mapping[str, str] | None = None) -> Iterator[Topology]:
    """The namespaces, a data folder made by the CLI, a running gateway and a stream sink.

    With ``snat`` the VPC host gets no route back to the client pool: only the gateway's
    masquerade can make replies come back. ``prefix`` names the namespaces (one per test
    module owner); ``serve_args`` are added to the `sslvpn serve` command line;
    ``start_timeout`` bounds the wait for it to listen; ``serve_env`` is added to its
    environment.
    """
    for binary in ("openvpn", "ip", "ping", "nft"):
        _require(binary)
    lab = NetnsLab(prefix)
    try:
        cli, gw, vpc, out, cl2 = (lab.namespace(r) for r in ("cli", "gw", "vpc", "out", "cl2"))
        lab.link(cli, "198.18.0.2/24", gw, f"{GATEWAY_OUTER}/24")
        lab.link(cl2, "198.19.0.2/24", gw, "198.19.0.1/24")  # a second client's internet
        cl2.run("ip", "route", "add", f"{GATEWAY_OUTER}/32", "via", "198.19.0.1")
        lab.link(gw, "10.10.0.1/24", vpc, f"{VPC_HOST}/24")
        lab.link(gw, "10.20.0.1/24", out, f"{OUTSIDE_HOST}/24")
        if not snat:
            vpc.run("ip", "route", "add", "10.8.0.0/24", "via", "10.10.0.1")
        out.run("ip", "route", "add", "10.8.0.0/24", "via", "10.20.0.1")
        data_dir = work / "data"
        sslvpn(data_dir, "init", "--public-address", GATEWAY_OUTER, "--port", str(PORT),
               "--proto", "both", "--vpc", "10.10.0.0/24")
        if snat:
            update_settings(data_dir, snat=True)
        topo = Topology(lab, cli, gw, vpc, out, cl2, data_dir, work, work / "gateway.log")
        # one gateway process unless the test asks for workers: these tests read one
        # process's log lines and pid and expect addresses from the start of the pool
        workers = () if "--workers" in serve_args else ("--workers", "1")
        topo.gateway = gw.spawn([SSLVPN, "--data-dir", str(data_dir), "serve",
                                 "--listen", GATEWAY_OUTER, *workers, *serve_args],
                                log=topo.gateway_log,
                                env={**os.environ, **serve_env} if serve_env else None)
        if not wait_until(file_contains(topo.gateway_log, "listening on tcp"), start_timeout):
            pytest.fail("gateway did not start:\n" + topo.gateway_log.read_text())
        vpc.spawn([sys.executable, STREAM_TOOL, "serve", VPC_HOST, str(STREAM_PORT)],
                  log=work / "stream.log")
        if not wait_until(file_contains(work / "stream.log", "ready"), 10):
            pytest.fail("stream server did not start")
        yield topo
    finally:
        lab.close()


def add_waiting_tunnel(data_dir: Path, psk: str) -> None:
    """IPsec tunnel t1 from the gateway's outer address to a customer gateway at the client's
    address (198.18.0.2), waiting for the peer to start it, with one policy."""
    sslvpn(data_dir, "ipsec", "gateway", "add", "vgw", "--public-address", GATEWAY_OUTER)
    sslvpn(data_dir, "ipsec", "customer-gateway", "add", "dc1", "--address", "198.18.0.2")
    subprocess.run([SSLVPN, "--data-dir", str(data_dir), "ipsec", "tunnel", "add", "t1",
                    "--gateway", "vgw", "--customer-gateway", "dc1", "--psk-stdin", "--wait"],
                   input=psk + "\n", text=True, check=True, capture_output=True, timeout=60)
    sslvpn(data_dir, "ipsec", "policy", "add", "t1", "--local", "10.10.0.0/24",
           "--peer", "10.30.0.0/24")


def update_settings(data_dir: Path, **values: object) -> None:
    """Change stored gateway settings the way the portal's settings page would."""
    engine = db.open_engine(f"sqlite:///{data_dir / 'sslvpn.db'}")
    try:
        with db.session(engine, write=True) as s:
            settings = queries.get_settings(s)
            for name, value in values.items():
                setattr(settings, name, value)
            queries.save_settings(s, settings=settings)
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresCluster]:
    """A private PostgreSQL cluster per module, for tests that stop, freeze or share it
    between namespaces (its unix socket reaches it from any of them)."""
    with postgres_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    with build_topology(tmp_path_factory.mktemp("ovpn-interop")) as topo:
        yield topo
