"""Waking the workers of other processes: LISTEN/NOTIFY on PostgreSQL; on SQLite, for the workers of
`serve --workers N` on one file, a watch of the file's commits.

A process wakes its own workers when it stores work for them (an event for the tracker, a callback
for the inbox: `PollingWorker.wake`). With several processes, the worker that can take the work may
run in another one: the tracker runs only in the process holding the `tracker` lease, and a process
with `[inbox] workers = 0` stores callbacks for the others to process. Those workers found the work
at their next poll (`[tracker] poll_s`, `[inbox] poll_s`: a second by default), so most events of an
N-process deployment waited up to a second before anyone scored them.

On PostgreSQL every serving process keeps one connection of its own (outside the pool) that LISTENs
on a channel per kind of worker it runs (TRACKER, INBOX). A process that stored work for a worker it does not run
sends NOTIFY on that worker's channel, and the processes that run one start a pass at once.
- Notifications are coalesced: however many stores wake a worker, a process sends at most one NOTIFY
  per channel every COALESCE_S. Storing never waits for it: `notify` only marks the channel.
- A wake-up is sent after the work is committed (its callers wake workers once the store returned),
  so the woken worker finds it. A process ignores its own notifications.
- Best effort. Polling goes on as before, so a notification lost (the connection dropped, the server
  restarted) costs at most a poll interval. A lost connection is logged once and reconnected, after
  1 s and doubling up to RECONNECT_MAX_S.

SQLite has no NOTIFY. The trackers of `serve --workers N` (one file, several processes) each watch
it instead (`CommitWatch`): every WATCH_S, `PRAGMA data_version` on a read-only connection of their
own, which changes whenever another connection committed; a change wakes this process's tracker,
which looks for events as it would at its poll. Its own process's commits change it too, so the
tracker sometimes looks and finds nothing: a read, no write lock. The inbox workers do not watch
(each worker processes the callbacks it stores, and their claim is a write transaction), nor does a
single `serve` process (nothing else writes its work).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import sqlite3
from pathlib import Path
from typing import Any, Callable

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.clock import sleep_unless

log = logging.getLogger("beacon.notify")

TRACKER = "beacon_tracker"
INBOX = "beacon_inbox"
COALESCE_S = 0.005
RECONNECT_MAX_S = 30.0
CONNECT_TIMEOUT_S = 10.0
SEND_TIMEOUT_S = 5.0  # a NOTIFY not answered by then: the connection is taken for lost and made again
APPLICATION_NAME = "beacon-wakeups"


def connect_args(engine: AsyncEngine) -> dict[str, Any]:
    """asyncpg.connect's arguments for the engine's database (host, port, user, password, database,
    and whatever else the URL carries that asyncpg takes)."""
    _args, kwargs = engine.dialect.create_connect_args(engine.url)
    accepted = inspect.signature(asyncpg.connect).parameters
    args = {k: v for k, v in kwargs.items() if k in accepted} | {"timeout": CONNECT_TIMEOUT_S}
    settings = dict(args.get("server_settings") or {})
    settings.setdefault("application_name", APPLICATION_NAME)  # pg_stat_activity tells these apart
    return args | {"server_settings": settings}


class CrossWake:
    """One process's LISTEN/NOTIFY connection: `notify(channel)` wakes that channel's workers in the
    other processes; a notification from another process calls `on_wake[channel]()` here."""

    def __init__(self, engine: AsyncEngine, on_wake: dict[str, Callable[[], None]], metrics: Any = None) -> None:
        self.engine = engine
        self.on_wake = on_wake
        self.metrics = metrics  # bot.metrics.Metrics: wakeups_sent / wakeups_received by channel
        self._pending: set[str] = set()
        self._kick = asyncio.Event()
        self._closed = asyncio.Event()
        self._conn: asyncpg.Connection | None = None
        self._lost = asyncio.Event()

    def notify(self, channel: str) -> None:
        """Wake `channel`'s workers in the other processes, soon (never blocks)."""
        self._pending.add(channel)
        self._kick.set()

    async def run(self) -> None:
        backoff = 1.0
        while not self._closed.is_set():
            try:
                await self._connect()
            except Exception as exc:  # whatever stops it (server down, auth): polling goes on meanwhile
                log.warning("cannot listen for other processes' wake-ups (%s); retrying in %.0f s, polling meanwhile",
                            type(exc).__name__, backoff)
                await sleep_unless(self._closed, backoff)  # not the kick: a store during an outage must not hurry the reconnects
                backoff = min(backoff * 2, RECONNECT_MAX_S)
                continue
            backoff = 1.0
            try:
                await self._send_loop()
            except Exception as exc:  # the connection dropped, a NOTIFY timed out, …: start over
                if not self._closed.is_set():
                    log.warning("lost the wake-up connection (%s); reconnecting", type(exc).__name__)
            finally:
                await self._drop()
            if not self._closed.is_set():
                await sleep_unless(self._closed, backoff)

    async def _connect(self) -> None:
        self._lost.clear()
        conn = await asyncpg.connect(**connect_args(self.engine))
        try:
            for channel in self.on_wake:
                await conn.add_listener(channel, self._received)
        except BaseException:
            await conn.close()
            raise
        conn.add_termination_listener(lambda _conn: self._lost.set())
        self._conn = conn
        if self._pending:
            self._kick.set()  # marked while disconnected: send them now

    async def _send_loop(self) -> None:
        assert self._conn is not None
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            while not self._closed.is_set():
                kicked = asyncio.ensure_future(self._kick.wait())
                try:
                    await asyncio.wait({kicked, lost}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    kicked.cancel()
                if self._closed.is_set():
                    return
                if lost.done():
                    raise asyncpg.InterfaceError("connection closed")
                self._kick.clear()
                channels, self._pending = self._pending, set()
                for channel in sorted(channels):
                    await self._conn.execute(f"NOTIFY {channel}", timeout=SEND_TIMEOUT_S)  # TRACKER or INBOX: fixed identifiers
                    if self.metrics is not None:
                        self.metrics.wakeups_sent.labels(channel=channel).inc()
                await asyncio.sleep(COALESCE_S)  # stores meanwhile join the next NOTIFY
        finally:
            lost.cancel()

    def _received(self, conn: Any, pid: int, channel: str, _payload: str) -> None:
        if pid == conn.get_server_pid():
            return  # our own
        wake = self.on_wake.get(channel)
        if wake is not None:
            if self.metrics is not None:
                self.metrics.wakeups_received.labels(channel=channel).inc()
            wake()

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), 2.0)
            except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                conn.terminate()

    async def close(self) -> None:
        self._closed.set()
        self._kick.set()  # ends the send loop's wait
        await self._drop()


WATCH_S = 0.05


class CommitWatch:
    """SQLite: calls each of `on_change` when another connection (another process) committed to the
    file at `path`, checking every WATCH_S."""

    def __init__(self, path: str, on_change: list[Callable[[], None]], interval_s: float = WATCH_S) -> None:
        self.path = path
        self.on_change = on_change
        self.interval_s = interval_s
        self.changes = 0
        self._closed = asyncio.Event()

    async def run(self) -> None:
        conn = await asyncio.to_thread(self._open)
        try:
            last = await asyncio.to_thread(_data_version, conn)
            while not await sleep_unless(self._closed, self.interval_s):
                version = await asyncio.to_thread(_data_version, conn)
                if version != last:
                    last = version
                    self.changes += 1
                    for wake in self.on_change:
                        wake()
        finally:
            conn.close()

    def _open(self) -> sqlite3.Connection:
        uri = Path(self.path).resolve().as_uri()  # percent-encoded: a path may hold '?' or '#'
        return sqlite3.connect(f"{uri}?mode=ro", uri=True, check_same_thread=False)

    def close(self) -> None:
        self._closed.set()


def _data_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA data_version").fetchone()[0])
