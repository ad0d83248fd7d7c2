"""Scale: thousands of simulated clients (``bench.loadgen``) against each server, UDP.

Every simulated client has its own certificate (``bench.credentials``), so both servers see
the same distinct clients. The first stage is one burst (all its handshakes started at
once): its completion rate is the "handshakes/s under a burst" figure; each stage then
reports the server's RSS with that many idle sessions sending keepalives.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.credentials import issue_clients, write_jsonl
from bench.lab import file_contains, wait_until
from bench.report import Report
from bench.tunnel_phases import BURST_PER_SOURCE, SIDE
from bench.vpn import GATEWAY_OUTER, PORT, ROOT, OpenVpnServer, OurServer, Server, VpnTopology

#: Clients per load generator process: each holds one socket per client under an open-file
#: limit (20,000 hard here, not liftable in a container without CAP_SYS_RESOURCE).
SHARE_CLIENTS = 12_500
#: Stages larger than this run against ours only: OpenVPN held 9,867 of 10,000 at 1.5 GiB.
BASELINE_MAX = 10_000


@dataclass(frozen=True)
class ScaleSettings:
    sizes: tuple[int, ...]
    burst: int
    hold: float = 5.0
    stage_timeout: float = 75.0

    def with_sessions(self, sessions: int) -> ScaleSettings:
        """The stages up to ``sessions`` (`bench --sessions`): the burst stage, then one of
        ``sessions``, given the issue's 5 minutes when past the usual 10,000."""
        timeout = max(self.stage_timeout, 300.0 if sessions > BASELINE_MAX else 0.0)
        return dataclasses.replace(self, sizes=(min(self.sizes[0], sessions), sessions),
                                   stage_timeout=timeout)


def run_scale(topo: VpnTopology, report: Report, settings: ScaleSettings,
              workers: int = 1) -> None:
    if topo.cli_error is not None:
        report.notes.append("scale: n/a (needs the data folder made by the sslvpn CLI)")
        return
    credentials = topo.work / "scale-clients.jsonl"
    write_jsonl(issue_clients(topo, max(settings.sizes), "s"), credentials)
    servers: dict[str, Server] = {"openvpn": OpenVpnServer(topo),
                                  "ours": OurServer(topo, workers=workers)}
    if max(settings.sizes) > BASELINE_MAX:
        del servers["openvpn"]
        report.notes.append(f"scale openvpn: n/a (not run past {BASELINE_MAX:,} sessions: "
                            "it held 9,867 of 10,000 at 1,505 MiB)")
    for name, server in servers.items():
        try:
            server.start("udp", unlimited_resets=True)
            stages = _drive(topo, server, credentials, settings)
        except Exception as exc:  # noqa: BLE001 - one server failing leaves the other's figures
            report.notes.append(f"scale {name}: n/a ({type(exc).__name__}: {exc})"[:400])
            continue
        finally:
            server.stop()
        _record(report, SIDE[name], stages, settings)


def _drive(topo: VpnTopology, server: Server, credentials: Path,
           settings: ScaleSettings) -> list[dict[str, Any]]:
    """Run the load generator in the client namespace and collect its stage lines."""
    pki = topo.data_dir / "pki"
    log = topo.work / f"loadgen-{server.name}.log"
    log.write_text("")
    sources = topo.sources(-(-settings.burst // BURST_PER_SOURCE))  # every wave's in budget
    proc = topo.cli.spawn(
        [sys.executable, "-m", "bench.loadgen", "--server", f"{GATEWAY_OUTER}:{PORT}",
         "--server-pid", str(server.pid), "--credentials", str(credentials),
         "--ca", str(pki / "ca.crt"), "--tls-crypt", str(pki / "tls-crypt.key"),
         "--stages", ",".join(str(s) for s in settings.sizes), "--wave", str(settings.burst),
         "--sources", ",".join(sources),
         "--processes", str(-(-max(settings.sizes) // SHARE_CLIENTS)),
         "--hold", str(settings.hold), "--stage-timeout", str(settings.stage_timeout)],
        log=log, env={**os.environ, "PYTHONPATH": str(ROOT)})
    last = f'"stage": {max(settings.sizes)},'
    # + loading the credentials: each share makes a TLS context per client first
    budget = (settings.stage_timeout + settings.hold + 20) * len(settings.sizes) + 60 \
        + max(settings.sizes) / 250
    finished = wait_until(lambda: file_contains(log, last)() or proc.poll() is not None, budget)
    topo.lab.stop(proc)
    stages = [json.loads(line) for line in log.read_text().splitlines()
              if line.startswith("{")]
    if not finished or not stages:
        raise RuntimeError(f"load generator: {log.read_text(errors='replace')[-300:]}")
    return stages


def _record(report: Report, side: str, stages: list[dict[str, Any]],
            settings: ScaleSettings) -> None:
    idle = stages[0]
    for before, stage in itertools.pairwise(stages):
        n, previous = int(stage["stage"]), int(before["established"])
        mem = report.get("scale memory", f"server peak RSS, {n} idle sessions", "MiB", "lower")
        if stage["established"] >= 0.9 * n:
            setattr(mem, side, stage["hwm_kib"] / 1024)
        if stage["established"] < n:
            report.notes.append(f"scale {side}: {int(stage['established'])}/{n} sessions "
                                f"established in the time allowed, failures "
                                f"{stage.get('failures')}")
        report.notes.append(
            f"scale {side}, stage {n}: up after 50/90/100 % {stage.get('t50_s')}/"
            f"{stage.get('t90_s')}/{stage.get('t100_s')} s; datagrams lost to the server's "
            f"UDP receive buffer {stage.get('server_rcvbuf_errors')}, to the clients' send "
            f"buffers {stage.get('send_errors')}; {stage.get('lost', 0)} closed after coming up, "
            f"{stage.get('retried', 0)} told to retry later (and retried); "
            f"load generator {stage.get('loadgen_processes')} processes, "
            f"{stage.get('loadgen_cpu_s')} CPU-s, {stage.get('loadgen_rss_kib', 0) // 1024} MiB; "
            f"server {stage.get('server_cpu_s')} CPU-s; {_per_session(stage, previous)}"
            f"load average {stage.get('load_average')}")
    last = stages[-1]
    live = last.get("live", last["established"])  # sessions that came up and still run
    if len(stages) > 1 and live:
        per = report.get("scale memory per session", "server RSS per idle session", "KiB",
                         "lower")
        setattr(per, side, (last["rss_kib"] - idle["rss_kib"]) / live)
    if len(stages) > 1:
        rate = report.get("scale rate", f"handshakes/s, burst of {settings.sizes[0]} "
                          "simulated clients", "handshakes/s", "higher")
        setattr(rate, side, stages[1]["rate"])


def _per_session(stage: dict[str, Any], previous: int) -> str:
    """CPU milliseconds per session the stage brought up, server and load generator: the
    cost of a handshake (and of keeping the earlier sessions alive meanwhile), which the
    load of other work on the host leaves alone, unlike the rate."""
    new = int(stage["established"]) - previous
    if new <= 0 or stage.get("server_cpu_s") is None:
        return ""
    return (f"per session brought up: server {1000 * stage['server_cpu_s'] / new:.1f} ms, "
            f"load generator {1000 * stage['loadgen_cpu_s'] / new:.1f} ms CPU; ")
