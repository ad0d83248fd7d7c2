"""IKE datagrams the IPsec service dropped, by reason and by source: attacks made visible.

Every IKE-side drop (malformed, unknown SPI, cookie required, unsupported critical payload,
authentication failed, throttled, ...) is counted under its reason and its source. Adding
costs two dict increments; memory is bounded (``MAX_SOURCES`` distinct sources, later ones
are counted as "other"). The counters are plain attributes read at any time: per tunnel for
`ipsec status --json`, service-wide for a /metrics scrape; ``summary()`` gives the
rate-limited log line with the top sources since the previous line.
"""

from __future__ import annotations

from collections import Counter

Address = tuple[str, int]

MAX_SOURCES = 256
TOP_SOURCES = 5


class DropLedger:
    """Drop counters by reason and source; ``with_port`` keys sources as "ip:port"."""

    def __init__(self, *, with_port: bool = False, parent: DropLedger | None = None) -> None:
        self._with_port = with_port
        self._parent = parent
        self.reasons: Counter[str] = Counter()
        self.sources: Counter[str] = Counter()
        self._recent_reasons: Counter[str] = Counter()
        self._recent_sources: Counter[str] = Counter()

    def count(self, reason: str, source: Address) -> None:
        key = f"{source[0]}:{source[1]}" if self._with_port else source[0]
        self.reasons[reason] += 1
        self._recent_reasons[reason] += 1
        _bounded_add(self.sources, key)
        _bounded_add(self._recent_sources, key)
        if self._parent is not None:
            self._parent.count(reason, source)

    def top_sources(self, count: int = TOP_SOURCES) -> dict[str, int]:
        return dict(self.sources.most_common(count))

    def summary(self) -> str | None:
        """What was dropped since the previous call, with the top sources; None if nothing."""
        if not self._recent_reasons:
            return None
        reasons = ", ".join(f"{r} {n}" for r, n in sorted(self._recent_reasons.items()))
        top = ", ".join(f"{s} ({n})" for s, n in self._recent_sources.most_common(TOP_SOURCES))
        self._recent_reasons = Counter()
        self._recent_sources = Counter()
        return f"{reasons}; top sources: {top}"


def _bounded_add(counter: Counter[str], key: str) -> None:
    if key not in counter and len(counter) >= MAX_SOURCES:
        key = "other"
    counter[key] += 1
