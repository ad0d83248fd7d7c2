"""Sliding anti-replay window shared by the OpenVPN data channel, tls-crypt and ESP.

Semantics follow RFC 4303 section 3.4.3 (and RFC 6479's intent): sequence numbers start at
1 (0 is always a replay), anything newer than the highest seen is accepted and slides the
window, anything inside the window is accepted once, anything older is too old. The check
and the update are separate so that callers update only after the packet authenticated.
"""

from __future__ import annotations

from enum import Enum


class ReplayVerdict(Enum):
    FRESH = "fresh"
    REPLAYED = "replayed"
    TOO_OLD = "too-old"


class ReplayWindow:
    """Bitmap window: bit i set means sequence number ``top - i`` was already accepted."""

    __slots__ = ("size", "top", "_bits", "_mask")

    def __init__(self, size: int = 64) -> None:
        if size < 1:
            raise ValueError("replay window size must be positive")
        self.size = size
        self.top = 0
        self._bits = 0
        self._mask = (1 << size) - 1

    def check(self, seq: int) -> ReplayVerdict:
        """Whether ``seq`` may be accepted; changes nothing."""
        if seq <= 0:
            return ReplayVerdict.REPLAYED
        if seq > self.top:
            return ReplayVerdict.FRESH
        offset = self.top - seq
        if offset >= self.size:
            return ReplayVerdict.TOO_OLD
        if (self._bits >> offset) & 1:
            return ReplayVerdict.REPLAYED
        return ReplayVerdict.FRESH

    def update(self, seq: int) -> None:
        """Record ``seq`` as accepted; call only after ``check`` said FRESH and it authenticated."""
        if seq > self.top:
            shift = seq - self.top
            self._bits = ((self._bits << shift) | 1) & self._mask if shift < self.size else 1
            self.top = seq
        else:
            self._bits |= 1 << (self.top - seq)

    def accept(self, seq: int) -> bool:
        """Check and update in one step, for callers whose packet already authenticated."""
        if self.check(seq) is not ReplayVerdict.FRESH:
            return False
        self.update(seq)
        return True
