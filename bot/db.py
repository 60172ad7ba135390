"""Engine and sessions: SQLite (WAL) by default, PostgreSQL via asyncpg for scale-out.

Nothing here runs at import time; `create_engine(settings)` is called by the app factory and the CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sqlite3
import time
import weakref
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool
from sqlalchemy.util import await_only

from bot import sqlite_driver
from bot.clock import sleep_unless
from bot.config import DatabaseSettings
from bot.priority import background_priority

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def is_sqlite(engine_or_url: AsyncEngine | str) -> bool:
    url = engine_or_url if isinstance(engine_or_url, str) else str(engine_or_url.url)
    return url.startswith("sqlite")


READ_ONLY = "beacon_read_only"


class WriteGate:
    """SQLite: one write transaction at a time in this process, queued in the event loop.

    SQLite has one write lock per database. Without the gate, a writer that finds it taken (another
    of this process's connections holds it) waits in SQLite's busy handler, which sleeps in growing
    steps (1, 2, 5 … 100 ms) on its connection's thread and retries: under steady writes (the link
    and callback group commits, the tracker, the inbox worker) the waits pile up into hundreds of
    milliseconds and the one who waited longest is not the one who goes next. With the gate, `BEGIN
    IMMEDIATE` is issued only by the holder; the others wait on an asyncio lock, first come first
    served, and go the moment the holder commits or rolls back. Other processes (a CLI command
    beside `serve`) still meet SQLite's busy handler.

    Waiting longer than `busy_timeout_ms` raises sqlite3's "database is locked", as SQLite would:
    a unit of work that waits for another one holding the gate in the same task is a bug either way.
    """

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._locks: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock]" = weakref.WeakKeyDictionary()
        self._held: dict[int, asyncio.Lock] = {}  # id(DBAPI connection) → the gate it holds
        self._waiting = 0  # writers queued for the gate (the fast path must not pass them)
        self._courteous: list[asyncio.Future[None]] = []  # background work waiting for a transaction to end

    @property
    def contended(self) -> bool:
        """Whether a writer of this process is queued for the gate: background work holding it (a
        batch of the inbox worker's) commits at the next boundary so the hot path's group commit goes."""
        return self._waiting > 0

    def install(self, engine: AsyncEngine) -> None:
        sync = engine.sync_engine
        sync.dialect.beacon_write_gate = self  # type: ignore[attr-defined]  # see write_gate()
        event.listen(sync, "begin", self._begin)
        # Opened only once SQLite's lock is free: after COMMIT / ROLLBACK has run (the engine's commit
        # and rollback events come before), whoever ends the transaction (the pool's reset included).
        dialect = sync.dialect
        dialect.do_commit = self._after(dialect.do_commit)  # type: ignore[method-assign]
        dialect.do_rollback = self._after(dialect.do_rollback)  # type: ignore[method-assign]
        # A connection given up mid-transaction (its task cancelled, as at shutdown) is terminated or
        # closed without a rollback: that ends its transaction too.
        dialect.do_terminate = self._after(dialect.do_terminate, always=True)  # type: ignore[method-assign]
        dialect.do_close = self._after(dialect.do_close, always=True)  # type: ignore[method-assign]
        event.listen(sync.pool, "invalidate", self._dropped)
        event.listen(sync.pool, "close", self._dropped)

    def _lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        lock = self._locks.get(loop)
        if lock is None:
            lock = self._locks[loop] = asyncio.Lock()
        return lock

    def _begin(self, conn: Any) -> None:
        # A deferred transaction that reads and then writes fails at once with SQLITE_BUSY_SNAPSHOT when
        # another connection committed in between (WAL mode; the busy timeout does not apply). Units of
        # work therefore take the write lock up front, through the gate; read-only sessions opt out and
        # never block.
        if conn.get_execution_options().get(READ_ONLY):
            conn.exec_driver_sql("BEGIN")
            return
        key = id(conn.connection.dbapi_connection)
        lock = self._lock()
        try:  # inside SQLAlchemy's greenlet: wait for the gate in the event loop
            await_only(self._acquire(lock))
        except TimeoutError:
            cause = sqlite3.OperationalError("database is locked (waited for this process's other writer)")
            raise OperationalError("BEGIN IMMEDIATE", None, cause) from None  # as SQLite's own would be
        self._held[key] = lock
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            self._open(key)
            raise

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """The gate for a write that bypasses SQLAlchemy's transaction (the group commit's one trip to
        SQLite's thread: bot/batch.py); it issues BEGIN IMMEDIATE and COMMIT itself."""
        lock = self._lock()
        try:
            await self._acquire(lock)
        except TimeoutError:
            cause = sqlite3.OperationalError("database is locked (waited for this process's other writer)")
            raise OperationalError("BEGIN IMMEDIATE", None, cause) from None
        try:
            yield
        finally:
            lock.release()
            self._ended()

    async def _acquire(self, lock: asyncio.Lock) -> None:
        """lock.acquire() within the timeout, never leaving the lock taken by nobody: `wait_for` alone
        can lose an acquisition that completes just as it times out or is cancelled (shutdown)."""
        if not lock.locked() and not self._waiting:
            await lock.acquire()  # free, nobody queued: taken at once, without suspending
            return
        attempt = asyncio.ensure_future(lock.acquire())
        self._waiting += 1
        try:
            await asyncio.wait_for(asyncio.shield(attempt), self.timeout_s)
        except BaseException:
            if attempt.done() and not attempt.cancelled() and attempt.exception() is None:
                lock.release()  # it was ours after all: give it back
            else:
                attempt.cancel()  # a cancelled Lock.acquire hands the turn on, holding nothing
            raise
        finally:
            self._waiting -= 1

    def _after(self, end: Any, *, always: bool = False) -> Any:
        def wrapped(connection: Any) -> None:
            key = id(getattr(connection, "dbapi_connection", connection))
            try:
                end(connection)  # a COMMIT that fails leaves the gate to the ROLLBACK that follows
            except BaseException:
                if always:
                    self._open(key)
                raise
            self._open(key)

        return wrapped

    def _dropped(self, dbapi_conn: Any, *_args: Any) -> None:
        self._open(id(dbapi_conn))

    def _open(self, key: int) -> None:
        lock = self._held.pop(key, None)
        if lock is not None:
            lock.release()
            self._ended()

    async def after_writer(self, timeout_s: float = 0.25) -> None:
        """For background work about to use the CPU (a nightly job's arithmetic or its next read, the
        tracker's replays): if a write transaction of this process is in progress, wait until it ends
        (at most `timeout_s`); with writers queued and the gate passing to the next, until that one's
        transaction ends. The process has one core's worth of time, shared by the event loop and the
        connections' threads; work that runs while a transaction is open stretches it, and SQLite's lock
        is held that much longer: the link path's group commit and every other writer wait. One
        transaction at most, so steady writes slow background work down but never starve it. Returns
        at once when no transaction is open or queued. Not for a task that holds the gate itself."""
        lock = self._locks.get(asyncio.get_running_loop())
        if lock is None or not (lock.locked() or self._waiting):
            return
        ended = asyncio.get_running_loop().create_future()
        self._courteous.append(ended)
        try:
            await asyncio.wait([ended], timeout=timeout_s)
        finally:
            if not ended.done():
                ended.cancel()
                self._courteous.remove(ended)

    def _ended(self) -> None:
        waiting, self._courteous = self._courteous, []
        for ended in waiting:
            if not ended.done():
                ended.set_result(None)


WRITE_TARGET_S = 0.02  # what a nightly job's write transaction should take (SQLite's lock: issue 9 allows 50 ms)


class Chunks:
    """How many rows the next write transaction of a nightly job takes on (decay, dormancy), steered by
    how long the last one held the write lock: the same number costs more as a database outgrows memory
    (at a million contacts, 500 contacts of decay took 120 ms)."""

    def __init__(self, first: int, *, target_s: float | None = None, least: int = 20, most: int | None = None) -> None:
        self.size = first
        self.target_s = WRITE_TARGET_S if target_s is None else target_s
        # Unless told otherwise, never past the first size: how many of a chunk's rows are written varies
        # (decay: contacts that lose nothing cost nothing), so a quick chunk says little about the next.
        self.least, self.most = min(least, self.size), most or self.size

    def took(self, seconds: float, contacts: int) -> None:
        """A chunk of `contacts` held the write lock for `seconds` (BEGIN through COMMIT): size the
        next one to the target."""
        if contacts < self.size or seconds <= 0:
            return  # a short last chunk, or too quick to measure: nothing learned
        wanted = contacts * self.target_s / seconds
        # halfway towards what would have hit the target: one slow transaction does not collapse it
        self.size = max(self.least, min(self.most, round((self.size + wanted) / 2)))


# delete_in_chunks: rows per delete transaction, the first and at most (sized by Chunks between).
DELETE_FIRST, DELETE_MOST = 2_000, 20_000


async def delete_in_chunks(sessions: async_sessionmaker[AsyncSession], table: Any, *where: Any) -> int:
    """Housekeeping: DELETE the rows of `table` matching `where`, a chunk per transaction of its own (on
    SQLite each holds the write lock briefly, sized by `Chunks`; a single DELETE of a backlog of
    millions held it for seconds). Each chunk's rows are found by the table's indexes, unsorted; a run
    stopped half-way leaves the rest for the next. Returns how many rows were deleted."""
    from sqlalchemy import delete, select

    size = Chunks(DELETE_FIRST, least=100, most=DELETE_MOST)
    removed = 0
    while True:
        wanted = size.size
        async with sessions() as session, session.begin():
            began = time.perf_counter()
            some = select(table.c.id).where(*where).limit(wanted)
            result = await session.execute(delete(table).where(table.c.id.in_(some.scalar_subquery())))
            gone = result.rowcount or 0
        size.took(time.perf_counter() - began, gone)
        removed += gone
        if gone < wanted:
            return removed


def write_gate(engine: AsyncEngine) -> WriteGate | None:
    """The engine's write gate (SQLite engines made by `create_engine`), else None."""
    return getattr(engine.sync_engine.dialect, "beacon_write_gate", None)


async def yield_to_writer(engine: AsyncEngine) -> None:
    """Between steps of background work: on SQLite, let a write transaction in progress end first
    (`WriteGate.after_writer`); elsewhere, just let the event loop run what is ready."""
    gate = write_gate(engine)
    if gate is not None:
        await gate.after_writer()
    await asyncio.sleep(0)


# With background checkpoints on, a writer's COMMIT still checkpoints once the WAL holds this many
# pages (about 200 MB): a backstop for when the checkpointer falls behind or the process runs none.
# Well above what the WAL reaches between background checkpoints: at a million contacts, with the
# nightly decay writing about 3,500 pages per 0.25 s, it reached 10,100.
BACKSTOP_PAGES = 50_000


class WalCheckpointer:
    """SQLite: WAL checkpoints on a connection and thread of their own, every `interval_s`.

    SQLite's automatic checkpoint runs inside the COMMIT call of whichever writer pushed the WAL past
    1,000 pages: that writer's caller waits for it (the group commit's requests, a nightly chunk),
    although the write lock is already released. In the background it blocks nobody: a PASSIVE
    checkpoint never waits for readers or writers, and copies what it can. Writers keep a backstop
    (BACKSTOP_PAGES). A checkpoint with nothing new to copy costs microseconds, so polling is cheap.
    """

    def __init__(self, path: str, interval_s: float, backstop: "Backstop | None" = None) -> None:
        self.path = path
        self.interval_s = interval_s
        self.backstop = backstop
        self.runs = 0  # checkpoints that found frames to copy
        self.longest_s = 0.0  # the longest of them
        self.wal_frames = 0  # the WAL's size in frames at the last checkpoint
        self._last = (-1, -1)
        self._conn: sqlite3.Connection | None = None
        self._stop = asyncio.Event()

    @classmethod
    def for_engine(cls, engine: AsyncEngine, interval_s: float) -> "WalCheckpointer | None":
        """One for a SQLite file's engine when `interval_s` > 0; None otherwise (PostgreSQL, memory)."""
        database = engine.url.database
        if engine.dialect.name != "sqlite" or not interval_s or not database or database == ":memory:":
            return None
        return cls(database, interval_s, getattr(engine.sync_engine.dialect, "beacon_backstop", None))

    def take_over(self) -> None:
        """From now on the engine's new connections leave checkpoints to this checkpointer, keeping
        only the backstop. Called before the serving process makes its first connection, so all its
        writers get it; processes that run no checkpointer (CLI commands) keep SQLite's default."""
        if self.backstop is not None:
            self.backstop.active = True

    async def run(self) -> None:
        """Checkpoint every interval until `request_stop`; a failure is logged and retried later."""
        log = logging.getLogger("beacon.db")
        try:
            while not self._stop.is_set():
                try:
                    await asyncio.to_thread(self.checkpoint)
                except sqlite3.Error as exc:
                    log.warning("WAL checkpoint failed (%s); retrying in %.1f s", exc, self.interval_s)
                await sleep_unless(self._stop, self.interval_s)
        finally:
            await asyncio.to_thread(self.close)

    def request_stop(self) -> None:
        self._stop.set()

    def checkpoint(self) -> tuple[int, int, int]:
        """One PASSIVE checkpoint (on the caller's thread): SQLite's (busy, WAL frames, frames copied)."""
        if self._conn is None:
            self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA busy_timeout=0")
        started = time.perf_counter()
        busy, wal_frames, copied = self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        took = time.perf_counter() - started
        if (wal_frames, copied) != self._last:  # the WAL moved since: this one had work
            self.runs += 1
            self.longest_s = max(self.longest_s, took)
        self._last = (wal_frames, copied)
        self.wal_frames = wal_frames
        return busy, wal_frames, copied

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class Backstop:
    """Whether this engine's connections keep only BACKSTOP_PAGES of automatic checkpointing (a
    WalCheckpointer of this process has taken the work over) or SQLite's default."""

    def __init__(self) -> None:
        self.active = False


def _sqlite_pragmas(busy_timeout_ms: int, backstop: Backstop) -> Any:
    def apply(dbapi_conn: Any, _record: Any) -> None:
        # WAL lets readers run beside the one writer; synchronous=NORMAL in WAL mode survives a process
        # crash (kill -9) with nothing committed lost, which is the durability promise we make.
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        if backstop.active:
            cursor.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_PAGES}")
        cursor.close()
        # Let SQLAlchemy's "begin" event issue BEGIN itself (the driver's implicit BEGIN is deferred).
        dbapi_conn.isolation_level = None

    return apply


