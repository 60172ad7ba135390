"""Group commit: many concurrent writers, one transaction per batch.

Callers `await writer.write(stmt, params)`; it returns once the row is committed. The writer task takes
everything queued while the previous commit ran, so under load batches grow by themselves and a burst of
link opens or callbacks becomes a handful of transactions, not thousands (see PERFORMANCE.md). Nothing
that a caller was told is stored can be lost: the caller waits for the commit.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Any

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql import Executable

log = logging.getLogger("beacon.batch")

# One caller's rows: (order, statement, params) triples, written in the same transaction.
Row = tuple[int, Executable, dict[str, Any]]
_Item = tuple[list[Row], asyncio.Future[None]]


class WriterStopped(RuntimeError):
    """Raised to callers when the writer is shut down before their row was written."""


class BatchWriter:
    def __init__(self, engine: AsyncEngine, *, name: str = "writer", max_batch: int = 1000) -> None:
        self.engine = engine
        self.name = name
        self.max_batch = max_batch
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.batches = 0
        self.rows = 0

    async def write(self, stmt: Executable, params: dict[str, Any]) -> None:
        """Queue one row and wait until it is committed. Raises the database error if the write fails."""
        await self.write_rows([(0, stmt, params)])

    async def write_rows(self, rows: list[Row]) -> None:
        """Queue rows that belong together; within a batch, statements run by ascending order
        (so a row another row refers to is written first). Returns after the commit."""
        if self._closing:
            raise WriterStopped(self.name)
        self._ensure_running()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((rows, future))
        await future

    def _ensure_running(self) -> None:
        # Restarted on demand, so a writer task that died of an unexpected error does not stop writes.
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"batch-{self.name}")

    async def close(self) -> None:
        """Write everything already queued, then stop."""
        self._closing = True
        if self._task is not None and not self._task.done():
            await self._queue.put(_SENTINEL)
            await self._task
        while not self._queue.empty():  # the task was gone: fail leftovers loudly rather than hang
            _rows, future = self._queue.get_nowait()
            if not future.done():
                future.set_exception(WriterStopped(self.name))

    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            batch = [first]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            stop = any(item is _SENTINEL for item in batch)
            batch = [item for item in batch if item is not _SENTINEL]
            if batch:
                await self._flush(batch)
            if stop:
                return

    async def _flush(self, batch: list[_Item]) -> None:
        try:
            await self._execute(batch)
        except (DBAPIError, OSError) as exc:
            if len(batch) == 1:
                _fail(batch, exc)
                return
            log.warning("batch of %d failed (%s); retrying row by row", len(batch), type(exc).__name__)
            for item in batch:
                try:
                    await self._execute([item])
                except (DBAPIError, OSError) as row_exc:
                    _fail([item], row_exc)
            return
        except BaseException as exc:
            _fail(batch, exc)
            raise
        self.batches += 1
        self.rows += len(batch)
        for _rows, future in batch:
            if not future.done():
                future.set_result(None)

    async def _execute(self, batch: list[_Item]) -> None:
        grouped: dict[tuple[int, Executable], list[dict[str, Any]]] = defaultdict(list)
        for rows, _future in batch:
            for order, stmt, params in rows:
                grouped[(order, stmt)].append(params)
        async with self.engine.begin() as conn:
            for (_order, stmt), params in sorted(grouped.items(), key=lambda kv: kv[0][0]):
                await conn.execute(stmt, params)


def _fail(batch: list[_Item], exc: BaseException) -> None:
    for _rows, future in batch:
        if not future.done():
            future.set_exception(exc)


_SENTINEL: Any = object()
