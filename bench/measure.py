"""The measurements: iperf3 throughput with server CPU, ping RTT, and handshake timing.

CPU is read from ``/proc/<pid>/stat`` (utime + stime, threads included) summed over the
server's whole process tree, so a server with worker processes is charged for all of them.
"Core-seconds per Gbit" divides that CPU time by the bits iperf3 actually received: on a
2-core machine where the client and iperf3 share the CPU, it is the honest efficiency figure.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.lab import Namespace

CLK_TCK = os.sysconf("SC_CLK_TCK")
IPERF_MODES: dict[str, tuple[str, ...]] = {
    "1x up": (), "4x up": ("-P", "4"), "1x down": ("-R",), "4x down": ("-R", "-P", "4"),
}
_RTT = re.compile(r"time=([0-9.]+) ms")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()  # after "pid (comm) "


def process_tree(root: int) -> list[int]:
    """The root pid and all its descendants alive now."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes (all their threads), in seconds."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / CLK_TCK


def rss_kib(pid: int) -> int:
    """Resident set size of one process, KiB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass(frozen=True)
class IperfResult:
    mbps: float
    retransmits: int
    server_cpu_pct: float  # of one core, averaged over the run
    core_s_per_gbit: float | None  # None without a server process (the raw path)


class IperfError(RuntimeError):
    """iperf3 reported an error instead of a result."""


def iperf(client_ns: Namespace, target: str, mode: str, seconds: float,
          server_root: int | None) -> IperfResult:
    """One iperf3 TCP run (CUBIC pinned) with the server process tree's CPU alongside."""
    pids = process_tree(server_root) if server_root is not None else []
    cpu0, wall0 = cpu_seconds(pids), time.monotonic()
    out = client_ns.run("iperf3", "-c", target, "-t", str(seconds), "-J", "-C", "cubic",
                        "--connect-timeout", "5000", *IPERF_MODES[mode], check=False,
                        timeout=seconds + 30)
    cpu, wall = cpu_seconds(pids) - cpu0, time.monotonic() - wall0
    parsed: dict[str, Any] = json.loads(out) if out.strip() else {"error": "no output"}
    if "error" in parsed:
        raise IperfError(str(parsed["error"]))
    end = parsed["end"]
    received = end["sum_received"]
    gbit = received["bytes"] * 8 / 1e9
    return IperfResult(
        mbps=received["bits_per_second"] / 1e6,
        retransmits=int(end["sum_sent"].get("retransmits", 0)),
        server_cpu_pct=100.0 * cpu / wall if pids else 0.0,
        core_s_per_gbit=cpu / gbit if pids and gbit > 0 else None,
    )


def ping_rtts(ns: Namespace, target: str, count: int, interval: float = 0.01) -> list[float]:
    """Per-packet RTTs (ms) of ``count`` pings; lost ones are simply absent."""
    out = ns.run("ping", "-n", "-c", str(count), "-i", f"{interval:g}", "-W", "2", target,
                 check=False, timeout=count * (interval + 0.1) + 30)
    return [float(m) for m in _RTT.findall(out)]


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def completed_at(log: Path, needle: str) -> float | None:
    """The timestamp of the first log line containing ``needle`` (--machine-readable-output)."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return None
    for line in lines:
        if needle in line:
            try:
                return float(line.split(" ", 1)[0])
            except ValueError:
                return None
    return None