class SlowStatements:
    """Logs each statement that took `threshold_ms` or longer, as a warning on `beacon.db.slow`: the time,
    the SQL with its placeholders (never the values, which may be personal data) and, for an
    executemany, how many rows. The time is the caller's wait: on SQLite a BEGIN IMMEDIATE that waited
    for another process's write lock shows here too. The group commits' and the nightly writes' calls
    straight to SQLite's thread (bot/batch.py) pass SQLAlchemy by and are not timed."""

    log = logging.getLogger("beacon.db.slow")

    def __init__(self, threshold_ms: int) -> None:
        self.threshold_s = threshold_ms / 1000

    @classmethod
    def watch(cls, engine: AsyncEngine, settings: DatabaseSettings) -> AsyncEngine:
        """`engine`, its statements timed when `[database] slow_statement_ms` is set (0: off)."""
        if settings.slow_statement_ms:
            watcher = cls(settings.slow_statement_ms)
            event.listen(engine.sync_engine, "before_cursor_execute", watcher._before)
            event.listen(engine.sync_engine, "after_cursor_execute", watcher._after)
        return engine

    def _before(self, conn: Any, _cursor: Any, _statement: str, _params: Any, _context: Any, _many: bool) -> None:
        conn.info["beacon_began"] = time.perf_counter()

    def _after(self, conn: Any, _cursor: Any, statement: str, params: Any, _context: Any, many: bool) -> None:
        took = time.perf_counter() - conn.info.pop("beacon_began", time.perf_counter())
        if took >= self.threshold_s:
            rows = f" ({len(params)} rows)" if many and isinstance(params, (list, tuple)) else ""
            self.log.warning("slow statement, %.0f ms%s: %s", took * 1000, rows, " ".join(statement.split())[:2000])


