"""What a soak run measured: the server's samples, growth per hour, and tracemalloc growth.

A sample is one reading of the server process (RSS, anonymous RSS, fds, threads), its live
sessions and the database (file sizes and row counts). Growth per hour is the least-squares
slope over the loaded part of the run after the warm-up; the RSS *floor* is the lowest RSS of
each window (10 minutes by default), so short peaks (a burst of handshakes, a page render)
do not count as growth, and its slope is the figure to compare between runs. Heap snapshots
(`serve --tracemalloc N` writes them on SIGUSR2) are compared by
source line: what grew between two snapshots, biggest first; ``python -m bench.soak_report
FIRST LAST`` prints that for any two snapshots of a run.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import tracemalloc
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

TABLES = ("auditentry", "vpnsessionrecord", "addresslease", "user", "certificate",
          "importtoken")
HOUR = 3600.0


@dataclass(frozen=True)
class Sample:
    t: float  # seconds since the load started
    phase: str  # "warmup" | "load" | "cooldown"
    rss_kib: int
    anon_kib: int
    fds: int
    threads: int
    sessions: int
    db_bytes: int  # the database file (its WAL apart: it grows to a checkpoint's size, then
    wal_bytes: int  # is reused, so it would hide the file's own growth in the first hour)
    rows: dict[str, int]

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def process_status(pid: int) -> tuple[int, int, int, int]:
    """VmRSS and RssAnon (KiB), open fds and threads of one process; zeros when it is gone."""
    fields: dict[str, str] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            fields[key] = value.strip()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0, 0, 0, 0
    rss, anon = (int(fields.get(key, "0 kB").split()[0]) for key in ("VmRSS", "RssAnon"))
    return rss, anon, fds, int(fields.get("Threads", "0"))


def database_figures(path: Path) -> tuple[int, int, dict[str, int]]:
    """Bytes of the file and of its WAL, and rows per table (through a read-only connection)."""
    size, wal = (p.stat().st_size if p.exists() else 0 for p in (path, Path(f"{path}-wal")))
    rows: dict[str, int] = {}
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        for table in TABLES:
            rows[table] = connection.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]  # noqa: S608 - fixed names
    finally:
        connection.close()
    return size, wal, rows


def slope_per_hour(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) points, per hour; None under 3 points."""
    if len(points) < 3:
        return None
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    if spread == 0:
        return None
    return HOUR * sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread


def floor_points(samples: list[Sample], window_s: float) -> list[tuple[float, float]]:
    """The lowest RSS (KiB) of each window, at the time it was seen."""
    windows: dict[int, list[Sample]] = {}
    for s in samples:
        windows.setdefault(int(s.t // window_s), []).append(s)
    lowest = [min(group, key=lambda s: s.rss_kib) for _, group in sorted(windows.items())]
    return [(s.t, float(s.rss_kib)) for s in lowest]


def growth(samples: list[Sample], window_s: float) -> dict[str, Any]:
    """Per-hour growth of every figure over the loaded samples, with first and last values."""
    loaded = [s for s in samples if s.phase == "load"]
    series: dict[str, list[tuple[float, float]]] = {
        "rss_kib": [(s.t, s.rss_kib) for s in loaded],
        "anon_kib": [(s.t, s.anon_kib) for s in loaded],
        "rss_floor_kib": floor_points(loaded, window_s),
        "fds": [(s.t, s.fds) for s in loaded],
        "threads": [(s.t, s.threads) for s in loaded],
        "sessions": [(s.t, s.sessions) for s in loaded],
        "db_bytes": [(s.t, s.db_bytes) for s in loaded],
        "wal_bytes": [(s.t, s.wal_bytes) for s in loaded],
        **{f"rows.{t}": [(s.t, s.rows.get(t, 0)) for s in loaded] for t in TABLES},
    }
    return {name: {"first": points[0][1] if points else None,
                   "last": points[-1][1] if points else None,
                   "per_hour": slope_per_hour(points)}
            for name, points in series.items()}


def cooldown(samples: list[Sample]) -> dict[str, Any] | None:
    """RSS at the end of the load and at the end of the idle cool-down (does memory return?)."""
    loaded = [s for s in samples if s.phase == "load"]
    idle = [s for s in samples if s.phase == "cooldown"]
    if not loaded or not idle:
        return None
    return {"rss_end_of_load_kib": loaded[-1].rss_kib, "rss_after_cooldown_kib": idle[-1].rss_kib,
            "floor_of_load_kib": min(s.rss_kib for s in loaded),
            "sessions_after_cooldown": idle[-1].sessions, "fds_after_cooldown": idle[-1].fds,
            "threads_after_cooldown": idle[-1].threads}


def heap_growth(first: Path, last: Path, top: int = 15) -> dict[str, Any]:
    """Traced totals of two snapshots and the source lines whose allocations grew most."""
    old, new = tracemalloc.Snapshot.load(str(first)), tracemalloc.Snapshot.load(str(last))
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__),
              tracemalloc.Filter(False, "<frozen importlib._bootstrap*>")]
    old, new = old.filter_traces(ignore), new.filter_traces(ignore)
    by_line = new.compare_to(old, "lineno")
    by_trace = new.compare_to(old, "traceback")
    return {
        "first": first.name, "last": last.name,
        "traced_first_kib": sum(s.size for s in old.statistics("filename")) // 1024,
        "traced_last_kib": sum(s.size for s in new.statistics("filename")) // 1024,
        "top_lines": [{"where": str(d.traceback[0]), "size_diff_kib": round(d.size_diff / 1024, 1),
                       "count_diff": d.count_diff, "size_kib": round(d.size / 1024, 1)}
                      for d in by_line[:top]],
        "top_tracebacks": [{"size_diff_kib": round(d.size_diff / 1024, 1),
                            "count_diff": d.count_diff,
                            "frames": [str(f) for f in d.traceback.format()[-12:]]}
                           for d in by_trace[:3]],
    }


def summary_lines(result: dict[str, Any]) -> list[str]:
    """The human part of the report: growth per hour, cool-down, portal steps, heap growth."""
    lines = ["figure                      first        last    per hour"]
    for name, g in result["growth"].items():
        rate = g["per_hour"]
        lines.append(f"{name:<24} {_num(g['first']):>10} {_num(g['last']):>11} "
                     f"{'n/a' if rate is None else f'{rate:+.1f}':>11}")
    if result.get("cooldown"):
        lines.append("cool-down: " + ", ".join(f"{k}={v}" for k, v in result["cooldown"].items()))
    for key in ("clients", "portal"):
        if result.get(key):
            lines.append(f"{key}: " + ", ".join(f"{k}={v}" for k, v in result[key].items()))
    for heap in result.get("heap", []):
        lines.append(f"heap {heap['first']} -> {heap['last']}: traced "
                     f"{heap['traced_first_kib']} -> {heap['traced_last_kib']} KiB; grew most:")
        lines.extend(f"  {d['size_diff_kib']:+9.1f} KiB {d['count_diff']:+7d} blocks  {d['where']}"
                     for d in heap["top_lines"])
    return lines


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak_report",
                                     description="What grew between two heap snapshots.")
    parser.add_argument("first", type=Path)
    parser.add_argument("last", type=Path)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args(argv)
    print("\n".join(summary_lines({"growth": {}, "heap": [heap_growth(args.first, args.last,
                                                                    args.top)]})[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
