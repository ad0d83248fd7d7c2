"""``python -m bench.soak --minutes N``: a long run of `sslvpn serve` under mixed load that
prints the server's RSS, fd, thread, session, lease and database growth per hour.

The bench topology (``bench.vpn``) plus one namespace per long-lived client:

    sb-long<i> 198.18.<i+1>.2 == sb-gw (serve, portal on its loopback) == sb-vpc (iperf3 -s)
    sb-cli 198.18.0.2 ========/   churn clients (--dev null)

Load, all at once for ``--minutes``: ``--long`` real openvpn clients that renegotiate every
``--reneg`` seconds and carry an iperf3 ``--bidir`` stream of ``--rate`` each way (in
5-minute runs, restarted when one ends); a new short-lived client every ``--churn-every``
seconds (own certificate from a small pool; every third one ends with ``kill -9``, the
others with a clean exit); a portal and API cycle every ``--portal-every`` seconds
(``bench.soak_portal``). Then ``--cooldown`` minutes without load show whether memory
comes back. A sample every ``--sample-every`` seconds goes to ``samples.jsonl``; the
summary (``summary.json`` and stdout) gives growth per hour after ``--warmup`` minutes.
With ``--tracemalloc FRAMES`` the server runs with ``SSLVPN_TRACEMALLOC=FRAMES`` and is asked
for a heap snapshot (SIGUSR2) at the end of the warm-up, every ``--snapshot-every`` minutes,
at the end of the load and of the cool-down; the summary lists the source lines whose
allocations grew most. Every namespace and process is removed on exit, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from bench import soak_report
from bench.credentials import issue_clients, profiles_for
from bench.lab import Lab, Namespace, file_contains, wait_until
from bench.soak_report import Sample
from bench.tunnel_phases import NULL_DEVICE
from bench.vpn import (
    GATEWAY_OUTER,
    ROOT,
    VPC_HOST,
    Client,
    OurServer,
    VpnTopology,
    build_topology,
    sslvpn,
)
from sslvpn.config import DataPaths
from sslvpn.runtime.control_server import ControlClient, ControlError

ADMIN = "soak-admin"
IPERF_CHUNK_S = 300
CHURN_POOL = 8  # certificates the churn clients take turns with
CHURN_LIFETIME_S = (5.0, 40.0)  # after connecting
PORTAL_STEP_WINDOW_S = 600  # compare portal step times in the first and last 10 minutes
SNAPSHOT_TIMEOUT_S = 180
PORTAL_START_TIMEOUT_S = 120


@dataclass(frozen=True)
class SoakSettings:
    minutes: float
    warmup: float
    cooldown: float
    long: int
    rate: str
    reneg: tuple[int, int]
    churn_every: float
    portal_every: float
    sample_every: float
    tracemalloc: int
    snapshot_every: float
    floor_window: float


@dataclass
class LongClient:
    """A long-lived client in its own namespace and its iperf3 runs."""

    ns: Namespace
    profile: Path
    port: int
    client: Client | None = None
    iperf: subprocess.Popen[bytes] | None = None
    iperf_log: Path | None = None
    starts: int = 0
    runs: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Churner:
    client: Client
    kill: bool
    lifetime: float
    connected_at: float | None = None


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


class Soak:
    """One soak run in one lab; ``run`` drives the load and returns the summary."""

    def __init__(self, lab: Lab, work: Path, out: Path, settings: SoakSettings) -> None:
        self.lab, self.work, self.out, self.s = lab, work, out, settings
        self.topo: VpnTopology = build_topology(lab, work)
        if self.topo.cli_error is not None:
            raise RuntimeError(f"the sslvpn CLI could not make the data folder: "
                               f"{self.topo.cli_error}")
        self.paths = DataPaths(self.topo.data_dir)
        env = dict(os.environ)
        if settings.tracemalloc:
            env["SSLVPN_TRACEMALLOC"] = str(settings.tracemalloc)
        self.server = OurServer(self.topo, env=env)
        self.long: list[LongClient] = []
        self.churn: list[Churner] = []
        self.churn_profiles: list[Path] = []
        self.counts = {"churn_started": 0, "churn_connected": 0, "churn_failed": 0,
                       "churn_killed": 0, "long_restarts": 0, "iperf_errors": 0}
        self.samples: list[Sample] = []
        self.snapshots: list[Path] = []
        self.portal: subprocess.Popen[bytes] | None = None
        self.portal_log = work / "portal-cycle.jsonl"
        self.started = 0.0
        self.load_ended = float("inf")  # wall-clock time stop_load began

    # ---------------------------------------------------------------------------- set-up
    def prepare(self) -> None:
        credentials = issue_clients(self.topo, self.s.long + CHURN_POOL, "soak")
        base = self.topo.profiles["udp"]
        profiles = profiles_for(base, credentials, self.work / "profiles")
        self.churn_profiles = profiles[self.s.long:]
        password = secrets.token_urlsafe(18)
        self.admin_password = password
        sslvpn(self.topo.data_dir, "user", "add", ADMIN, "--admin", "--password-stdin",
               stdin=password + "\n")
        for i in range(self.s.long):
            ns = self.lab.namespace(f"long{i}")
            self.lab.link(ns, f"198.18.{i + 1}.2/24", self.topo.gw, f"198.18.{i + 1}.1/24")
            ns.run("ip", "route", "replace", f"{GATEWAY_OUTER}/32", "via", f"198.18.{i + 1}.1")
            port = 5201 + i
            self.topo.vpc.spawn(["iperf3", "-s", "-p", str(port)],
                                log=self.work / f"iperf3-server-{port}.log")
            self.long.append(LongClient(ns, profiles[i], port))
        self.server.start("udp")

    def start_portal_cycle(self) -> None:
        """Once the portal answers (it starts after the listeners)."""
        if not wait_until(file_contains(self.server.log, "portal: "), PORTAL_START_TIMEOUT_S):
            raise RuntimeError(f"the portal did not start, see {self.server.log}")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.portal = self.topo.gw.spawn(
            [sys.executable, "-m", "bench.soak_portal", "--admin", ADMIN,
             "--every", str(self.s.portal_every)],
            log=self.portal_log, stdin=subprocess.PIPE, env=env)
        if self.portal.stdin is not None:  # always, with stdin=PIPE
            self.portal.stdin.write(self.admin_password.encode() + b"\n")
            self.portal.stdin.close()

    # ------------------------------------------------------------------------------ load
    def tend_long(self, now: float) -> None:
        """Keep each long-lived client connected and its iperf3 stream running."""
        reneg_max, reneg_min = self.s.reneg
        for i, lc in enumerate(self.long):
            if lc.client is None or lc.client.proc.poll() is not None:
                if lc.client is not None:
                    self.counts["long_restarts"] += 1
                lc.starts += 1
                lc.client = Client(self.topo, lc.profile, f"long{i}-{lc.starts}", "--reneg-sec",
                                   str(reneg_max), str(reneg_min), ns=lc.ns)
            if lc.iperf is not None and lc.iperf.poll() is not None:
                lc.runs.append(self._iperf_result(lc))
                lc.iperf = None
            if lc.iperf is None and lc.client.connected():
                lc.iperf_log = self.work / f"iperf3-long{i}-{len(lc.runs)}.json"
                lc.iperf = lc.ns.spawn(
                    ["iperf3", "-c", VPC_HOST, "-p", str(lc.port), "--bidir", "-b", self.s.rate,
                     "-t", str(IPERF_CHUNK_S), "-J", "--connect-timeout", "5000"],
                    log=lc.iperf_log)

    def _iperf_result(self, lc: LongClient) -> dict[str, Any]:
        try:
            parsed = json.loads(lc.iperf_log.read_text()) if lc.iperf_log else {}
        except (OSError, ValueError):
            parsed = {"error": "no JSON"}
        if "error" in parsed:  # also each run that stop_load interrupted (no sums then)
            if time.time() < self.load_ended:
                self.counts["iperf_errors"] += 1
            return {"error": str(parsed["error"])[:200]}
        end = parsed["end"]
        return {"up_mbps": round(end["sum_received"]["bits_per_second"] / 1e6, 2),
                "down_mbps": round(end.get("sum_received_bidir_reverse", {})
                                   .get("bits_per_second", 0) / 1e6, 2)}

    def tend_churn(self, now: float, last_spawn: float) -> float:
        """Start a churn client every ``churn_every`` s; end each after its lifetime."""
        for ch in list(self.churn):
            age_limit = 30.0 if ch.connected_at is None else ch.lifetime
            if ch.connected_at is None and ch.client.connected():
                ch.connected_at = now
                self.counts["churn_connected"] += 1
            since = ch.connected_at if ch.connected_at is not None else ch.client.started_at
            if now - since < age_limit and ch.client.proc.poll() is None:
                continue
            if ch.connected_at is None:
                self.counts["churn_failed"] += 1
            if ch.kill and ch.client.proc.poll() is None:
                os.killpg(ch.client.proc.pid, signal.SIGKILL)
                ch.client.proc.wait(10)
                self.counts["churn_killed"] += 1
            else:
                ch.client.stop()
            self.churn.remove(ch)
        if now - last_spawn < self.s.churn_every:
            return last_spawn
        n = self.counts["churn_started"]
        self.counts["churn_started"] += 1
        profile = self.churn_profiles[n % len(self.churn_profiles)]
        client = Client(self.topo, profile, f"churn{n}", *NULL_DEVICE)
        lifetime = CHURN_LIFETIME_S[0] + secrets.randbelow(
            int(CHURN_LIFETIME_S[1] - CHURN_LIFETIME_S[0]) + 1)
        self.churn.append(Churner(client, kill=n % 3 == 2, lifetime=lifetime))
        return now

    def stop_load(self) -> None:
        self.load_ended = time.time()
        clients = [c.client.proc for c in self.churn]
        clients += [p for lc in self.long for p in (lc.iperf, lc.client and lc.client.proc) if p]
        if self.portal is not None:
            clients.append(self.portal)
        self.lab.stop_many([p for p in clients if p is not None])
        for lc in self.long:
            if lc.iperf is not None:
                lc.runs.append(self._iperf_result(lc))
        self.churn.clear()

    # ------------------------------------------------------------------------ measuring
    def sample(self, phase: str) -> Sample:
        rss, anon, fds, threads = soak_report.process_status(self.server.pid)
        try:
            sessions = len(ControlClient(self.paths.control_socket).list_sessions())
        except (ControlError, OSError):
            sessions = -1
        db_bytes, wal_bytes, rows = soak_report.database_figures(self.paths.database)
        sample = Sample(round(time.monotonic() - self.started, 1), phase, rss, anon, fds,
                        threads, sessions, db_bytes, wal_bytes, rows)
        self.samples.append(sample)
        with (self.out / "samples.jsonl").open("a") as f:
            f.write(json.dumps(sample.as_json()) + "\n")
        print(f"[soak] {sample.t / 60:6.1f} min {phase:<8} rss {rss / 1024:7.1f} MiB "
              f"anon {anon / 1024:7.1f} MiB fds {fds:4d} threads {threads:3d} "
              f"sessions {sessions:3d} leases {rows['addresslease']:3d} "
              f"db {db_bytes / 2**20:6.2f} MiB wal {wal_bytes / 2**20:5.2f} MiB "
              f"audit {rows['auditentry']}", flush=True)
        return sample

    def snapshot(self) -> None:
        """Ask the server for a heap snapshot and wait (bounded) for the file."""
        if not self.s.tracemalloc:
            return
        folder = self.paths.heap_snapshots
        before = set(folder.glob("*.tracemalloc")) if folder.exists() else set()
        os.kill(self.server.pid, signal.SIGUSR2)
        if wait_until(lambda: bool(set(folder.glob("*.tracemalloc")) - before)
                      if folder.exists() else False, SNAPSHOT_TIMEOUT_S, interval=1):
            self.snapshots.append(max(set(folder.glob("*.tracemalloc")) - before))
        else:
            print("[soak] the server wrote no heap snapshot in time", flush=True)

    # ------------------------------------------------------------------------------ run
    def run(self) -> dict[str, Any]:
        s = self.s
        self.prepare()
        self.start_portal_cycle()
        self.started = time.monotonic()
        load_end = self.started + s.minutes * 60
        warm_end = self.started + s.warmup * 60
        next_sample = next_snapshot = self.started
        last_spawn = time.time() - s.churn_every  # churn clients keep wall-clock times
        warm = False
        while (now := time.monotonic()) < load_end:
            self.tend_long(now)
            last_spawn = self.tend_churn(time.time(), last_spawn)
            if not warm and now >= warm_end:
                warm = True
                self.snapshot()
                next_snapshot = now + s.snapshot_every * 60
            elif warm and now >= next_snapshot:
                self.snapshot()
                next_snapshot = now + s.snapshot_every * 60
            if now >= next_sample:
                self.sample("load" if warm else "warmup")
                next_sample = now + s.sample_every
            time.sleep(1)
        self.sample("load")
        self.snapshot()
        self.stop_load()
        cool_end = time.monotonic() + s.cooldown * 60
        while time.monotonic() < cool_end:
            time.sleep(min(s.sample_every, max(0.0, cool_end - time.monotonic())))
            self.sample("cooldown")
        if s.cooldown:
            self.snapshot()
        return self.result()

    def result(self) -> dict[str, Any]:
        heap = []
        if len(self.snapshots) >= 2:
            heap.append(soak_report.heap_growth(self.snapshots[0], self.snapshots[-1]))
        return {
            "settings": self.s.__dict__,
            "growth": soak_report.growth(self.samples, self.s.floor_window * 60),
            "cooldown": soak_report.cooldown(self.samples),
            "clients": {**self.counts, **self._long_figures()},
            "portal": self._portal_figures(),
            "heap": heap,
            "snapshots": [str(p) for p in self.snapshots],
        }

    def _long_figures(self) -> dict[str, Any]:
        """Handshakes (first + renegotiations) and TLS errors seen by the long-lived clients."""
        good = errors = 0
        for log in self.work.glob("client-long*.log"):
            text = log.read_text(errors="replace")
            good += text.count("Control Channel: ")
            errors += text.count("TLS Error") + text.count("AUTH_FAILED")
        runs = [r for lc in self.long for r in lc.runs]
        ups = [r["up_mbps"] for r in runs if "up_mbps" in r]
        downs = [r["down_mbps"] for r in runs if "down_mbps" in r]
        return {"long_handshakes": good, "long_tls_errors": errors, "iperf_runs": len(runs),
                "iperf_up_mbps_median": statistics.median(ups) if ups else None,
                "iperf_down_mbps_median": statistics.median(downs) if downs else None}

    def _portal_figures(self) -> dict[str, Any]:
        """Cycles, errors, and each step's median ms in the first and last 10 minutes."""
        try:
            lines = [json.loads(x) for x in self.portal_log.read_text().splitlines()
                     if x.startswith("{")]
        except OSError:
            return {}
        good = [x for x in lines if "ms" in x]
        if not good:
            return {"cycles": len(lines), "errors": len(lines)}
        first_t, last_t = good[0]["t"], good[-1]["t"]
        early = [x["ms"] for x in good if x["t"] - first_t <= PORTAL_STEP_WINDOW_S]
        late = [x["ms"] for x in good if last_t - x["t"] <= PORTAL_STEP_WINDOW_S]
        steps = {}
        for name in good[0]["ms"]:
            a = [m[name] for m in early if name in m]
            b = [m[name] for m in late if name in m]
            if a and b:
                steps[name] = f"{statistics.median(a):.0f}->{statistics.median(b):.0f}ms"
        return {"cycles": len(lines), "errors": len(lines) - len(good), **steps}