def create_engine(settings: DatabaseSettings) -> AsyncEngine:
    """An AsyncEngine for the configured URL, with SQLite pragmas applied on every connection (and slow
    statements logged: `slow_statement_ms`)."""
    return SlowStatements.watch(_create_engine(settings), settings)


def _create_engine(settings: DatabaseSettings) -> AsyncEngine:
    url = make_url(settings.url)
    if url.get_backend_name() == "sqlite":
        pool: dict[str, Any] = {}
        if url.database and url.database != ":memory:":  # a file: a queue pool, sized like PostgreSQL's
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
            pool = {"pool_size": settings.pool_size, "max_overflow": settings.max_overflow, "pool_timeout": settings.pool_timeout}
        # Checkpoints in the background (a serving Runtime's WalCheckpointer takes them over): writers
        # then keep a backstop only.
        backstop = Backstop()
        engine = _sqlite_engine(url, settings, backstop, **pool)
        engine.sync_engine.dialect.beacon_backstop = backstop  # type: ignore[attr-defined]
        WriteGate(settings.busy_timeout_ms / 1000).install(engine)
        return engine
    engine = create_async_engine(
        url,
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        pool_timeout=settings.pool_timeout,
    )
    Liveness().install(engine)
    return engine


# SQLSTATE classes of a server that cannot serve right now: connection exceptions (08…), operator
# intervention (57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot connect now: a restart or a
# failover in progress) and too many connections (53300).
_UNAVAILABLE_SQLSTATES = ("08", "57P", "53300")
_SQLITE_BUSY = ("database is locked", "database is busy")


