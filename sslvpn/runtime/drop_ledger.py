"""What the IPsec service dropped, by reason and by source: attacks made visible.

Every IKE-side drop (malformed, unknown SPI, cookie required, unsupported critical payload,
authentication failed, throttled, ...) and every data-path drop (ESP with a bad ICV, a
replay, an unknown SPI, no policy, over the bandwidth cap, ...) is counted under its reason
and its source. Adding costs a few dict increments; memory is bounded even when every packet
claims another source (a spoofed flood): a table that reaches ``MAX_SOURCES`` keeps its
busiest half and folds the rest into "other", so heavy sources stay visible and the cost
stays amortised O(1). The counters are plain attributes read at any time: per tunnel for
`ipsec status --json`, service-wide for a /metrics scrape; ``summary()`` gives the
rate-limited log line with the top sources since the previous line.
"""

from __future__ import annotations

from collections import Counter

Address = tuple[str, int]

MAX_SOURCES = 256
TOP_SOURCES = 5
OTHER = "other"  # the sources folded together to keep the table small


class DropLedger:
    """Drop counters by reason and source; ``with_port`` keys sources as "ip:port"."""

    def __init__(self, *, with_port: bool = False, parent: DropLedger | None = None) -> None:
        self._with_port = with_port
        self._parent = parent
        self.reasons: Counter[str] = Counter()
        self.sources: Counter[str] = Counter()
        self._recent_reasons: Counter[str] = Counter()
        self._recent_sources: Counter[str] = Counter()

    def count(self, reason: str, source: Address | str) -> None:
        """One drop; ``source`` is (address, port), or already a key (an inner address)."""
        if isinstance(source, str):
            key = source
        else:
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
        keep = dict(counter.most_common(MAX_SOURCES // 2))
        folded = counter.total() - sum(keep.values())
        counter.clear()
        counter.update(keep)
        counter[OTHER] += folded
    counter[key] += 1
