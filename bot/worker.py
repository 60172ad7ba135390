"""The loop shared by the background workers (inbox, outbox, tracker): drain what is due, then sleep
until woken or the poll interval passes; stop between units of work when asked.

Stopping is cooperative. `Runtime.stop` asks every worker to stop and gives them a grace period to
finish the row or batch in hand; only a worker still busy after that is cancelled. A task cancelled in
the middle of a database round trip can leave its connection unusable (with asyncpg, sometimes with
its transaction still open on the server, holding row locks the shutdown itself then waits for), so
cancelling is the last resort, not the way to stop.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from contextlib import suppress
from typing import Any, Awaitable, Callable

from bot.clock import sleep_unless
from bot.db import unavailable_reason

OUTAGE_LOG_EVERY_S = 60.0


class PollingWorker(ABC):
    name = "worker"
    poll_s = 1.0
    # At least this long between the end of a pass that found work and the start of the next, so that
    # what arrives meanwhile joins it: under a steady stream of work a pass then takes what came in that
    # time, rather than the one or two units that arrived while the last pass ran (a pass's fixed cost
    # dwarfs a unit's). Work that wakes a worker with nothing to do for longer than this goes at once.
    # 0: always at once.
    settle_s = 0.0

    def __init__(self, runtime: Any) -> None:
        self.rt = runtime
        self._wake = asyncio.Event()
        self._stopping = False
        self._stop_requested = asyncio.Event()

    # The channel on which other processes wake this kind of worker (bot/notify.py), if any.
    channel: str | None = None

    def runs_here(self) -> bool:
        """Whether this process runs this kind of worker (and so listens on its channel)."""
        return True

    def runs_elsewhere(self) -> bool:
        """Whether work this process stores for it may be taken by another process's worker."""
        return False

    def wake(self) -> None:
        """Work was stored for this kind of worker: start a pass here, and, where another process's
        worker takes it (PostgreSQL), wake that one too (bot/notify.py)."""
        self._wake.set()
        if self.channel is not None and self.rt.cross_wake is not None and self.runs_elsewhere():
            self.rt.cross_wake.notify(self.channel)

    def wake_here(self) -> None:
        """Start a pass of this process's worker only (another process's NOTIFY calls this)."""
        self._wake.set()

    def request_stop(self) -> None:
        """Finish the unit of work in hand, then return from `run`."""
        self._stopping = True
        self._stop_requested.set()
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._stopping

    async def rest(self, seconds: float) -> None:
        """Wait `seconds`, or less when a stop is requested meanwhile."""
        await sleep_unless(self._stop_requested, seconds)

    async def give_way(self, worked: float) -> float:
        """After work that took `worked` seconds, leave the core to the edge requests in progress
        (bot.edge.EdgeLoad.give_way), but not past a stop request. Returns how long it waited."""
        return await self.rt.edge.give_way(worked, stop=self._stop_requested)

    async def unless_stopping(self, work: Awaitable[Any]) -> tuple[bool, Any]:
        """Run `work`, but give it up when a stop is requested: (True, its result) or (False, None).
        Its exception, if it fails, is raised here. Only for work that holds no database transaction
        (a call to WeCom that may sit in retries for seconds): cancelling a task in the middle of a
        database round trip is what stopping cooperatively avoids."""
        task = asyncio.ensure_future(work)
        stop = asyncio.ensure_future(self._stop_requested.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            stop.cancel()
        if task.done():
            return True, task.result()
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
        return False, None

    async def drain_claimed(self, model: Any, *, lease_s: float, limit: int,
                            handle: Callable[[list[int]], Awaitable[int]]) -> int:
        """Claim due rows of a work table (inbox, outbox) `limit` at a time and `handle` them, until none
        is due; returns how many were handled. `handle(ids)` works through the claimed ids in order and
        returns how many it handled: fewer than all when a stop was asked for (it checks `stopping`
        between rows) or when it gave a row up. The rows claimed but not handled are then handed back
        at once, so the next start need not wait out their lease."""
        from bot.leases import claim, unclaim

        rt = self.rt
        handled = 0
        while not self.stopping:
            async with rt.sessions() as session, session.begin():
                ids = await claim(session, model, now=rt.clock.now(), lease_s=lease_s, limit=limit)
            if not ids:
                break
            done = await handle(ids)
            handled += done
            if done < len(ids):
                await unclaim(rt, model, ids[done:])
                return handled
        return handled

    async def one_by_one(self, ids: list[int], handle: Callable[[int], Awaitable[bool | None]]) -> int:
        """A `drain_claimed` handler from one that takes a row at a time and returns False when it gave
        its row up."""
        for n, item_id in enumerate(ids):
            if self.stopping or await handle(item_id) is False:
                return n
        return len(ids)

    @abstractmethod
    async def drain(self) -> int:
        """Handle what is due now (checking `stopping` between units); returns how many were handled."""

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        metrics = getattr(self.rt, "metrics", None)
        outage = Outage(self.name, logging.getLogger(f"beacon.{self.name}"),
                        metrics.worker_failed_passes if metrics is not None else None)
        busy_until = -self.settle_s  # when the last pass that found work (or failed) ended
        while not self._stopping:
            # Cleared before the pass, not after: work that arrives while a pass runs, after it looked,
            # wakes the next one (cleared after, that wake-up would be lost until `poll_s`).
            self._wake.clear()
            try:
                handled = await self.drain()
            except Exception as exc:
                outage.failed(exc, loop.time())
                handled = 0
                busy_until = loop.time()  # a failed pass settles too: wake-ups must not make it a busy loop
            else:
                outage.passed(loop.time())
            if handled:
                busy_until = loop.time()
            if not handled and not self._stopping:
                await sleep_unless(self._wake, self.poll_s)
            # The rest of the settling time after the last pass that found work (or failed): all of it
            # right after such a pass, none once the worker has had nothing to do for that long (the
            # first unit after a quiet spell is handled at once). Passes that found nothing do not count.
            await self.rest(busy_until + self.settle_s - loop.time())


class Outage:
    """How a worker logs its failed passes. A pass that failed because the database cannot serve (a
    restart, a failover, SQLite's lock held elsewhere: bot.db.unavailable_reason) is retried at the next
    poll, so a minute's outage would log a traceback every second per worker: it gets one warning line
    when it starts, one every OUTAGE_LOG_EVERY_S while it lasts (with the count), and one when a pass
    succeeds again. Any other failure is logged with its traceback, every time."""

    def __init__(self, name: str, log: logging.Logger, counter: Any = None) -> None:
        self.name, self.log, self.counter = name, log, counter  # counter: beacon_worker_failed_passes
        self.failures = 0  # passes failed in a row for want of the database
        self.since = 0.0
        self.logged_at = 0.0

    def failed(self, exc: Exception, now: float) -> None:
        reason = unavailable_reason(exc)
        if self.counter is not None:
            self.counter.labels(worker=self.name, cause="error" if reason is None else "database").inc()
        if reason is None:
            self.log.exception("%s pass failed", self.name)
            return
        self.failures += 1
        if self.failures == 1:
            self.since = self.logged_at = now
            self.log.warning("%s pass failed: %s; retrying at every poll", self.name, reason)
        elif now - self.logged_at >= OUTAGE_LOG_EVERY_S:
            self.logged_at = now
            self.log.warning("%s: %d passes failed in %.0f s: %s; still retrying", self.name, self.failures,
                             now - self.since, reason)

    def passed(self, now: float) -> None:
        if self.failures:
            self.log.warning("%s: the database serves again after %d failed passes in %.0f s", self.name,
                             self.failures, now - self.since)
            self.failures = 0
