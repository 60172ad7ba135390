"""Group commit: many concurrent writers, one transaction per batch.

Callers `await writer.write(stmt, params)`; it returns once the row is committed. The writer task takes
everything queued while the previous commit ran, so under load batches grow by themselves and a burst of
link opens or callbacks becomes a handful of transactions, not thousands (see PERFORMANCE.md). Nothing
that a caller was told is stored can be lost: the caller waits for the commit.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import sqlite3
import time
from collections import defaultdict
from operator import itemgetter
from typing import Any

import asyncpg
from cachetools import LRUCache
from sqlalchemy import Date, DateTime, bindparam, func, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql import Executable

from bot.db import liveness, unavailable_reason, write_gate
from bot.models import UTCDateTime

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
        self._gate = write_gate(engine)  # SQLite: batches go to the driver in one trip (see _write_sqlite)

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
            await self._execute_live(batch)
        except (DBAPIError, OSError) as exc:
            if len(batch) == 1 or unavailable_reason(exc) is not None:
                # Row by row is for a row the database refuses; when it cannot serve at all, each row
                # would fail alike: the callers answer 503 now (WeCom delivers again, the reader reloads).
                _fail(batch, exc)
                return
            log.warning("batch of %d failed (%s); retrying row by row", len(batch), type(exc).__name__)
            for item in batch:
                try:
                    await self._execute_live([item])
                except (DBAPIError, OSError) as row_exc:
                    _fail([item], row_exc)
                else:
                    self._done([item])
            return
        except BaseException as exc:
            _fail(batch, exc)
            raise
        self._done(batch)

    def _done(self, batch: list[_Item]) -> None:
        self.batches += 1
        self.rows += len(batch)
        for _rows, future in batch:
            if not future.done():
                future.set_result(None)

    async def _execute_live(self, batch: list[_Item]) -> None:
        """`_execute`, once more when the connection died under it (a server restart or failover, on
        PostgreSQL: nothing of the batch was committed): the pool checks its connections before the next
        use (bot/db.py Liveness), so the second attempt meets a live one."""
        try:
            await self._execute(batch)
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            log.warning("%s: the connection was lost (%s); writing the batch of %d again", self.name, type(exc.orig).__name__, len(batch))
            await self._execute(batch)

    async def _execute(self, batch: list[_Item]) -> None:
        grouped: dict[tuple[int, Executable], list[dict[str, Any]]] = defaultdict(list)
        for rows, _future in batch:
            for order, stmt, params in rows:
                grouped[(order, stmt)].append(params)
        groups = [(stmt, params) for (_order, stmt), params in sorted(grouped.items(), key=lambda kv: kv[0][0])]
        work = _driver_work(groups, self.engine.dialect)
        if work is not None and self._gate is not None:
            await self._write_sqlite(work)
        elif work is not None and self.engine.dialect.driver == "asyncpg":
            await self._write_asyncpg(work)
        else:  # a statement needs SQLAlchemy's own execution (Python-side defaults), or another driver
            async with self.engine.begin() as conn:
                for stmt, params in groups:
                    await conn.execute(stmt, params)

    async def _write_sqlite(self, work: list[tuple[str, list[list[Any]]]]) -> None:
        """SQLite: the whole batch in one trip to the connection's thread.

        Through SQLAlchemy a batch costs BEGIN, one round trip per statement and COMMIT, each a hop to
        aiosqlite's thread and back plus SQLAlchemy's per-execution work: about 1 ms whatever the
        batch's size, which under load was most of the group commit's cost. Here the statements are
        compiled once, the rows converted on the loop, and BEGIN IMMEDIATE, one executemany per
        statement and COMMIT run in a single call, holding this process's write gate (bot/db.py
        WriteGate) as any other write transaction does."""
        await write_in_one_call(self.engine, _executemany_all, work, sql=work[0][0] if work else "")

    async def _write_asyncpg(self, work: list[tuple[str, list[list[Any]]]]) -> None:
        """PostgreSQL: the batch in one transaction on the pooled connection's asyncpg connection, one
        `executemany` per statement. Through SQLAlchemy each row's parameters went through its
        execution context on the event loop, a third of a link open's CPU on PostgreSQL. Errors come
        back as SQLAlchemy's IntegrityError / DBAPIError, as they would through it."""
        async with self.engine.connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            sql = ""
            try:
                async with driver.transaction():
                    for sql, rows in work:
                        await driver.executemany(sql, rows)
            except asyncpg.IntegrityConstraintViolationError as exc:
                raise IntegrityError(sql, None, exc) from exc
            except (asyncpg.PostgresError, *_CONNECTION_LOST) as exc:
                dead = driver.is_closed() or isinstance(exc, _CONNECTION_LOST)
                if dead:  # (a server restart, a failover): out of the pool, and the others pinged before use
                    await conn.invalidate(exc)
                    alive = liveness(self.engine)
                    if alive is not None:
                        alive.lost()
                raise DBAPIError(sql, None, exc, connection_invalidated=dead) from exc