def parse_args(argv: list[str] | None) -> tuple[SoakSettings, Path]:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=60, help="minutes of load")
    p.add_argument("--warmup", type=float, default=5, help="minutes left out of the growth")
    p.add_argument("--cooldown", type=float, default=10, help="idle minutes after the load")
    p.add_argument("--long", type=int, default=2, help="long-lived clients")
    p.add_argument("--rate", default="20M", help="iperf3 rate each way per long client")
    p.add_argument("--reneg", type=int, nargs=2, default=(30, 25), metavar=("MAX", "MIN"),
                   help="client --reneg-sec (OpenVPN picks in [MIN, MAX])")
    p.add_argument("--churn-every", type=float, default=20, help="seconds per new client")
    p.add_argument("--portal-every", type=float, default=10, help="seconds per portal cycle")
    p.add_argument("--sample-every", type=float, default=60, help="seconds per sample")
    p.add_argument("--tracemalloc", type=int, default=0, metavar="FRAMES",
                   help="serve --tracemalloc FRAMES, and compare its heap snapshots")
    p.add_argument("--snapshot-every", type=float, default=15, help="minutes per heap snapshot")
    p.add_argument("--floor-window", type=float, default=10, help="minutes per RSS floor point")
    p.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "sslvpn-soak")
    a = p.parse_args(argv)
    return SoakSettings(a.minutes, a.warmup, a.cooldown, a.long, a.rate, tuple(a.reneg),
                        a.churn_every, a.portal_every, a.sample_every, a.tracemalloc,
                        a.snapshot_every, a.floor_window), a.out


def main(argv: list[str] | None = None) -> int:
    settings, out = parse_args(argv)
    missing = [b for b in ("ip", "openvpn", "iperf3") if shutil.which(b) is None]
    if missing or os.geteuid() != 0:
        print(f"the soak needs root, ip, openvpn and iperf3; missing: {missing}", file=sys.stderr)
        return 2
    shutil.rmtree(out, ignore_errors=True)
    (out / "work").mkdir(parents=True)
    signal.signal(signal.SIGTERM, _terminate)
    lab = Lab()
    soak: Soak | None = None
    try:
        soak = Soak(lab, out / "work", out, settings)
        result = soak.run()
    except (KeyboardInterrupt, SystemExit, Exception) as exc:  # keep what was measured
        result = soak.result() if soak is not None else {}
        result["ended_by"] = f"{type(exc).__name__}: {exc}"
        print(f"[soak] stopped early: {result['ended_by']}", file=sys.stderr)
    finally:
        lab.close()
    (out / "summary.json").write_text(json.dumps(result, indent=2, default=str))
    if result.get("growth"):
        print("\n".join(soak_report.summary_lines(result)))
    print(f"\nwritten: {out / 'summary.json'}, {out / 'samples.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
