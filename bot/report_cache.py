"""Dashboard reports kept for a few minutes, per page, scope and date range.

At a million contacts a dashboard page reads a month of events: the funnels about 5 s, the content
leaderboard about 8 s. A manager moving between the pages and back, exporting a table as CSV, or two
managers of the same team opening the same page, would each wait that long again for the same numbers.
A report is computed once per `ttl_s` (`[pages] report_cache_s`); requests that arrive while it is being
computed wait for that computation instead of starting their own; the page says when its numbers were
counted. Each process keeps its own, bounded in size (least recently used goes first).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any

from cachetools import LRUCache


@dataclass(frozen=True)
class Counted:
    """A report's tables and when they were counted."""

    tables: Any
    at: dt.datetime


class ReportCache:
    def __init__(self, ttl_s: float, size: int = 256) -> None:
        self.ttl_s = ttl_s
        self._done: LRUCache[Hashable, Counted] = LRUCache(size)
        self._running: dict[Hashable, asyncio.Future[Counted]] = {}

    async def get(self, key: Hashable, now: dt.datetime, compute: Callable[[], Awaitable[Any]]) -> Counted:
        """The report under `key`: kept if counted less than `ttl_s` before `now`, else computed now.
        The computation runs as a task of its own: a request that gives up (its client went away)
        does not cancel it for the others waiting, and its result is kept."""
        if self.ttl_s <= 0:
            return Counted(await compute(), now)
        kept = self._done.get(key)
        if kept is not None and (now - kept.at).total_seconds() < self.ttl_s:
            return kept
        running = self._running.get(key)
        if running is None:
            running = self._running[key] = asyncio.ensure_future(self._count(key, now, compute))
            running.add_done_callback(lambda task: task.cancelled() or task.exception())  # a failure is retrieved
        return await asyncio.shield(running)

    async def _count(self, key: Hashable, now: dt.datetime, compute: Callable[[], Awaitable[Any]]) -> Counted:
        try:
            counted = Counted(await compute(), now)
        finally:
            del self._running[key]
        self._done[key] = counted
        return counted