# asyncpg's errors that leave its connection unusable: the server closed it or shut down, the socket
# failed, or the protocol lost its state (seen when the server's notice of termination arrives as an
# operation starts).
_CONNECTION_LOST = (asyncpg.InterfaceError, asyncpg.InternalClientError, OSError, asyncpg.PostgresConnectionError,
                    asyncpg.exceptions.AdminShutdownError, asyncpg.exceptions.CrashShutdownError)


def _driver_work(groups: list[tuple[Executable, list[dict[str, Any]]]], dialect: Any) -> list[tuple[str, list[list[Any]]]] | None:
    """A batch's statements as (SQL, the driver's positional rows), compiled once per statement and
    converted here (`prepared_statement`); None if any needs SQLAlchemy's own execution."""
    work = [_driver_rows(stmt, params, dialect) for stmt, params in groups]
    return None if any(w is None for w in work) else work  # type: ignore[return-value]


class _Prepared:
    """One statement compiled for the database's driver (sqlite3, asyncpg): its SQL and how a params dict becomes the positional
    row the driver takes (values the statement binds itself filled in, every value through its column
    type's bind processor, exactly as SQLAlchemy would do per execution)."""

    def __init__(self, stmt: Executable, keys: tuple[str, ...], dialect: Any, repeated: bool = False) -> None:
        compiled = stmt.compile(dialect=dialect, column_keys=list(keys))  # type: ignore[attr-defined]
        self.sql = str(compiled)
        # Columns whose value SQLAlchemy computes per row (Python-side defaults) are not done here.
        self.complete = not [c for c in (*compiled.insert_prefetch, *compiled.update_prefetch) if c.key not in keys]
        names = compiled.positiontup or []
        self.names = [(name, compiled.params.get(name)) for name in names]
        processors = [_bind_processor(compiled.binds[name].type, dialect) for name in names]
        if repeated:
            processors = [None if process is None else converted_once(process) for process in processors]
        self.processors = [(i, process) for i, process in enumerate(processors) if process is not None]
        # The params' values in one C call when every name is a key (the usual case); values the
        # statement binds itself (ON CONFLICT's round(…, 2)) come after the row's own, appended.
        given = [name for name, _default in self.names if name in keys]
        self._tail = [default for name, default in self.names if name not in keys]
        self._pick = itemgetter(*given) if len(given) > 1 and self.names[:len(given)] == [(n, d) for n, d in self.names if n in keys] else None

    def row(self, params: dict[str, Any]) -> list[Any]:
        values: list[Any]
        if self._pick is not None:
            try:
                values = [*self._pick(params), *self._tail]
            except KeyError:  # a row without one of the keys: its value is the default, as below
                values = self._values(params)
        else:
            values = self._values(params)
        for i, process in self.processors:
            value = values[i]
            if value is not None:
                values[i] = process(value)
        return values

    def _values(self, params: dict[str, Any]) -> list[Any]:
        get = params.get
        return [get(name, default) for name, default in self.names]


def _bind_processor(type_: Any, dialect: Any) -> Any:
    """The column type's bind processor for `dialect`; on SQLite, for timestamps and dates, one call
    that gives the same text (SQLAlchemy's chain of TypeDecorator and DATETIME processors cost about
    3 µs a timestamp, a fifth of converting a ledger row). Each shortcut is checked against SQLAlchemy's
    own processor on sample values when a statement is prepared, and not used if any differs."""
    slow = type_.dialect_impl(dialect).bind_processor(dialect)
    make = _SQLITE_SHORTCUTS.get(type(type_)) if dialect.name == "sqlite" and slow is not None else None
    if make is None:
        return slow
    fast, samples = make(slow)
    try:
        same = all(fast(value) == slow(value) for value in samples)
    except (TypeError, ValueError):
        same = False
    return fast if same else slow


def _utc_shortcut(slow: Any) -> tuple[Any, tuple[Any, ...]]:
    return UTCDateTime.sqlite_text, (_AT, _AT.replace(microsecond=0), _AT.astimezone(dt.timezone(dt.timedelta(hours=8))),
                                     dt.datetime(999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.timezone.utc))