def unavailable_reason(exc: BaseException) -> str | None:
    """Why `exc` means the database cannot serve right now, as a short phrase for the log (a moment
    later the same work would succeed: requests answer 503, handlers/unavailable.py; workers retry at
    their next pass, bot/worker.py), or None for any other error."""
    if isinstance(exc, PoolTimeout):
        return "no pooled connection free within [database] pool_timeout"
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return "the database connection was lost"
        orig = exc.orig
        if isinstance(orig, sqlite3.OperationalError) and str(orig).startswith(_SQLITE_BUSY):
            return f"SQLite: {orig}"
        state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
        if isinstance(state, str) and state.startswith(_UNAVAILABLE_SQLSTATES):
            return f"the database cannot serve (SQLSTATE {state})"
        return None
    # The driver's connect, which raises the socket's own errors: refused, reset (a server shutting
    # down), timed out, a host name that does not resolve, or asyncio's summary of every address tried.
    # Not aiohttp's own: a client gone while its response streamed, or WeCom's API unreachable.
    if isinstance(exc, aiohttp.ClientError):
        return None
    if isinstance(exc, (ConnectionRefusedError, ConnectionResetError, BrokenPipeError, TimeoutError, socket.gaierror)) or (
        type(exc) is OSError and str(exc).startswith("Multiple exceptions")
    ):
        return f"cannot connect ({type(exc).__name__}: {exc})"
    return None


