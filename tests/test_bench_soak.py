"""The soak's arithmetic: growth per hour over the loaded samples only, the RSS floor ignores
peaks, and two heap snapshots name the line whose allocations grew."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

from bench.soak_report import Sample, growth, heap_growth, slope_per_hour


def _sample(t: float, phase: str, rss: int) -> Sample:
    return Sample(t, phase, rss, rss, 20, 8, 2, 1000 + int(t), 0, {"auditentry": int(t) // 36})


def test_growth_is_per_hour_over_the_load_and_the_floor_skips_peaks() -> None:
    samples = [_sample(t, "warmup", 1) for t in (0, 60)]
    for minute in range(2, 62):
        peak = 50_000 if minute % 7 == 0 else 0  # e.g. a password hash's 64 MiB for a moment
        samples.append(_sample(minute * 60.0, "load", 100_000 + minute * 10 + peak))
    samples.append(_sample(4000, "cooldown", 0))
    g = growth(samples, window_s=600)
    assert round(g["rss_floor_kib"]["per_hour"]) == 600  # 10 KiB a minute
    assert round(g["db_bytes"]["per_hour"]) == 3600
    assert round(g["rows.auditentry"]["per_hour"]) == 100
    assert g["fds"]["per_hour"] == 0 and g["rss_kib"]["first"] == 100_020


def test_a_slope_needs_three_points() -> None:
    assert slope_per_hour([(0, 1), (3600, 2)]) is None
    assert slope_per_hour([(0, 1), (1800, 1.5), (3600, 2)]) == 1


def test_heap_growth_names_the_line_that_grew(tmp_path: Path) -> None:
    kept: list[bytes] = []
    tracemalloc.start(1)
    try:
        tracemalloc.take_snapshot().dump(str(tmp_path / "first"))
        kept.extend(bytes(1000) + bytes([i % 256]) for i in range(500))  # the "leak"
        tracemalloc.take_snapshot().dump(str(tmp_path / "last"))
    finally:
        tracemalloc.stop()
    report = heap_growth(tmp_path / "first", tmp_path / "last", top=3)
    top = report["top_lines"][0]
    assert top["where"].startswith(__file__) and top["size_diff_kib"] >= 490
    assert report["traced_last_kib"] > report["traced_first_kib"]