def _datetime_shortcut(slow: Any) -> tuple[Any, tuple[Any, ...]]:
    def text(value: Any) -> Any:  # naive datetimes; anything else as SQLAlchemy does it
        return value.isoformat(" ", "microseconds") if type(value) is dt.datetime and value.tzinfo is None else slow(value)
    return text, (_AT.replace(tzinfo=None), dt.datetime(2026, 1, 1), dt.datetime(999, 1, 2, 3, 4, 5, 6))


def _date_shortcut(slow: Any) -> tuple[Any, tuple[Any, ...]]:
    def text(value: Any) -> Any:
        return value.isoformat() if type(value) is dt.date else slow(value)
    return text, (_AT.date(), dt.date(999, 1, 2))


_AT = dt.datetime(2026, 3, 5, 7, 9, 11, 13, tzinfo=dt.timezone.utc)
_SQLITE_SHORTCUTS = {UTCDateTime: _utc_shortcut, DateTime: _datetime_shortcut, Date: _date_shortcut}


def converted_once(process: Any, size: int = 1024) -> Any:
    """`process` remembering its last `size` distinct values' results (bind processors are pure)."""
    done: dict[Any, Any] = {}

    def convert(value: Any) -> Any:
        try:
            return done[value]
        except KeyError:
            pass
        except TypeError:  # unhashable (a JSON value)
            return process(value)
        if len(done) >= size:
            done.clear()
        result = done[value] = process(value)
        return result

    return convert


# Statements are module constants in practice; a bound all the same.
_PREPARED: LRUCache[tuple[Executable, tuple[str, ...], str, bool], _Prepared] = LRUCache(256)


def prepared_statement(stmt: Executable, keys: tuple[str, ...], dialect: Any, *, repeated: bool = False) -> _Prepared | None:
    """`stmt` compiled once for SQLite's driver, for params dicts with exactly `keys`: its `sql`, and
    `row(params)` giving the driver's positional row; None when the statement needs SQLAlchemy's own
    execution (Python-side column defaults to fill in). `repeated`: the rows share most of their
    values (a nightly job's clock, tonight's midnight), and each distinct value is converted once
    (the conversion of a timestamp was a fifth of decay's time on the loop)."""
    key = (stmt, keys, dialect.name, repeated)
    prepared = _PREPARED.get(key)
    if prepared is None:
        prepared = _PREPARED[key] = _Prepared(stmt, keys, dialect, repeated)
    return prepared if prepared.complete else None


def _driver_rows(stmt: Executable, params: list[dict[str, Any]], dialect: Any) -> tuple[str, list[list[Any]]] | None:
    """The statement's SQL and `params` as the driver's positional rows (compiled once per statement);
    None when the statement needs SQLAlchemy's own execution (Python-side column defaults to fill in)."""
    keys = tuple(params[0])
    prepared = prepared_statement(stmt, keys, dialect)
    if prepared is None or any(len(p) != len(keys) for p in params):
        return None
    return prepared.sql, [prepared.row(p) for p in params]


async def executemany(conn: AsyncConnection, stmt: Executable, params: list[dict[str, Any]]) -> None:
    """`await conn.execute(stmt, params)` for many rows of one INSERT or UPDATE, in the connection's
    transaction. On SQLite the rows go to the driver in one trip to its thread, past SQLAlchemy's
    per-row parameter processing (the same conversion, done once per row here): for the nightly jobs'
    thousands of rows per chunk, which SQLite's write lock waits on."""
    prepared = _driver_rows(stmt, params, conn.dialect) if conn.dialect.name == "sqlite" and params else None
    if prepared is None:
        if params:
            await conn.execute(stmt, params)
        return
    sql, rows = prepared
    await on_driver(conn, _executemany_in_thread, sql, rows, sql=sql)


