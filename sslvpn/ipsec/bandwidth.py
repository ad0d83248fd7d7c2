"""Per-VPN-gateway bandwidth cap: a token bucket in bits, with time passed in.

Cloud gateways sell a rate ("100 Mbps", "1.25 Gbps"); the data path asks `allow(size, now)`
per packet and drops what exceeds the rate beyond a short burst, like a policer. Parsing of
the operator's rate notation lives here too so the CLI and the portal read it the same way.
"""

from __future__ import annotations

import math
import re

DEFAULT_BURST_SECONDS = 0.05  # burst = 50 ms at the configured rate (TCP-friendly policer)
MIN_BURST_BYTES = 64 * 1024  # a burst never smaller than a GSO-sized batch of packets

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:bps|bit/s|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def parse_rate(text: str) -> int:
    """Bits per second from "100M", "1G", "1.5Gbps", "250000" (decimal SI units)."""
    match = _RATE.match(text)
    if match is None:
        raise ValueError(f"bandwidth {text!r} is not a rate like 100M or 1G")
    bits = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if not math.isfinite(bits):  # hundreds of digits: float says inf, int() would raise
        raise ValueError(f"bandwidth {text[:40]!r} is far above any link")
    if bits < 1000:
        raise ValueError(f"bandwidth {text!r} is below 1 kbit/s")
    return int(bits)


def format_rate(bps: int | None) -> str:
    """Short human form ("100M", "1.5G", "unlimited") for listings."""
    if bps is None:
        return "unlimited"
    for unit, factor in (("T", 10**12), ("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if bps >= factor:
            return f"{bps / factor:g}{unit}"
    return str(bps)


class TokenBucket:
    """Admits bytes at ``rate_bps`` on average with a burst of ``burst_bytes``."""

    __slots__ = ("rate", "burst", "tokens", "stamp", "dropped_packets", "dropped_bytes")

    def __init__(self, rate_bps: int, *, burst_bytes: int | None = None, now: float = 0.0) -> None:
        if rate_bps <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate_bps / 8.0  # bytes per second
        default_burst = max(MIN_BURST_BYTES, int(self.rate * DEFAULT_BURST_SECONDS))
        self.burst = float(burst_bytes if burst_bytes is not None else default_burst)
        self.tokens = self.burst
        self.stamp = now
        self.dropped_packets = 0
        self.dropped_bytes = 0

    def allow(self, size: int, now: float) -> bool:
        """Take ``size`` bytes if available at ``now``; a refusal is counted as a drop."""
        elapsed = now - self.stamp
        if elapsed > 0:
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
            self.stamp = now
        if self.tokens >= size:
            self.tokens -= size
            return True
        self.dropped_packets += 1
        self.dropped_bytes += size
        return False
