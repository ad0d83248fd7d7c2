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
    assert len(throttle) == 4  # busy and new, by (account, address) and by address
    assert not throttle.blocked("old", "198.18.0.1")
    for _ in range(4):
        throttle.failed("busy", "198.18.0.2")
    assert throttle.blocked("busy", "198.18.0.2")  # still counted for that pair


def test_wrong_passwords_from_elsewhere_do_not_lock_the_owner_out() -> None:
    """Throttled by (account, source) and by source, not by account alone; the wait said is
    the real one."""
    clock = Clock(now=1_000_000.0)
    throttle = LoginThrottle(clock)
    for _ in range(5):
        throttle.failed("alice", "203.0.113.66")
        clock.now += 10
    assert throttle.blocked("alice", "203.0.113.66")
    assert not throttle.blocked("alice", "198.51.100.7")  # the owner, from her own address
    assert throttle.wait("alice", "203.0.113.66") == THROTTLE_WINDOW_SECONDS - 50
    throttle.unlocked("alice", clock.now)
    assert not throttle.blocked("alice", "203.0.113.66")
    for i in range(20):  # one source trying many accounts
        throttle.failed(f"user{i}", "203.0.113.66")
    assert throttle.blocked("bob", "203.0.113.66") and not throttle.blocked("bob", "192.0.2.1")