class BulkUpdate:
    """UPDATE `table` SET `columns` (and `same`, one value for every row) WHERE `key` = …, for many
    rows given as dicts of `b_<column>` values.

    SQLite, and any rows whose `same` values differ: `executemany` of `stmt` (which bot/batch.py's
    driver path also takes). PostgreSQL: one statement over arrays (`UPDATE … FROM unnest(…)`) instead
    of a bound statement per row; SQLAlchemy built each row's parameters on the event loop, which for a
    nightly chunk of a thousand contacts held the loop (and the open link requests) for milliseconds."""

    def __init__(self, table: Any, key: str, columns: tuple[str, ...], same: tuple[str, ...] = ()) -> None:
        self.key, self.columns, self.same = key, columns, same
        self.stmt = update(table).where(table.c[key] == bindparam(f"b_{key}")).values(
            {name: bindparam(f"b_{name}") for name in (*columns, *same)}
        )
        names = (key, *columns)
        rows = func.unnest(*(bindparam(f"a_{name}", type_=ARRAY(table.c[name].type)) for name in names))
        given = rows.table_valued(*names).render_derived().alias("given")
        self.unnested = update(table).where(table.c[key] == given.c[key]).values(
            {**{name: given.c[name] for name in columns}, **{name: bindparam(f"b_{name}") for name in same}}
        )

    async def run(self, conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        first = rows[0]
        if conn.dialect.name != "postgresql" or any(row[f"b_{name}"] != first[f"b_{name}"] for row in rows for name in self.same):
            await executemany(conn, self.stmt, rows)
            return
        params = {f"a_{name}": [row[f"b_{name}"] for row in rows] for name in (self.key, *self.columns)}
        params.update({f"b_{name}": first[f"b_{name}"] for name in self.same})
        await conn.execute(self.unnested, params)


async def on_driver(conn: AsyncConnection, fn: Any, *args: Any, sql: str) -> Any:
    """fn(sqlite3 connection, *args) on the connection's own thread, in one trip, and its result;
    sqlite3's errors come back as SQLAlchemy's DBAPIError (`sql` names the statement), as they would
    through it."""
    driver = (await conn.get_raw_connection()).driver_connection
    try:
        return await driver._execute(lambda: fn(driver._conn, *args))
    except sqlite3.Error as exc:
        raise DBAPIError.instance(sql, None, exc, sqlite3.Error) from exc


async def write_in_one_call(engine: AsyncEngine, fn: Any, *args: Any, sql: str, clock: Any = time.perf_counter) -> tuple[Any, float, float]:
    """SQLite: a whole write transaction in one call on a connection's thread, under this process's
    write gate (bot/db.py WriteGate): BEGIN IMMEDIATE, fn(sqlite3 connection, *args), COMMIT (ROLLBACK
    if fn raises). Nothing of the event loop's runs inside it, so the lock is held for SQLite's work
    and fn's alone; a transaction with awaits inside lasts as long as whatever the loop runs between
    them. Returns fn's result, how long the lock was held (BEGIN through COMMIT) and how long COMMIT
    took, both by `clock`. The rows fn writes should be converted before (`prepared_statement`)."""
    # The connection first, then the gate: the order every unit of work takes them in (a session
    # checks out its connection, then BEGIN waits at the gate); the other order could deadlock
    # with sessions holding every pooled connection while they wait for the gate.
    async with engine.connect() as conn, write_gate(engine).exclusive():  # type: ignore[union-attr]
        return await on_driver(conn, _transaction_in_thread, fn, args, clock, sql=sql)  # type: ignore[no-any-return]


def _transaction_in_thread(conn: sqlite3.Connection, fn: Any, args: tuple[Any, ...], clock: Any) -> tuple[Any, float, float]:
    began = clock()
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn, *args)
    except BaseException:
        conn.rollback()
        raise
    committing = clock()
    _commit(conn)
    ended = clock()
    return result, ended - began, ended - committing


def _commit(conn: sqlite3.Connection) -> None:
    conn.commit()  # a function of its own: tests count COMMITs here (sqlite3's methods cannot be patched)


def _executemany_in_thread(conn: sqlite3.Connection, sql: str, rows: list[list[Any]]) -> None:
    conn.executemany(sql, rows)


def _executemany_all(conn: sqlite3.Connection, work: list[tuple[str, list[list[Any]]]]) -> None:
    for sql, rows in work:
        conn.executemany(sql, rows)


def still_as_read(conn: sqlite3.Connection, table: str, columns: str, expected: dict[int, tuple[Any, ...]]) -> list[int]:
    """Inside a write transaction on SQLite's thread: the ids of `expected` whose `columns` (as stored)
    still hold the values read before it, i.e. that no other writer changed meanwhile (decay and
    rescore compute outside the write lock, then write only these)."""
    ids = list(expected)
    rows = conn.execute(f"SELECT id, {columns} FROM {table} WHERE id IN ({','.join('?' * len(ids))})", ids)
    return [row[0] for row in rows if expected[row[0]] == tuple(row[1:])]


def _fail(batch: list[_Item], exc: BaseException) -> None:
    for _rows, future in batch:
        if not future.done():
            future.set_exception(exc)


_SENTINEL: Any = object()
