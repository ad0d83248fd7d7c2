"""The OpenVPN benchmark topology, the two servers under test and the real openvpn client.

    sb-cli 198.18.0.2 ==== 198.18.0.1 sb-gw 10.10.0.1 ==== 10.10.0.10 sb-vpc (iperf3 -s)
                                     (server under test, tun 10.8.0.1/24)

Both servers use ONE data folder made with the real CLI (``sslvpn init``, ``user add``,
``cert issue``, ``profile``): stock OpenVPN 2.6 loads its CA, server certificate, tls-crypt
key and CRL, and the same unmodified ``.ovpn`` profile drives the same ``openvpn`` client
against either server, with the data cipher pinned to AES-256-GCM. Only one server runs at a
time. Every route on the veth links carries ``congctl cubic`` so the outer TCP connection of
the TCP transport uses CUBIC (a namespace may not pick CUBIC as its default; a route may).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench.lab import Lab, Namespace, file_contains, wait_until
from bench.pki import make_pki, write_profile

SSLVPN = str(Path(sys.executable).with_name("sslvpn"))
ROOT = Path(__file__).resolve().parent.parent  # so `python -m bench.*` imports from any cwd
GATEWAY_OUTER, CLIENT_OUTER = "198.18.0.1", "198.18.0.2"
GATEWAY_VPC, VPC_HOST = "10.10.0.1", "10.10.0.10"
VPC_NET, OUTER_NET = "10.10.0.0/24", "198.18.0.0/24"
POOL, POOL_MASK = "10.8.0.0/16", "255.255.0.0"  # room for 50,000 scale sessions
PORT = 1194
CIPHER = "AES-256-GCM"
RESET_RATE = 1_000_000  # new-client replies per 10 s when the scale phase opens the limiter
CONNECTED = "Initialization Sequence Completed"
USER = "bench"
SERVER_START_TIMEOUT_S = 30
CLIENT_CONNECT_TIMEOUT_S = 20


class Unavailable(RuntimeError):
    """A server or client could not be brought up; its figures become n/a."""


class ServerDied(RuntimeError):
    """The server under test exited during a measurement (its log says why)."""


def sslvpn(data_dir: Path, *args: str, stdin: str | None = None) -> str:
    """Run the real `sslvpn` CLI against the bench data folder (secrets go on ``stdin``)."""
    result = subprocess.run([SSLVPN, "--data-dir", str(data_dir), *args], input=stdin,
                            capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        raise Unavailable(f"sslvpn {' '.join(args)}: {(result.stderr or result.stdout).strip()}")
    return result.stdout


@dataclass
class VpnTopology:
    """Three namespaces, the data folder and one profile per transport."""

    lab: Lab
    cli: Namespace
    gw: Namespace
    vpc: Namespace
    work: Path
    data_dir: Path
    profiles: dict[str, Path] = field(default_factory=dict)
    cli_error: str | None = None  # why the CLI could not make the data folder
    burst_credentials: list[tuple[str, str]] = field(default_factory=list)  # (cert, key) PEM
    cli_if: str = ""  # the client namespace's link to the gateway
    burst_sources: list[str] = field(default_factory=list)  # extra client addresses, made once

    def sources(self, count: int) -> list[str]:
        """``count`` more addresses of the client namespace on its link (for bursts: many
        users come from many addresses, and a server may limit each address)."""
        while len(self.burst_sources) < count:
            address = f"198.18.0.{10 + len(self.burst_sources)}"
            self.cli.run("ip", "addr", "add", f"{address}/24", "dev", self.cli_if)
            self.burst_sources.append(address)
        return self.burst_sources[:count]

    def raw_route(self, on: bool) -> None:
        """The routed path without a VPN (the ceiling); off before any client connects."""
        verb = "replace" if on else "del"
        self.cli.run("ip", "route", verb, VPC_NET, "via", GATEWAY_OUTER, "congctl", "cubic",
                     check=on)
        self.vpc.run("ip", "route", verb, f"{CLIENT_OUTER}/32", "via", GATEWAY_VPC,
                     "congctl", "cubic", check=on)


def build_topology(lab: Lab, work: Path) -> VpnTopology:
    """Namespaces, links, CUBIC-pinned routes, forwarding, data folder and profiles."""
    cli, gw, vpc = (lab.namespace(role) for role in ("cli", "gw", "vpc"))
    cli_if, gw_out = lab.link(cli, f"{CLIENT_OUTER}/24", gw, f"{GATEWAY_OUTER}/24")
    gw_in, vpc_if = lab.link(gw, f"{GATEWAY_VPC}/24", vpc, f"{VPC_HOST}/24")
    for ns, net, dev in ((cli, OUTER_NET, cli_if), (gw, OUTER_NET, gw_out),
                         (gw, VPC_NET, gw_in), (vpc, VPC_NET, vpc_if)):
        ns.run("ip", "route", "replace", net, "dev", dev, "congctl", "cubic")
    gw.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
    vpc.run("ip", "route", "replace", POOL, "via", GATEWAY_VPC, "congctl", "cubic")
    topo = VpnTopology(lab, cli, gw, vpc, work, work / "data", cli_if=cli_if)
    try:
        _cli_data_folder(topo)
    except Unavailable as exc:
        topo.cli_error = str(exc)
        _fallback_data_folder(topo)
    return topo


def _cli_data_folder(topo: VpnTopology) -> None:
    """The data folder and profiles through the real CLI, as an operator would make them."""
    data_dir = topo.data_dir
    sslvpn(data_dir, "init", "--public-address", GATEWAY_OUTER, "--port", str(PORT),
           "--proto", "both", "--vpc", VPC_NET, "--pool", POOL,
           "--keepalive", "10", "60")  # the same keepalive as the OpenVPN server's
    sslvpn(data_dir, "user", "add", USER)
    sslvpn(data_dir, "cert", "issue", USER, "--device", "d0")
    for proto in ("udp", "tcp"):
        path = topo.work / f"{USER}-{proto}.ovpn"
        sslvpn(data_dir, "profile", USER, "--device", "d0", "--proto", proto, "-o", str(path))
        topo.profiles[proto] = path


def _fallback_data_folder(topo: VpnTopology) -> None:
    """openssl-made PKI so the OpenVPN baseline still runs; ours is then n/a."""
    shutil.rmtree(topo.data_dir, ignore_errors=True)
    pki = make_pki(topo.data_dir)
    for proto in ("udp", "tcp"):
        path = topo.work / f"{USER}-{proto}.ovpn"
        write_profile(pki, path, remote=GATEWAY_OUTER, port=PORT, proto=proto)
        topo.profiles[proto] = path


def openvpn_server_lines(pki: Path, local: str, proto: str, network: str, mask: str,
                         keepalive: tuple[int, int]) -> list[str]:
    """A stock OpenVPN 2.6 server on one transport with the data folder's CA, server
    certificate, tls-crypt key and CRL, pushing the VPC route (the bench's baseline)."""
    crl = [f"crl-verify {pki / 'crl.pem'}"] if (pki / "crl.pem").exists() else []
    return [
        f"local {local}", f"port {PORT}", f"proto {'tcp-server' if proto == 'tcp' else 'udp'}",
        "dev tun", "topology subnet", f"server {network} {mask}",
        f'push "route {VPC_NET.split("/")[0]} 255.255.255.0"',
        f"ca {pki / 'ca.crt'}", f"cert {pki / 'server.crt'}", f"key {pki / 'server.key'}",
        "dh none", *crl, f"tls-crypt {pki / 'tls-crypt.key'}",
        f"data-ciphers {CIPHER}", f"keepalive {keepalive[0]} {keepalive[1]}", "persist-key",
        "persist-tun", "disable-dco", "verb 3",
    ]


class Server:
    """A VPN server process tree in the gateway namespace (one transport at a time)."""

    name = "server"

    def __init__(self, topo: VpnTopology) -> None:
        self.topo = topo
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.log = topo.work / f"{self.name}.log"

    @property
    def pid(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            raise ServerDied(f"{self.name} exited during the run, see {self.log}")
        return self.proc.pid

    def start(self, proto: str, *, unlimited_resets: bool = False) -> None:
        """Start on one transport; ``unlimited_resets`` opens the new-client rate limiter."""
        raise NotImplementedError

    def stop(self) -> None:
        if self.proc is not None:
            self.topo.lab.stop(self.proc)
            self.proc = None

    def _spawn(self, args: list[str], ready: str, env: dict[str, str] | None = None,
               ready_count: int = 1) -> None:
        """Start ``args``; up once ``ready`` was logged ``ready_count`` times (once per
        worker)."""
        self.stop()
        self.starts += 1
        self.log = self.topo.work / f"{self.name}-{self.starts}.log"  # one per start, kept
        self.proc = self.topo.gw.spawn(args, log=self.log, env=env)
        proc = self.proc
        log = self.log

        def ready_or_dead() -> bool:
            text = log.read_text(errors="replace") if log.exists() else ""
            return text.count(ready) >= ready_count or proc.poll() is not None

        up = wait_until(ready_or_dead, SERVER_START_TIMEOUT_S)
        if not up or proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-1500:]
            self.stop()
            raise Unavailable(f"{self.name} did not start: {tail.strip()[-600:]}")


class OpenVpnServer(Server):
    """Debian's stock openvpn 2.6 server with the data folder's PKI and tls-crypt key."""

    name = "openvpn"

    def config(self, proto: str) -> Path:
        path = self.topo.work / f"openvpn-server-{proto}.conf"
        path.write_text("\n".join([
            *openvpn_server_lines(self.topo.data_dir / "pki", GATEWAY_OUTER, proto,
                                  POOL.split("/")[0], POOL_MASK, (10, 60)),
            "max-clients 20000",
            # the fallback PKI has one client certificate, shared by every burst client
            *(["duplicate-cn"] if self.topo.cli_error is not None else []),
            *(["explicit-exit-notify 1"] if proto == "udp" else []), "",
        ]))
        return path

    def start(self, proto: str, *, unlimited_resets: bool = False) -> None:
        extra = ["--connect-freq-initial", str(RESET_RATE), "10"] if unlimited_resets else []
        self._spawn(["openvpn", "--config", str(self.config(proto)), *extra], CONNECTED)


class OurServer(Server):
    """`sslvpn serve --workers N` on the bench data folder, one transport (``env``: its
    environment)."""

    name = "ours"

    def __init__(self, topo: VpnTopology, env: dict[str, str] | None = None,
                 workers: int = 1) -> None:
        super().__init__(topo)
        self.env = env
        self.workers = workers

    def start(self, proto: str, *, unlimited_resets: bool = False) -> None:
        if self.topo.cli_error is not None:
            raise Unavailable(f"no data folder from the CLI: {self.topo.cli_error[-300:]}")
        limiter = ["--connect-freq-initial", str(RESET_RATE), "10"] if unlimited_resets else []
        self._spawn([SSLVPN, "--data-dir", str(self.topo.data_dir), "serve",
                     "--listen", GATEWAY_OUTER, "--proto", proto, *limiter,
                     "--workers", str(self.workers)],
                    f"listening on {proto}", env=self.env, ready_count=self.workers)


class Client:
    """One real openvpn client process, in the client namespace unless ``ns`` says another."""

    def __init__(self, topo: VpnTopology, profile: Path, label: str, *extra: str,
                 ns: Namespace | None = None) -> None:
        self.topo = topo
        self.log = topo.work / f"client-{label}-{time.monotonic_ns()}.log"
        self.started_at = time.time()
        self.proc = (ns or topo.cli).spawn(
            ["openvpn", "--config", str(profile), "--disable-dco", "--data-ciphers", CIPHER,
             "--verb", "3", "--log", str(self.log), *extra])

    def wait_connected(self, timeout: float = CLIENT_CONNECT_TIMEOUT_S) -> None:
        proc = self.proc
        if not wait_until(lambda: file_contains(self.log, CONNECTED)() or proc.poll() is not None,
                          timeout) or proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-600:] if self.log.exists() else ""
            self.stop()
            raise Unavailable(f"client did not connect: {tail.strip()}")

    def connected(self) -> bool:
        return file_contains(self.log, CONNECTED)()

    def stop(self) -> None:
        self.topo.lab.stop(self.proc)


@contextmanager
def tunnel(topo: VpnTopology, server: Server, proto: str) -> Iterator[Client]:
    """A running server and one connected client for the duration of the block."""
    server.start(proto)
    client = Client(topo, topo.profiles[proto], f"{server.name}-{proto}")
    try:
        client.wait_connected()
        yield client
    finally:
        client.stop()
        server.stop()
