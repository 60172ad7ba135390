"""Rate limits: a token bucket per key (a client address, a login address, a link and browser)."""

from __future__ import annotations

from collections.abc import Hashable


class TokenBuckets:
    """A token bucket per key: bursts up to `per_minute`, refilled at `per_minute` a minute. At most
    `size` keys are remembered (the least recently seen is forgotten first, and starts full again).

    On every public page view (the per-address limit), so kept to a plain dict in recency order: a
    key seen again is moved to the end (pop and set), the oldest is the first. cachetools' LRUCache
    did the same with Python-level bookkeeping: 0.6 against 0.26 µs a call alone (the whole link
    open's cost did not move measurably, 233-238 against 236-240 µs in alternated runs)."""

    def __init__(self, per_minute: int, size: int = 200_000) -> None:
        self.per_minute = per_minute
        self.size = size
        self._rate = per_minute / 60.0
        self._buckets: dict[Hashable, tuple[float, float]] = {}

    def allow(self, key: Hashable, now: float) -> bool:
        """Whether one more request under `key` at `now` (seconds) is within the limit; it counts."""
        buckets = self._buckets
        held = buckets.pop(key, None)
        full = float(self.per_minute)
        tokens = full if held is None else min(full, held[0] + (now - held[1]) * self._rate)
        allowed = tokens >= 1.0
        buckets[key] = (tokens - 1.0 if allowed else tokens, now)
        if held is None and len(buckets) > self.size:
            del buckets[next(iter(buckets))]  # the least recently seen
        return allowed