_SERVER_CONNECTIONS = text(
    "SELECT current_setting('max_connections')::int, current_setting('superuser_reserved_connections')::int, "
    "(SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')::int"
)


async def connection_budget(settings: DatabaseSettings, processes: int) -> str | None:
    """PostgreSQL: why `processes` serving processes could ask the server for more connections than it
    takes (a warning to log), or None when they fit (or on SQLite, or when the server cannot be asked).

    Each serving process opens up to `pool_size + max_overflow` pooled connections, plus one for the
    wake-ups between processes ([database] notify). The pools open connections lazily, so this is the
    worst case, which a burst reaches: past `max_connections` (less the superuser's reserve and what
    other clients hold now) the server refuses new connections, and the requests that needed one
    answer 503 until the burst passes."""
    if make_url(settings.url).get_backend_name() != "postgresql":
        return None
    engine = create_async_engine(settings.url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            max_connections, reserved, in_use = (await conn.execute(_SERVER_CONNECTIONS)).one()
    except Exception as exc:  # the serving processes will report an unreachable database themselves
        logging.getLogger("beacon.db").debug("connection budget not checked: %s", type(exc).__name__)
        return None
    finally:
        await engine.dispose()
    each = settings.pool_size + settings.max_overflow + (1 if settings.notify else 0)
    free = max_connections - reserved - (in_use - 1)  # not counting the connection that asked
    if processes * each <= free:
        return None
    return (f"{processes} serving process(es) may open up to {processes * each} PostgreSQL connections "
            f"({processes} × ([database] pool_size {settings.pool_size} + max_overflow {settings.max_overflow}"
            f"{' + 1 for wake-ups' if settings.notify else ''})), but the server takes {free} more "
            f"(max_connections {max_connections}, {reserved} reserved, {in_use - 1} in use by other clients): "
            f"lower [database] pool_size or max_overflow, raise max_connections, or put PgBouncer in between")


# A pooled PostgreSQL connection is pinged before it is handed out only when it sat idle longer than
# this, or was last used before a connection of the pool was found dead. SQLAlchemy's pool_pre_ping
# pings on every checkout; its asyncpg ping is three round trips (BEGIN, a statement, ROLLBACK),
# measured here at about 250 µs of the event loop's CPU and 400 µs of waiting per checkout, paid by
# every group commit of link opens and callbacks, every tracker pass (several times) and every unit of
# work. A connection in steady use has just answered; one that sat idle may have been closed meanwhile
# (a server restart or failover, pg_terminate_backend, a firewall's idle timeout).
PING_IDLE_S = 2.0
_USED = "beacon_used_at"


class Liveness:
    """Pessimistic disconnect handling for a PostgreSQL engine's pool, paid only where it can matter.

    A connection the driver already knows closed (the server's goodbye read by the event loop: a
    restart, a failover, `pg_terminate_backend`) is replaced at checkout without a round trip
    (DisconnectionError: the pool connects anew). Of the others, one checked out within PING_IDLE_S
    of its last use is handed out as it is; an older one, or one last used before the pool saw a
    connection die (`lost`: SQLAlchemy's disconnect errors, the group commit's own asyncpg path,
    bot/batch.py, and a closed one found here), is pinged first, and replaced if the ping fails. The
    one operation that meets a connection dying unnoticed (between its checkout and its statement,
    or with the close not yet read) fails, as it would with a ping too (the group commit then writes
    its rows again on a connection checked first). `pings`, `closed` and `dead` count them; with
    `counter` (a Prometheus counter labelled by outcome: bot.metrics) set, so does /metrics."""

    def __init__(self, idle_s: float = PING_IDLE_S) -> None:
        self.idle_s = idle_s
        self.lost_at = 0.0
        self.pings = 0
        self.closed = 0  # known closed at checkout: replaced without a ping
        self.dead = 0  # failed their ping: replaced
        self.counter: Any = None

    def install(self, engine: AsyncEngine) -> None:
        sync = engine.sync_engine
        sync.dialect.beacon_liveness = self  # type: ignore[attr-defined]
        event.listen(sync.pool, "connect", self._fresh)
        event.listen(sync.pool, "checkin", self._fresh)
        event.listen(sync.pool, "checkout", self._checkout)
        event.listen(sync, "handle_error", self._error)

    @property
    def replaced(self) -> int:
        return self.closed + self.dead

    def lost(self) -> None:
        """A connection of the pool was found dead: the others are pinged before their next use."""
        self.lost_at = time.monotonic()

    def _fresh(self, dbapi_conn: Any, record: Any) -> None:
        if dbapi_conn is not None:  # None: checked in invalidated; its reconnection (`connect`) stamps it
            record.info[_USED] = time.monotonic()

    def _checkout(self, dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        if dbapi_conn.driver_connection.is_closed():  # asyncpg's own state: no round trip
            self.closed += 1
            self.lost()
            self._count("closed")
            raise DisconnectionError("pooled connection was closed by the server")
        used = record.info.get(_USED, 0.0)
        if used > self.lost_at and time.monotonic() - used <= self.idle_s:
            return
        self.pings += 1
        try:
            dbapi_conn.ping()
        except Exception as exc:
            self.dead += 1
            self.lost()
            self._count("dead")
            raise DisconnectionError(f"pooled connection failed its ping: {exc}") from exc
        self._count("alive")

    def _count(self, outcome: str) -> None:
        if self.counter is not None:
            self.counter.labels(outcome=outcome).inc()

    def _error(self, context: Any) -> None:
        if context.is_disconnect:
            self.lost()


def liveness(engine: AsyncEngine) -> Liveness | None:
    """The engine's Liveness (PostgreSQL), if it has one."""
    return getattr(engine.sync_engine.dialect, "beacon_liveness", None)


def _sqlite_engine(url: Any, settings: DatabaseSettings, backstop: Backstop, **pool: Any) -> AsyncEngine:
    """A SQLite engine on the hop-saving driver, with the pragmas applied to every connection."""
    engine = create_async_engine(url, connect_args={"timeout": settings.busy_timeout_ms / 1000}, **pool)
    sqlite_driver.use_for(engine.sync_engine)
    event.listen(engine.sync_engine, "connect", _sqlite_pragmas(settings.busy_timeout_ms, backstop))
    return engine


BACKGROUND_POOL = 2  # connections of the background readers (as many again at a peak): the nightly jobs run one after another


def create_background_engine(engine: AsyncEngine, settings: DatabaseSettings) -> AsyncEngine | None:
    """SQLite file: an engine of its own for reads that can wait (the nightly jobs' and the digests'),
    whose connections' threads run at background priority (bot/priority.py) and can only read
    (`PRAGMA query_only`). A chunk of decay's aggregates keeps SQLite busy for tens of milliseconds at a
    time, hundreds at a million contacts; at normal priority the link opens answered meanwhile got
    half of the core. Readers take no lock a writer waits for (WAL), so lowering them inverts nothing.

    None for PostgreSQL (a read's work is done by the server's own process, which a client cannot
    lower) and for a database in memory (one connection's): use the engine's read sessions there."""
    url = engine.url
    if engine.dialect.name != "sqlite" or not url.database or url.database == ":memory:":
        return None
    background = _sqlite_engine(url, settings, Backstop(), pool_size=BACKGROUND_POOL, max_overflow=BACKGROUND_POOL,
                                pool_timeout=settings.pool_timeout)
    SlowStatements.watch(background, settings)
    event.listen(background.sync_engine, "connect", _background_reader)
    event.listen(background.sync_engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN"))  # deferred: a reader's snapshot
    return background


def _background_reader(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA query_only=ON")  # a write here would bypass the WriteGate: refused
    cursor.close()
    if await_only(dbapi_conn.driver_connection._execute(background_priority)) is None:  # on the connection's own thread
        logging.getLogger("beacon.db").warning("could not lower a background reader's CPU priority: it runs at normal priority")


def session_factory(engine: AsyncEngine, **classes: Any) -> async_sessionmaker[AsyncSession]:
    """Sessions for units of work (on SQLite they take the write lock when they begin). `classes`:
    `class_` / `sync_session_class` for a worker's own session class (the inbox's, the tracker's)."""
    return async_sessionmaker(engine, expire_on_commit=False, **classes)


def read_only(engine: AsyncEngine) -> AsyncEngine:
    """The engine for work that only reads: on SQLite its transactions are plain (deferred) BEGINs that
    neither take the write lock nor wait for it (WriteGate), so a listing, a count or a health check
    runs beside a long write of this or another process.

    On PostgreSQL its statements run in autocommit: no BEGIN before them and no ROLLBACK after, two
    round trips per session (measured here: a read session of one statement took 533-598 µs of the
    event loop's CPU in a transaction, 320-332 µs without). Nothing changes for what it reads: at
    PostgreSQL's READ COMMITTED each statement of a transaction sees what was committed before it
    began, as a statement of its own does."""
    if engine.dialect.name == "postgresql":
        return engine.execution_options(**{READ_ONLY: True}, isolation_level="AUTOCOMMIT")
    return engine.execution_options(**{READ_ONLY: True})


def read_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that only read (hot paths, pages, listings): never wait for the writer on SQLite."""
    return async_sessionmaker(read_only(engine), expire_on_commit=False)


def _alembic_config(url: str) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def migrate_sync(url: str, revision: str = "head") -> None:
    """Bring the schema to `revision` (Alembic). Safe to run repeatedly."""
    from alembic import command

    command.upgrade(_alembic_config(url), revision)


async def migrate(url: str, revision: str = "head") -> None:
    # Alembic's env.py runs its own event loop for the async driver, so keep it off ours.
    await asyncio.to_thread(migrate_sync, url, revision)


def current_revision_sync(url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import create_engine as create_sync_engine

    sync_url = url.replace("+aiosqlite", "").replace("+asyncpg", "+psycopg")
    engine = create_sync_engine(sync_url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
