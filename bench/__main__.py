"""``python -m bench``: run the benchmark phases, print the table, write JSON and a PNG chart.

Every namespace and process is removed on exit, also on an error, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from bench import report as report_module
from bench.access_phase import run_access
from bench.attack_phase import AttackSettings, run_attack
from bench.fleet_phase import FleetSettings, run_fleet
from bench.ipsec_phase import IpsecSettings, run_ipsec
from bench.lab import Lab
from bench.report import Report
from bench.scale_phase import ScaleSettings, run_scale
from bench.tunnel_phases import TunnelBench, TunnelSettings
from bench.vpn import build_topology

PHASES = ("throughput", "latency", "admission", "loss", "scale", "attack", "ipsec", "fleet",
          "access")
TUNNEL_PHASES = {"throughput", "latency", "admission", "loss", "scale", "attack", "access"}
FULL = (TunnelSettings(reps=3, seconds=10, raw_seconds=5, pings=200, handshakes=10, burst=50,
                       loss_tries=20),
        IpsecSettings(reps=3, seconds=10),
        ScaleSettings(sizes=(1000, 10000), burst=1000, hold=3, stage_timeout=45),
        FleetSettings(clients=20, back_timeout=90),
        AttackSettings(forged=2000, window=10, tcp_clients=10))
QUICK = (TunnelSettings(reps=1, seconds=3, raw_seconds=2, pings=50, handshakes=3, burst=10,
                        loss_tries=4),
         IpsecSettings(reps=1, seconds=3),
         ScaleSettings(sizes=(100,), burst=100, hold=2, stage_timeout=30),
         FleetSettings(clients=6, back_timeout=90),
         AttackSettings(forged=500, window=7, tcp_clients=3))
REQUIRED = ("ip", "openvpn", "iperf3", "ping", "openssl", "swanctl")


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def _meta(quick: bool, workers: int) -> dict[str, object]:
    version = subprocess.run(["openvpn", "--version"], capture_output=True, text=True,
                             check=False).stdout.splitlines()
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "mode": "quick" if quick else "full",
        "workers": workers, "load_average": os.getloadavg(),
        "host": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count(),
        "openvpn": version[0] if version else "?",
        "baseline": "OpenVPN 2.6 server (tunnel figures) / strongSwan (IPsec figures)",
        "cipher": "AES-256-GCM, tls-crypt; TCP inside the tunnel pinned to CUBIC",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short smoke run (~2 minutes)")
    parser.add_argument("--only", default=",".join(PHASES),
                        help=f"comma-separated phases to run: {','.join(PHASES)}")
    parser.add_argument("--out", type=Path,
                        default=Path(tempfile.gettempdir()) / "sslvpn-bench",
                        help="folder for results.json/.md/.png and the run's work files")
    parser.add_argument("--workers", type=int, default=1,
                        help="run ours as `serve --workers N` (default 1: one process)")
    parser.add_argument("--sessions", type=int, default=None,
                        help="idle sessions of the scale phase's last stage (default 10,000, "
                             "100 with --quick; past 10,000 ours only, 5 minutes allowed)")
    parser.add_argument("--pings", type=int, default=None,
                        help="pings per latency figure (default 200, 50 with --quick)")
    args = parser.parse_args(argv)
    phases = [p for p in args.only.split(",") if p]
    unknown = set(phases) - set(PHASES)
    if unknown:
        parser.error(f"unknown phases: {', '.join(sorted(unknown))}")
    missing = [b for b in REQUIRED if shutil.which(b) is None]
    if missing or os.geteuid() != 0:
        print(f"bench needs root and {', '.join(REQUIRED)}; missing: {missing}", file=sys.stderr)
        return 2
    tunnel_s, ipsec_s, scale_s, fleet_s, attack_s = QUICK if args.quick else FULL
    if args.pings is not None:
        tunnel_s = dataclasses.replace(tunnel_s, pings=args.pings)
    if args.sessions is not None:
        scale_s = scale_s.with_sessions(args.sessions)
    work = args.out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    signal.signal(signal.SIGTERM, _terminate)
    report = Report(meta=_meta(args.quick, args.workers))
    started = time.monotonic()
    lab = Lab()
    try:
        if TUNNEL_PHASES & set(phases):
            topo = build_topology(lab, work / "vpn")
            if topo.cli_error:
                report.notes.append("sslvpn CLI unavailable, OpenVPN baseline uses an openssl "
                                    f"PKI: {topo.cli_error.strip().splitlines()[-1][:200]}")
            tunnels = TunnelBench(topo, report, tunnel_s, args.workers)
            if "throughput" in phases:
                _phase(report, "throughput + latency", tunnels.run_throughput)
            elif "latency" in phases:
                _phase(report, "latency", tunnels.run_latency)
            if "admission" in phases:
                _phase(report, "admission", tunnels.run_admission)
            if "loss" in phases:
                _phase(report, "loss", tunnels.run_loss)
            if "scale" in phases:
                _phase(report, "scale", lambda: run_scale(topo, report, scale_s, args.workers))
            if "attack" in phases:
                _phase(report, "attack", lambda: run_attack(topo, report, attack_s))
            if "access" in phases:
                _phase(report, "access rules", lambda: run_access(tunnels, report))
        if "ipsec" in phases:
            _phase(report, "ipsec", lambda: run_ipsec(lab, work / "ipsec", report, ipsec_s))
        if "fleet" in phases:
            _phase(report, "fleet", lambda: run_fleet(work / "fleet", report, fleet_s))
    finally:
        lab.close()
        report.meta["duration_s"] = round(time.monotonic() - started, 1)
        paths = report_module.write(report, args.out)
        print(report_module.table(report))
        for note in report.notes:
            print(f"- {note}")
        print(f"\nwritten: {', '.join(str(p) for p in paths.values())} "
              f"({report.meta['duration_s']} s)")
    return 0


def _phase(report: Report, name: str, run: Callable[[], None]) -> None:
    """One phase; its failure becomes a note so the other phases still report."""
    started = time.monotonic()
    print(f"[bench] {name} ...", file=sys.stderr, flush=True)
    try:
        run()
    except Exception as exc:  # noqa: BLE001 - report what broke, keep the other figures
        report.notes.append(f"phase {name} failed: {type(exc).__name__}: {exc}"[:500])
    print(f"[bench] {name} done in {time.monotonic() - started:.0f} s", file=sys.stderr,
          flush=True)


if __name__ == "__main__":
    sys.exit(main())
