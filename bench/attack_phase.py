"""Attack: each server under four floods, with a real client connecting during each.

Floods (built with our own client core from leaked keys, ``tests.interop.attacks``):

* ``udp tls-crypt``: forged hard resets with the leaked tls-crypt key, source = a victim
  address on the client's link (198.18.0.77), one source port each;
* ``udp tls-crypt-v2``: the same with a leaked tls-crypt-v2 client key, as an OpenVPN 2.5
  client sends them (no early-negotiation marker: the path without a cookie);
* ``udp random sources``: ten times as many tls-crypt resets from random forged sources;
* ``tcp``: eight hosts keep 400 TCP connections coming, each sending a valid reset.

Per flood and server (started afresh for each): packets and bytes the victim got per forged
packet and byte, counted by nft after a window that covers 2.6's first retransmissions;
half-open peak (ours: ``sessions --json``; OpenVPN shows none: n/a); RSS growth (the process
tree's RSS sampled during the flood, minus its RSS once started and settled); and a real
openvpn client's first packet to connected, started right after the UDP flood was sent or while the
TCP flood runs (median of several in a row for TCP, and the worst). For tls-crypt-v2 both
servers run tls-crypt-v2 (OpenVPN cannot serve tls-crypt beside it), the client a v2 profile.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bench import measure
from bench.report import Report
from bench.tunnel_phases import NULL_DEVICE, SIDE
from bench.vpn import (
    CONNECTED,
    GATEWAY_OUTER,
    PORT,
    USER,
    Client,
    OpenVpnServer,
    OurServer,
    Server,
    VpnTopology,
    sslvpn,
)
from sslvpn.config import DataPaths
from sslvpn.store import db, queries
from tests.interop.attacks import (
    IP_UDP_HEADERS,
    add_victim,
    forge_udp,
    leaked_config,
    link_of,
    resets,
    start_tcp_flood,
    stop_tcp_flood,
    victim_count,
    write_packets,
)

VICTIM = "198.18.0.77"
FLOOD_SOURCES = [f"198.18.0.{n}" for n in range(100, 108)]
GROUP = "attack"
SETTLE = 3.0  # seconds a freshly started server is left alone before a flood
RSS_SAMPLE = 0.2  # seconds between two RSS samples during a flood


@dataclass(frozen=True)
class AttackSettings:
    forged: int  # forged resets per victim flood (ten times as many from random sources)
    window: float  # seconds the victim counts after a flood (2.6 retransmits at 2, 4, 8 s)
    tcp_clients: int  # real clients connecting one after another during the TCP flood
    tcp_concurrency: int = 400


def run_attack(topo: VpnTopology, report: Report, settings: AttackSettings) -> None:
    if topo.cli_error is not None:
        report.notes.append("attack: n/a (needs the data folder made by the sslvpn CLI)")
        return
    report.notes.append(f"attack: load average at start {_load()}")
    _prepare(topo)
    serial = _serial(topo)
    v2_profile = _v2_profile(topo)
    tls_crypt = leaked_config(topo.data_dir, serial, v2=False)
    legacy_v2 = dataclasses.replace(leaked_config(topo.data_dir, serial, v2=True),
                                    early_negotiation=False)
    floods = [
        ("udp tls-crypt", "udp", False, lambda: resets(tls_crypt, settings.forged), VICTIM),
        ("udp tls-crypt-v2", "udp", True, lambda: resets(legacy_v2, settings.forged), VICTIM),
        ("udp random sources", "udp", False,
         lambda: resets(tls_crypt, settings.forged * 10), "random"),
    ]
    for name, server in (("openvpn", OpenVpnServer(topo)), ("ours", OurServer(topo))):
        for label, proto, v2, packets, source in floods:
            profile = v2_profile if v2 else topo.profiles[proto]
            try:
                _start(server, proto, v2=v2)
                _udp_flood(topo, report, settings, name, server, label, packets(), source,
                           profile)
            except Exception as exc:  # noqa: BLE001 - one flood failing keeps the others
                report.notes.append(f"attack {label} {name}: n/a ({type(exc).__name__}: "
                                    f"{exc})"[:400])
            finally:
                server.stop()
        try:
            _start(server, "tcp", v2=False)
            _tcp_flood(topo, report, settings, name, server, serial)
        except Exception as exc:  # noqa: BLE001
            report.notes.append(f"attack tcp {name}: n/a ({type(exc).__name__}: {exc})"[:400])
        finally:
            server.stop()
    report.notes.append(f"attack: load average at the end {_load()}")


def _load() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def _prepare(topo: VpnTopology) -> None:
    """The victim address (counted) and the TCP flood's sources on the client's link; the
    gateway takes forged sources (no reverse-path filter)."""
    add_victim(topo.cli, "198.18.0.2", VICTIM, PORT)
    link = link_of(topo.cli, "198.18.0.2")
    for source in FLOOD_SOURCES:
        topo.cli.run("ip", "addr", "add", f"{source}/32", "dev", link)
    topo.gw.run("sh", "-c", "for f in /proc/sys/net/ipv4/conf/*/rp_filter; do echo 0 > $f; done")


def _serial(topo: VpnTopology) -> str:
    engine = db.open_engine(f"sqlite:///{DataPaths(topo.data_dir).database}")
    try:
        with db.session(engine, write=False) as s:
            return queries.list_certificates(s, kind="client")[0].serial
    finally:
        engine.dispose()


def _v2_profile(topo: VpnTopology) -> Path:
    """The bench user's UDP profile with its tls-crypt-v2 key (the settings say which key
    profiles carry: switched for the rendering only)."""
    engine = db.open_engine(f"sqlite:///{DataPaths(topo.data_dir).database}")

    def channel(value: str) -> None:
        with db.session(engine, write=True) as s:
            settings = queries.get_settings(s)
            settings.control_channel = value
            queries.save_settings(s, settings=settings)

    path = topo.work / f"{USER}-udp-v2.ovpn"
    try:
        channel("tls-crypt-v2")
        sslvpn(topo.data_dir, "profile", USER, "--device", "d0", "--proto", "udp", "-o",
               str(path))
    finally:
        channel("tls-crypt")
        engine.dispose()
    return path


def _start(server: Server, proto: str, *, v2: bool) -> None:
    """Stock settings; with ``v2`` OpenVPN serves tls-crypt-v2 instead of tls-crypt (ours
    serves both anyway)."""
    if not v2 or not isinstance(server, OpenVpnServer):
        server.start(proto)
        return
    pki = server.topo.data_dir / "pki"
    config = server.config(proto)
    text = config.read_text().replace(f"tls-crypt {pki / 'tls-crypt.key'}",
                                      f"tls-crypt-v2 {pki / 'tls-crypt-v2-server.key'}")
    config.write_text(text)
    server._spawn(["openvpn", "--config", str(config)], CONNECTED)  # noqa: SLF001


def _tree_kib(pid: int, field: str) -> int:
    total = 0
    for member in measure.process_tree(pid):
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


class RssWatch:
    """The server tree's RSS once settled (ours starts its portal after it listens), and the
    most it reaches while watched (sampled every ``RSS_SAMPLE`` s, in a thread)."""

    def __init__(self, pid: int) -> None:
        time.sleep(SETTLE)
        self.pid = pid
        self.baseline = self.peak = _tree_kib(pid, "VmRSS")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(RSS_SAMPLE):
            self.peak = max(self.peak, _tree_kib(self.pid, "VmRSS"))

    def growth_mib(self) -> float:
        self._stop.set()
        self._thread.join()
        return (max(self.peak, _tree_kib(self.pid, "VmRSS")) - self.baseline) / 1024


def _half_open_peak(topo: VpnTopology, proto: str) -> float | None:
    listeners = json.loads(sslvpn(topo.data_dir, "sessions", "--json"))["listeners"]
    return None if listeners is None else float(listeners["half_open_peak"][proto])


def _connect_seconds(client: Client, start_marker: str) -> float | None:
    client.wait_connected(60)
    done = measure.completed_at(client.log, CONNECTED)
    first = measure.completed_at(client.log, start_marker)
    return None if done is None or first is None else done - first


def _set(report: Report, label: str, figure: str, unit: str, name: str,
         value: float | None) -> None:
    setattr(report.get(GROUP, f"{label}: {figure}", unit, "lower"), SIDE[name], value)


def _udp_flood(topo: VpnTopology, report: Report, settings: AttackSettings, name: str,
               server: Server, label: str, packets: list[bytes], source: str,
               profile: Path) -> None:
    rss = RssWatch(server.pid)
    before = victim_count(topo.cli)
    path = write_packets(topo.work / f"attack-{name}-{label.replace(' ', '-')}.bin", packets)
    sent = forge_udp(topo.cli, source, GATEWAY_OUTER, PORT, path, 20000)
    client = Client(topo, profile, f"attack-{name}-{label.replace(' ', '-')}",
                    "--machine-readable-output", *NULL_DEVICE)
    try:
        took = _connect_seconds(client, "link remote:")
    finally:
        client.stop()
    time.sleep(settings.window)  # the counting window (retransmissions come in it)
    got, size = (a - b for a, b in zip(victim_count(topo.cli), before, strict=True))
    if source != "random":
        _set(report, label, "reflected packets per forged packet", "packets", name, got / sent)
        sent_bytes = sum(len(p) + IP_UDP_HEADERS for p in packets)
        _set(report, label, "reflected bytes per forged byte", "bytes", name, size / sent_bytes)
    peak = _half_open_peak(topo, "udp") if name == "ours" else None
    _set(report, label, "half-open peak", "clients", name, peak)
    _set(report, label, "RSS growth", "MiB", name, rss.growth_mib())
    _set(report, label, "real client first packet to connected", "s", name, took)
    report.notes.append(f"attack {label} {name}: {sent} forged, {got} packets / {size} bytes "
                        "at the victim")


def _tcp_flood(topo: VpnTopology, report: Report, settings: AttackSettings, name: str,
               server: Server, serial: str) -> None:
    rss = RssWatch(server.pid)
    reset = resets(leaked_config(topo.data_dir, serial, v2=False, tcp=True), 1)
    path = write_packets(topo.work / f"attack-{name}-tcp.bin", reset)
    flood = start_tcp_flood(topo.cli, GATEWAY_OUTER, PORT, path, settings.tcp_concurrency,
                            FLOOD_SOURCES)
    times: list[float] = []
    try:
        time.sleep(3.0)  # the flood in full swing before the first real client
        for i in range(settings.tcp_clients):
            client = Client(topo, topo.profiles["tcp"], f"attack-{name}-tcp-{i}",
                            "--machine-readable-output", *NULL_DEVICE)
            try:
                took = _connect_seconds(client, "Attempting to establish TCP connection")
            finally:
                client.stop()
            if took is not None:
                times.append(took)
        peak = _half_open_peak(topo, "tcp") if name == "ours" else None
        growth = rss.growth_mib()
    finally:
        made = stop_tcp_flood(flood)
    label = "tcp flood"
    figure = report.get(GROUP, f"{label}: real client connect (median)", "s", "lower")
    figure.samples[SIDE[name]] = times
    setattr(figure, SIDE[name], statistics.median(times) if times else None)
    _set(report, label, "real client connect (worst)", "s", name, max(times, default=None))
    _set(report, label, "half-open peak", "clients", name, peak)
    _set(report, label, "RSS growth", "MiB", name, growth)
    report.notes.append(f"attack tcp {name}: {made} connections made by the flood; real "
                        f"clients {', '.join(f'{t:.3f}' for t in times)} s")
