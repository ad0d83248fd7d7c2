"""The scale phase's notes: each stage's CPU per session counts only the sessions that
stage brought up, for the server and the load generator alike."""

from __future__ import annotations

from typing import Any

from bench.report import Report
from bench.scale_phase import ScaleSettings, _record


def _stage(n: int, established: int, server_cpu: float, loadgen_cpu: float) -> dict[str, Any]:
    return {"stage": n, "established": established, "live": established, "rate": 50.0,
            "rss_kib": 1024 * n, "hwm_kib": 1024 * n, "server_cpu_s": server_cpu,
            "loadgen_cpu_s": loadgen_cpu, "loadgen_processes": 1}


def test_cpu_per_session_is_over_the_sessions_each_stage_brought_up() -> None:
    report = Report()
    stages = [_stage(0, 0, 0.0, 0.0), _stage(1000, 1000, 2.8, 1.7),
              _stage(12000, 11000, 55.0, 33.0)]
    _record(report, "ours", stages, ScaleSettings(sizes=(1000, 12000), burst=1000))
    first, second = (n for n in report.notes if "per session brought up" in n)
    assert "stage 1000:" in first and "server 2.8 ms, load generator 1.7 ms" in first
    assert "stage 12000:" in second and "server 5.5 ms, load generator 3.3 ms" in second
