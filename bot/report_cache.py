"""Dashboard reports kept for a few minutes, per page, scope and date range.

At a million contacts a dashboard page of everyone's data (the admin's) reads a month of events: the
funnels about 5 s, the content leaderboard about 8 s (a rep's or a team's pages read their own rows by
index, in well under a second). Moving between the pages and back, exporting a table as CSV, or a
second viewer of the same scope opening the same page, would each wait that long again for the same numbers.
A report is computed once per `ttl_s` (`[pages] report_cache_s`); requests that arrive while it is being
computed wait for that computation instead of starting their own; the page says when its numbers were
counted. Past `ttl_s`, for `stale_s` more (`[pages] report_stale_s`), the report is shown as it was
at once while it is counted again in the background (the page says so): a manager coming back to a page
after a coffee does not wait those seconds again. Older than that, the request waits for a new count. Each
process keeps its own, bounded in size (least recently used goes first).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any

from cachetools import LRUCache

log = logging.getLogger("beacon.reports")


@dataclass(frozen=True)
class Counted:
    """A report's tables and when they were counted; `refreshing`: shown past its window while it is
    counted again in the background."""

    tables: Any
    at: dt.datetime
    refreshing: bool = False


class ReportCache:
    def __init__(self, ttl_s: float, size: int = 256, *, stale_s: float = 0.0) -> None:
        self.ttl_s = ttl_s
        self.stale_s = stale_s
        self._done: LRUCache[Hashable, Counted] = LRUCache(size)
        self._running: dict[Hashable, asyncio.Future[Counted]] = {}

    async def get(self, key: Hashable, now: dt.datetime, compute: Callable[[], Awaitable[Any]]) -> Counted:
        """The report under `key`: kept if counted less than `ttl_s` before `now`; kept and counted
        again in the background if less than `ttl_s + stale_s` before; else computed now.
        The computation runs as a task of its own: a request that gives up (its client went away)
        does not cancel it for the others waiting, and its result is kept."""
        if self.ttl_s <= 0:
            return Counted(await compute(), now)
        kept = self._done.get(key)
        age = float("inf") if kept is None else (now - kept.at).total_seconds()
        if kept is not None and age < self.ttl_s:
            return kept
        running = self._running.get(key)
        if running is None:
            running = self._running[key] = asyncio.ensure_future(self._count(key, now, compute))
            running.add_done_callback(lambda task: self._retrieved(key, task))
        if kept is not None and age < self.ttl_s + self.stale_s:
            return dataclasses.replace(kept, refreshing=True)
        return await asyncio.shield(running)

    async def close(self) -> None:
        """Cancel the counts in progress (the process is stopping: nobody will see them)."""
        running = list(self._running.values())
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    @staticmethod
    def _retrieved(key: Hashable, task: asyncio.Future[Counted]) -> None:
        """A failed count is retrieved; logged, since nobody may be waiting for it (a background recount)."""
        if not task.cancelled() and task.exception() is not None:
            log.warning("counting report %r failed: %s", key[0] if isinstance(key, tuple) and key else key, task.exception())

    async def _count(self, key: Hashable, now: dt.datetime, compute: Callable[[], Awaitable[Any]]) -> Counted:
        try:
            counted = Counted(await compute(), now)
        finally:
            del self._running[key]
        self._done[key] = counted
        return counted
