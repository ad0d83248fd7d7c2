"""Token bucket bandwidth cap and the operator's rate notation."""

from __future__ import annotations

import pytest

from sslvpn.ipsec.bandwidth import TokenBucket, format_rate, parse_rate


@pytest.mark.parametrize(
    ("text", "bps"),
    [("100M", 100_000_000), ("1G", 10**9), ("1.5Gbps", 1_500_000_000), ("250k", 250_000),
     ("64000", 64_000), (" 10 mbit/s ", 10_000_000)],
)
def test_parse_rate(text: str, bps: int) -> None:
    assert parse_rate(text) == bps


@pytest.mark.parametrize("text", ["fast", "-1M", "10X", "", "12"])
def test_parse_rate_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="bandwidth"):
        parse_rate(text)


def test_format_rate() -> None:
    assert [format_rate(v) for v in (None, 10**9, 1_500_000_000, 100_000_000, 500)] == [
        "unlimited", "1G", "1.5G", "100M", "500"
    ]


def test_bucket_admits_the_rate_over_time_and_counts_drops() -> None:
    bucket = TokenBucket(8_000_000, burst_bytes=10_000, now=0.0)  # 1 MB/s
    admitted = 0
    now = 0.0
    for _ in range(20_000):  # offer 1000-byte packets at 2 MB/s for 10 s
        if bucket.allow(1000, now):
            admitted += 1000
        now += 0.0005
    assert 10_000_000 <= admitted <= 10_000_000 + 10_000 + 1000
    assert bucket.dropped_packets == 20_000 - admitted // 1000
    assert bucket.dropped_bytes == bucket.dropped_packets * 1000


def test_bucket_burst_is_bounded_after_idle() -> None:
    bucket = TokenBucket(8_000, burst_bytes=3000, now=0.0)
    assert [bucket.allow(1000, 100.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.allow(1000, 100.1)  # 100 bytes refilled only
    assert bucket.allow(1000, 101.0)
    with pytest.raises(ValueError):
        TokenBucket(0)
