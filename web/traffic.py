"""Traffic history for the dashboard chart: gateway byte counters turned into bytes/s."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from sslvpn.runtime.control import TrafficSample

HISTORY_POINTS = 120


@dataclass(frozen=True)
class RatePoint:
    """Average rates between two consecutive samples, stamped with the later one."""

    at: float  # unix seconds
    in_bps: float  # bytes/s from clients into the VPC
    out_bps: float


class TrafficHistory:
    """A bounded window of rate points computed from monotonic byte totals."""

    def __init__(self, points: int = HISTORY_POINTS) -> None:
        self._last: TrafficSample | None = None
        self._points: deque[RatePoint] = deque(maxlen=points)

    def add(self, sample: TrafficSample) -> None:
        """Feed a new total; a counter that went backwards (gateway restart) restarts rates."""
        last, self._last = self._last, sample
        if last is None:
            return
        seconds = (sample.at - last.at).total_seconds()
        delta_in = sample.bytes_in - last.bytes_in
        delta_out = sample.bytes_out - last.bytes_out
        if seconds <= 0 or delta_in < 0 or delta_out < 0:
            return
        self._points.append(
            RatePoint(sample.at.timestamp(), delta_in / seconds, delta_out / seconds)
        )

    def points(self) -> list[RatePoint]:
        return list(self._points)
