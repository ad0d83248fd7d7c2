"""Throughput, CPU per Gbit, added latency, admission and connecting over a lossy link,
ours against stock OpenVPN 2.6.

Runs are interleaved (each repetition visits every server and transport in turn) so drift
on the shared machine hits both servers alike; figures are medians. A server that cannot be
brought up is skipped from then on and its figures stay n/a, with the reason in the notes.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bench import measure
from bench.credentials import issue_clients, profiles_for
from bench.lab import wait_until
from bench.report import Report
from bench.vpn import (
    CONNECTED,
    PORT,
    VPC_HOST,
    Client,
    OpenVpnServer,
    OurServer,
    Server,
    ServerDied,
    Unavailable,
    VpnTopology,
    tunnel,
)

PROTOS = ("udp", "tcp")
NULL_DEVICE = ("--dev", "null", "--route-noexec", "--ifconfig-noexec")
SIDE = {"ours": "ours", "openvpn": "baseline"}
# burst clients per source address: below ours' 16 not yet authenticated per address (as
# real users, a burst comes from many addresses; one address would measure that limit)
BURST_PER_SOURCE = 12
LOSS_PERCENTS = (0, 5, 10)  # of the UDP datagrams dropped each way on the client's link
LOSS_CONNECT_TIMEOUT_S = 60.0  # the client's hand-window: a handshake not done by then failed


@dataclass(frozen=True)
class TunnelSettings:
    reps: int
    seconds: float
    raw_seconds: float  # the ceiling: one run per mode
    pings: int
    handshakes: int
    burst: int
    loss_tries: int  # connects per server and loss rate


class TunnelBench:
    """Both servers in one topology, filling figures into the report."""

    def __init__(self, topo: VpnTopology, report: Report, settings: TunnelSettings,
                 workers: int = 1) -> None:
        self.topo = topo
        self.report = report
        self.settings = settings
        self.servers: dict[str, Server] = {"openvpn": OpenVpnServer(topo),
                                           "ours": OurServer(topo, workers=workers)}
        self.down: dict[tuple[str, str], str] = {}  # (server, proto) -> why it cannot start
        self.iperf_server: subprocess.Popen[bytes] | None = None
        self.raw_rtts: list[float] = []
        self.burst_profiles: dict[str, list[Path]] = {}
        self.runs: list[dict[str, object]] = report.meta.setdefault("runs", [])

    def _skip(self, name: str, proto: str, reason: str) -> None:
        if (name, proto) not in self.down:
            self.down[(name, proto)] = reason
            last = reason.strip().splitlines()[-1] if reason.strip() else "?"
            self.report.notes.append(f"{name} {proto}: n/a ({last[:300]})")

    # ----------------------------------------------------------------- throughput + latency
    def run_throughput(self) -> None:
        s = self.settings
        self._restart_iperf_server()
        self._raw()
        for rep in range(s.reps):
            order = list(self.servers) if rep % 2 == 0 else list(reversed(self.servers))
            for proto in PROTOS:
                for name in order:
                    if (name, proto) not in self.down:
                        self._tunnel_run(name, proto, rep)
        self._finish_throughput()

    def _restart_iperf_server(self) -> None:
        """A fresh iperf3 server: one left behind by a broken run stays "busy" for minutes."""
        if self.iperf_server is not None:
            self.topo.lab.stop(self.iperf_server)
        self.iperf_server = self.topo.vpc.spawn(["iperf3", "-s", "-B", VPC_HOST],
                                                log=self.topo.work / "iperf3.log")
        wait_until(lambda: f"{VPC_HOST}:5201" in self.topo.vpc.run("ss", "-tln", check=False), 5)

    def run_latency(self) -> None:
        """Only the added RTT (the latency rows of ``run_throughput``), a short stage."""
        self._raw(throughput=False)
        for proto in PROTOS:
            for name, server in self.servers.items():
                if (name, proto) in self.down:
                    continue
                try:
                    with tunnel(self.topo, server, proto):
                        self._latency(name, proto)
                except (ServerDied, Unavailable) as exc:
                    self._skip(name, proto, str(exc))

    def _raw(self, *, throughput: bool = True) -> None:
        """The routed veth path without a VPN: the ceiling, and the RTT to subtract."""
        self.topo.raw_route(True)
        try:
            wait_until(lambda: bool(measure.ping_rtts(self.topo.cli, VPC_HOST, 1, 0.2)), 10)
            self.raw_rtts = measure.ping_rtts(self.topo.cli, VPC_HOST, self.settings.pings)
            for mode in measure.IPERF_MODES if throughput else ():
                result = measure.iperf(self.topo.cli, VPC_HOST, mode, self.settings.raw_seconds,
                                       None)
                self.runs.append({"server": "raw", "mode": mode, "mbps": result.mbps})
                for proto in PROTOS:
                    fig = self.report.get("throughput", f"{proto} {mode}", "Mbit/s", "higher")
                    fig.samples.setdefault("raw", []).append(result.mbps)
        finally:
            self.topo.raw_route(False)

    def _tunnel_run(self, name: str, proto: str, rep: int) -> None:
        server = self.servers[name]
        try:
            with tunnel(self.topo, server, proto):
                if rep == 0:
                    self._latency(name, proto)
                for mode in measure.IPERF_MODES:
                    result = self._iperf(name, proto, mode, server)
                    if result is not None:
                        self._record(name, proto, mode, rep, result)
        except ServerDied as exc:
            self.report.notes.append(f"{name} {proto} rep {rep + 1}: {exc}")
        except Unavailable as exc:
            self._skip(name, proto, str(exc))

    def _iperf(self, name: str, proto: str, mode: str,
               server: Server) -> measure.IperfResult | None:
        """One run, retried once with a fresh iperf3 server: its control connection now and
        then fails to open, and a run broken by the tunnel leaves the server "busy"."""
        for attempt in (1, 2):
            try:
                return measure.iperf(self.topo.cli, VPC_HOST, mode, self.settings.seconds,
                                     server.pid)
            except (measure.IperfError, subprocess.TimeoutExpired) as exc:
                self._restart_iperf_server()
                if attempt == 2:
                    self.report.notes.append(f"{name} {proto} {mode}: a run failed twice ({exc})")
        return None

    def _record(self, name: str, proto: str, mode: str, rep: int,
                result: measure.IperfResult) -> None:
        side = SIDE[name]
        self.runs.append({"server": name, "proto": proto, "mode": mode, "rep": rep,
                          "mbps": result.mbps, "retransmits": result.retransmits,
                          "server_cpu_pct": result.server_cpu_pct,
                          "core_s_per_gbit": result.core_s_per_gbit})
        fig = self.report.get("throughput", f"{proto} {mode}", "Mbit/s", "higher")
        fig.samples.setdefault(side, []).append(result.mbps)
        if result.core_s_per_gbit is not None:
            cpu = self.report.get("cpu per Gbit", f"{proto} {mode}", "core-s/Gbit", "lower")
            cpu.samples.setdefault(side, []).append(result.core_s_per_gbit)

    def _latency(self, name: str, proto: str) -> None:
        rtts = measure.ping_rtts(self.topo.cli, VPC_HOST, self.settings.pings)
        if not rtts or not self.raw_rtts:
            raise Unavailable("no ping replies through the tunnel")
        side = SIDE[name]
        for stat, fn in (("median", measure.median), ("p99", _p99)):
            fig = self.report.get("latency", f"added RTT {stat} {proto}", "ms", "lower")
            tunnel_value, raw_value = fn(rtts), fn(self.raw_rtts)
            if tunnel_value is not None and raw_value is not None:
                setattr(fig, side, tunnel_value - raw_value)
                fig.raw = raw_value
        self.runs.append({"server": name, "proto": proto, "ping_ms": rtts})

    def _finish_throughput(self) -> None:
        for fig in self.report.figures:
            for side in ("ours", "baseline", "raw"):
                value = measure.median(fig.samples.get(side, []))
                if value is not None:
                    setattr(fig, side, value)

    # ----------------------------------------------------------------- admission
    def run_admission(self) -> None:
        for proto in PROTOS:
            for name, server in self.servers.items():
                if (name, proto) in self.down:
                    continue
                try:
                    server.start(proto)
                    self._handshakes(name, proto)
                    if proto == "udp":
                        self._burst(name, proto)
                except Unavailable as exc:
                    self._skip(name, proto, str(exc))
                finally:
                    server.stop()

    def _handshakes(self, name: str, proto: str) -> None:
        """Exec of the client to "Initialization Sequence Completed", one client at a time;
        also from the client's first packet (its "link remote" line) to connected."""
        total, protocol = [], []
        for i in range(self.settings.handshakes):
            client = Client(self.topo, self.topo.profiles[proto], f"hs-{name}-{proto}-{i}",
                            "--machine-readable-output")
            try:
                client.wait_connected()
                done = measure.completed_at(client.log, CONNECTED)
                first = measure.completed_at(client.log, "link remote:")
                if done is not None:
                    total.append((done - client.started_at) * 1000)
                    if first is not None:
                        protocol.append((done - first) * 1000)
            finally:
                client.stop()
        for label, times in (("exec to connected", total), ("first packet to connected",
                                                              protocol)):
            fig = self.report.get("handshake time", f"{label}, {proto}", "ms", "lower")
            fig.samples[SIDE[name]] = times
            setattr(fig, SIDE[name], measure.median(times))

    def _burst_profiles(self, proto: str) -> list[Path]:
        if proto not in self.burst_profiles:
            self.burst_profiles[proto] = _burst_profiles_for(self.topo, proto,
                                                             self.settings.burst)
        return self.burst_profiles[proto]

    def _burst(self, name: str, proto: str) -> None:
        """``burst`` clients started at once (no TUN each): completed handshakes per second."""
        n = self.settings.burst
        profiles = self._burst_profiles(proto)
        started = time.time()
        sources = self.topo.sources(-(-n // BURST_PER_SOURCE))
        clients = [Client(self.topo, profiles[i], f"burst-{name}-{i}",
                          "--machine-readable-output", *NULL_DEVICE, "--bind", "--local",
                          sources[i % len(sources)], "--lport", "0") for i in range(n)]
        try:
            wait_until(lambda: all(c.connected() for c in clients), 60)
            done = [measure.completed_at(c.log, CONNECTED) for c in clients]
        finally:
            self.topo.lab.stop_many([c.proc for c in clients])
        finished = [d for d in done if d is not None]
        if len(finished) < n:
            self.report.notes.append(f"{name} burst: {len(finished)}/{n} clients connected")
        fig = self.report.get("handshake rate", f"burst of {n} openvpn clients, {proto}",
                              "handshakes/s", "higher")
        if finished:
            setattr(fig, SIDE[name], len(finished) / max(1e-6, max(finished) - started))


    # ----------------------------------------------------------------- packet loss
    def run_loss(self) -> None:
        """The same stock client connects ``loss_tries`` times to each server over UDP with
        0/5/10 % of the datagrams dropped each way (``Namespace.set_udp_loss`` in the
        client's namespace): success rate and median time from its first packet to
        connected."""
        cli = self.topo.cli
        for percent in LOSS_PERCENTS:
            cli.set_udp_loss(percent, port=PORT)
            try:
                for name, server in self.servers.items():
                    if (name, "udp") in self.down:
                        continue
                    try:
                        server.start("udp")
                        self._lossy_connects(name, percent)
                    except Unavailable as exc:
                        self._skip(name, "udp", str(exc))
                    finally:
                        server.stop()
            finally:
                cli.set_udp_loss(0, port=PORT)

    def _lossy_connects(self, name: str, percent: int) -> None:
        tries, times = self.settings.loss_tries, []
        for i in range(tries):
            client = Client(self.topo, self.topo.profiles["udp"], f"loss-{name}-{percent}-{i}",
                            "--machine-readable-output")
            try:
                wait_until(client.connected, LOSS_CONNECT_TIMEOUT_S, interval=0.02)
            finally:
                client.stop()
            done = measure.completed_at(client.log, CONNECTED)
            first = measure.completed_at(client.log, "link remote:")
            if done is not None and first is not None:
                times.append((done - first) * 1000)
        side = SIDE[name]
        rate = self.report.get("packet loss", f"connected, {percent} % loss each way, udp",
                               "%", "higher")
        setattr(rate, side, 100.0 * len(times) / tries)
        took = self.report.get("packet loss", f"median time to connected, {percent} % loss "
                               "each way, udp", "ms", "lower")
        took.samples[side] = times
        setattr(took, side, measure.median(times))
        self.runs.append({"server": name, "loss_percent": percent, "tries": tries,
                          "connected_ms": times})


def _burst_profiles_for(topo: VpnTopology, proto: str, n: int) -> list[Path]:
    """One profile per burst client, each with its own certificate (``bench.credentials``),
    without ``nobind`` (each binds its source address, ``--local``).

    Without the CLI's data folder (ours is n/a then) they share the fallback profile.
    """
    base = topo.work / f"burst-{proto}.ovpn"
    lines = topo.profiles[proto].read_text().splitlines(keepends=True)
    base.write_text("".join(line for line in lines if line.strip() != "nobind"))
    base.chmod(0o600)
    if topo.cli_error is not None:
        return [base] * n
    if not topo.burst_credentials:
        topo.burst_credentials = issue_clients(topo, n, "b")
    return profiles_for(base, topo.burst_credentials[:n], topo.work / f"burst-{proto}")


def _p99(values: list[float]) -> float | None:
    return measure.percentile(values, 0.99) if values else None
