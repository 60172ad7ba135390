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
from contextlib import suppress
from typing import Any, Awaitable


class PollingWorker:
    name = "worker"
    poll_s = 1.0

    def __init__(self) -> None:
        self._wake = asyncio.Event()
        self._stopping = False
        self._stop_requested = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    def request_stop(self) -> None:
        """Finish the unit of work in hand, then return from `run`."""
        self._stopping = True
        self._stop_requested.set()
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._stopping

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

    async def drain(self) -> int:
        """Handle what is due now (checking `stopping` between units); returns how many were handled."""
        raise NotImplementedError

    async def run(self) -> None:
        log = logging.getLogger(f"beacon.{self.name}")
        while not self._stopping:
            try:
                handled = await self.drain()
            except Exception:
                log.exception("%s pass failed", self.name)
                handled = 0
            if not handled and not self._stopping:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), self.poll_s)
                except TimeoutError:
                    pass
