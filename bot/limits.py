"""Rate limits: a token bucket per key (a client address, a login address, a link and browser)."""

from __future__ import annotations

from collections.abc import Hashable

from cachetools import LRUCache


class TokenBuckets:
    """A token bucket per key: bursts up to `per_minute`, refilled at `per_minute` a minute. At most
    `size` keys are remembered (the least recently seen is forgotten first, and starts full again)."""

    def __init__(self, per_minute: int, size: int = 200_000) -> None:
        self.per_minute = per_minute
        self._buckets: LRUCache[Hashable, tuple[float, float]] = LRUCache(size)

    def allow(self, key: Hashable, now: float) -> bool:
        """Whether one more request under `key` at `now` (seconds) is within the limit; it counts."""
        tokens, last = self._buckets.get(key, (float(self.per_minute), now))
        tokens = min(float(self.per_minute), tokens + (now - last) * self.per_minute / 60.0)
        allowed = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
        return allowed
