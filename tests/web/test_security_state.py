"""The portal's in-memory state stays as small as its live users: stale login failures are
dropped as new ones arrive, instead of piling up for the process's life (a soak's login cycle
grew the heap with every visit to the login page). Sessions live in the store
(tests/web/test_sessions.py)."""

from __future__ import annotations

from web.security import THROTTLE_WINDOW_SECONDS, LoginThrottle

from .conftest import Clock


def test_the_throttle_keeps_only_keys_with_failures_in_the_window() -> None:
    clock = Clock(now=1_000_000.0)
    throttle = LoginThrottle(clock)
    for i in range(1000):  # asking stores nothing
        assert not throttle.blocked(f"nobody{i}", f"198.18.{i // 250}.{i % 250}")
    assert len(throttle) == 0
    throttle.failed("old", "198.18.0.1")
    throttle.failed("busy", "198.18.0.2")
    clock.now += THROTTLE_WINDOW_SECONDS - 60
    throttle.failed("busy", "198.18.0.2")  # "busy" keeps failing, "old" does not
    clock.now += 120
    throttle.failed("new", "198.18.0.3")
    assert len(throttle) == 4  # busy and new, by account and by address
    assert not throttle.blocked("old", "198.18.0.1")
    for _ in range(4):
        throttle.failed("busy", "198.18.0.2")
    assert throttle.blocked("busy", "198.18.0.9")  # still counted per account
