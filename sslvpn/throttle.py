"""Throttling failed logins per (account, source address) and per source address: the
portal's password and code steps and the VPN's two-factor check count their failures here.
No I/O; each process keeps its own counts.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

THROTTLE_WINDOW_SECONDS = 15 * 60
THROTTLE_ACCOUNT_FAILURES = 5
THROTTLE_ADDRESS_FAILURES = 20
Clock = Callable[[], float]


class LoginThrottle:
    """Counts failed logins per (account, source address) and per source address in a
    sliding window: wrong passwords for an account from elsewhere never lock its owner out,
    and one source cannot try many accounts.

    Only keys with failures in the window are kept (asking about a name stores nothing), so
    a stream of made-up account names cannot grow it beyond the failures of one window.
    """

    def __init__(
        self,
        clock: Clock = time.time,
        *,
        window: float = THROTTLE_WINDOW_SECONDS,
        per_account: int = THROTTLE_ACCOUNT_FAILURES,
        per_address: int = THROTTLE_ADDRESS_FAILURES,
    ) -> None:
        self._clock = clock
        self._window = window
        self._limits = {"pair": per_account, "address": per_address}
        self._failures: dict[tuple[str, str], deque[float]] = {}
        self._reported: dict[str, float] = {}  # address -> when its refusal was last audited

    @staticmethod
    def _keys(account: str, address: str) -> tuple[tuple[str, str], tuple[str, str]]:
        return ("pair", f"{account.lower()}\0{address}"), ("address", address)

    def _recent(self, key: tuple[str, str]) -> deque[float]:
        """Failures of this key in the window; a key left with none is forgotten."""
        stamps = self._failures.get(key)
        if stamps is None:
            return deque()
        cutoff = self._clock() - self._window
        while stamps and stamps[0] < cutoff:
            stamps.popleft()
        if not stamps:
            del self._failures[key]
        return stamps

    def blocked(self, account: str, address: str) -> bool:
        """True while this account from this address, or the address itself, has too many
        recent failures."""
        return self.wait(account, address) > 0

    def wait(self, account: str, address: str) -> float:
        """Seconds until this account may try again from this address (0: now)."""
        longest = 0.0
        for key in self._keys(account, address):
            stamps, limit = self._recent(key), self._limits[key[0]]
            if len(stamps) >= limit:  # free again when the failure that made it full leaves
                longest = max(longest, stamps[len(stamps) - limit] + self._window - self._clock())
        return longest

    def failed(self, account: str, address: str) -> None:
        now = self._clock()
        self._forget_stale(now)
        for key in self._keys(account, address):
            stamps = self._failures.pop(key, None) or deque()
            stamps.append(now)
            self._failures[key] = stamps  # re-inserted: the dict stays in order of last failure

    def _forget_stale(self, now: float) -> None:
        """Drop the keys whose last failure has left the window (they lead the dict)."""
        cutoff = now - self._window
        while self._failures:
            key, stamps = next(iter(self._failures.items()))
            if stamps and stamps[-1] >= cutoff:
                return
            del self._failures[key]

    def __len__(self) -> int:
        return len(self._failures)

    def first_refusal(self, address: str) -> bool:
        """True for the first refusal of an address in a window (the one to audit): a
        throttled source must not write the audit log once per try."""
        now = self._clock()
        while self._reported:  # in order of reporting: the stale ones lead
            oldest, at = next(iter(self._reported.items()))
            if at >= now - self._window:
                break
            del self._reported[oldest]
        if address in self._reported:
            return False
        self._reported[address] = now
        return True

    def unlocked(self, account: str, at: float) -> None:
        """An admin unlocked the account at ``at``: its failures before, from anywhere, stop
        counting for it (a source's own count stays)."""
        prefix = f"{account.lower()}\0"
        for (kind, key), stamps in self._failures.items():
            if kind == "pair" and key.startswith(prefix):
                while stamps and stamps[0] < at:
                    stamps.popleft()

    def succeeded(self, account: str, address: str) -> None:
        """A good password clears the account's count from this address (the address keeps
        its history)."""
        self._failures.pop(self._keys(account, address)[0], None)
