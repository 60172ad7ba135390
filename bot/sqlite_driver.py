"""aiosqlite with one thread hop per statement.

aiosqlite runs each sqlite3 call on the connection's own thread, and every call is a round trip to it
(queue put, thread wake-up, `call_soon_threadsafe` back into the loop). SQLAlchemy's aiosqlite adapter
makes three or four such calls per statement: create a cursor, execute, fetch the rows, close the
cursor. On one busy core those hops, not SQLite, were the largest cost of a write batch and of every
small query (PERFORMANCE.md: "every await is a thread hop").

`HopSavingConnection` is an aiosqlite connection whose cursors do all of that in one call: the
statement runs, the first rows are fetched and the sqlite3 cursor is closed when they are all there,
and the rest of the cursor (description, rowcount, lastrowid, rows) is answered without going back to
the thread. Results larger than `PREFETCH_ROWS` keep the sqlite3 cursor open and fetch the rest in
chunks, so streaming (server-side cursor) reads stay bounded in memory.

It relies on `aiosqlite.Connection._execute` (run a function on the connection's thread), which has
been there since aiosqlite 0.17; pyproject.toml bounds the version this was checked against.
"""

from __future__ import annotations

import sqlite3
from collections import deque
from collections.abc import AsyncIterator, Iterable, Sequence
from functools import partial
from typing import Any

import aiosqlite
from sqlalchemy import event

PREFETCH_ROWS = 256

# What one trip to the thread brings back: the sqlite3 cursor if rows remain, and the cursor's state.
_Outcome = tuple[sqlite3.Cursor | None, Any, int, int | None, list[Any]]


class HopSavingCursor:
    """The async cursor SQLAlchemy's adapter drives (the subset of aiosqlite.Cursor it uses)."""

    arraysize = 1

    def __init__(self, conn: HopSavingConnection) -> None:
        self._conn = conn
        self._open: sqlite3.Cursor | None = None  # a sqlite3 cursor with rows still to fetch
        self._rows: deque[Any] = deque()
        self.description: Any = None
        self.rowcount = -1
        self.lastrowid: int | None = None

    async def __aenter__(self) -> HopSavingCursor:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    # -- run on the connection's thread ---------------------------------------------------------
    def _run(self, previous: sqlite3.Cursor | None, method: str, sql: str, params: Any) -> _Outcome:
        if previous is not None:
            previous.close()
        cursor = self._conn._conn.cursor()
        try:
            getattr(cursor, method)(sql, params)
            description, rowcount, lastrowid = cursor.description, cursor.rowcount, cursor.lastrowid
            rows: list[Any] = []
            if description is not None:
                rows = cursor.fetchmany(PREFETCH_ROWS)
                if len(rows) == PREFETCH_ROWS:
                    return cursor, description, rowcount, lastrowid, rows
        except BaseException:
            cursor.close()
            raise
        cursor.close()
        return None, description, rowcount, lastrowid, rows

    @staticmethod
    def _more(cursor: sqlite3.Cursor, size: int | None) -> tuple[list[Any], bool]:
        rows = cursor.fetchall() if size is None else cursor.fetchmany(size)
        exhausted = size is None or len(rows) < size
        if exhausted:
            cursor.close()
        return rows, exhausted

    # -- the async face -------------------------------------------------------------------------
    async def _start(self, method: str, sql: str, params: Any) -> HopSavingCursor:
        previous, self._open = self._open, None
        self._rows.clear()
        outcome = await self._conn._execute(self._run, previous, method, sql, params)
        self._open, self.description, self.rowcount, self.lastrowid, rows = outcome
        self._rows.extend(rows)
        return self

    async def execute(self, sql: str, parameters: Sequence[Any] | dict[str, Any] | None = None) -> HopSavingCursor:
        return await self._start("execute", sql, () if parameters is None else parameters)

    async def executemany(self, sql: str, parameters: Iterable[Any]) -> HopSavingCursor:
        return await self._start("executemany", sql, parameters)

    async def _fill(self, wanted: int | None) -> None:
        """Bring rows from the open sqlite3 cursor until `wanted` are buffered (None: all)."""
        if self._open is None or (wanted is not None and len(self._rows) >= wanted):
            return
        size = None if wanted is None else max(wanted - len(self._rows), PREFETCH_ROWS)
        cursor = self._open
        rows, exhausted = await self._conn._execute(self._more, cursor, size)
        if exhausted:
            self._open = None
        self._rows.extend(rows)

    async def fetchone(self) -> Any:
        await self._fill(1)
        return self._rows.popleft() if self._rows else None

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        size = self.arraysize if size is None else size
        await self._fill(size)
        return [self._rows.popleft() for _ in range(min(size, len(self._rows)))]

    async def fetchall(self) -> list[Any]:
        await self._fill(None)
        rows = list(self._rows)
        self._rows.clear()
        return rows

    async def __aiter__(self) -> AsyncIterator[Any]:
        while True:
            rows = await self.fetchmany(PREFETCH_ROWS)
            if not rows:
                return
            for row in rows:
                yield row

    async def close(self) -> None:
        self._rows.clear()
        cursor, self._open = self._open, None
        if cursor is not None:  # rows left unread: the statement still holds SQLite's read snapshot
            await self._conn._execute(cursor.close)


class HopSavingConnection(aiosqlite.Connection):
    def cursor(self) -> HopSavingCursor:  # type: ignore[override]
        return HopSavingCursor(self)


def connect(database: str, **kwargs: Any) -> HopSavingConnection:
    """Like `aiosqlite.connect`, for SQLAlchemy's `async_creator_fn` (the arguments come from the URL)."""
    connection = HopSavingConnection(partial(sqlite3.connect, database, **kwargs), iter_chunk_size=PREFETCH_ROWS)
    connection._thread.daemon = True  # as SQLAlchemy sets for aiosqlite's own connections
    return connection


def use_for(sync_engine: Any) -> None:
    """Make the engine's new connections hop-saving ones (SQLAlchemy's aiosqlite dialect calls the
    `async_creator_fn` it finds among the connect arguments with the URL's arguments)."""

    def do_connect(_dialect: Any, _record: Any, _cargs: Any, cparams: dict[str, Any]) -> None:
        cparams["async_creator_fn"] = connect

    event.listen(sync_engine, "do_connect", do_connect)
