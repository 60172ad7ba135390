"""Where a benchmark's databases live: SQLite files (the default) or PostgreSQL databases.

A benchmark prepares one database by name, then starts each round from a fresh copy of it, and reads
counts back after the app stopped. `Store` gives those three operations for either kind, so the same
benchmark runs on both (`--db sqlite|postgresql`):
- SQLite: files in the benchmark's temp dir, copied with their -wal/-shm files;
- PostgreSQL: databases on one server (`--pg-url`, default the local test server), named
  `beacon_bench_<pid>_<name>`, copied with `CREATE DATABASE … TEMPLATE …` (the app that used the
  source is stopped by then), all dropped by `close()`.
SQL given to `query` / `execute` must be valid on both (`processed = false`, not `= 0`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import shutil
import sqlite3
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

DEFAULT_PG_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
KINDS = ("sqlite", "postgresql")


class Store(ABC):
    kind: str

    @staticmethod
    def open(kind: str, tmp: Path, *, pg_url: str = DEFAULT_PG_URL) -> "Store":
        if kind == "sqlite":
            return SqliteStore(tmp)
        if kind == "postgresql":
            return PostgresStore(pg_url)
        raise ValueError(f"unknown database kind {kind!r} (one of {', '.join(KINDS)})")

    @abstractmethod
    def url(self, name: str) -> str:
        """The app's `[database] url` for the database `name`."""

    def create(self, name: str) -> None:
        """An empty database (the app's `migrate` creates the tables)."""

    @abstractmethod
    def copy(self, src: str, dst: str) -> None:
        """Database `dst` as a copy of `src`."""

    @abstractmethod
    def query(self, name: str, sql: str) -> list[tuple[Any, ...]]:
        """The rows of one SELECT."""

    @abstractmethod
    def execute(self, name: str, sql: str, rows: Sequence[Sequence[Any]] = ()) -> None:
        """One statement; with `rows`, once per row (placeholders: `?` on SQLite, `$1…` on PostgreSQL)."""

    @abstractmethod
    def sql(self, name: str) -> "Sql":
        """A connection to the database `name` for hand-written SQL (`Sql`); close it when done."""

    @abstractmethod
    def size_mb(self, name: str) -> float:
        """The database's size on disk."""

    def placeholders(self, n: int) -> str:
        """`n` positional placeholders for `execute`, comma-separated."""
        return ", ".join("?" * n if self.kind == "sqlite" else (f"${i}" for i in range(1, n + 1)))

    def close(self) -> None:
        """Drop what this store created (SQLite: nothing; the temp dir goes with the benchmark)."""

    @abstractmethod
    def describe(self) -> str:
        """One line for the report: which database, which version."""


class SqliteStore(Store):
    kind = "sqlite"

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp

    def path(self, name: str) -> Path:
        return self.tmp / f"{name}.db"

    def url(self, name: str) -> str:
        return f"sqlite+aiosqlite:///{self.path(name)}"

    def copy(self, src: str, dst: str) -> None:
        for suffix in ("", "-wal", "-shm"):
            source = Path(f"{self.path(src)}{suffix}")
            target = Path(f"{self.path(dst)}{suffix}")
            if source.exists():
                shutil.copyfile(source, target)
                _settle(target)
            elif target.exists():
                target.unlink()

    def query(self, name: str, sql: str) -> list[tuple[Any, ...]]:
        with sqlite3.connect(f"file:{self.path(name)}?mode=ro", uri=True) as conn:
            return conn.execute(sql).fetchall()

    def execute(self, name: str, sql: str, rows: Sequence[Sequence[Any]] = ()) -> None:
        conn = sqlite3.connect(self.path(name))
        try:
            with conn:
                if rows:
                    conn.executemany(sql, rows)
                else:
                    conn.execute(sql)
        finally:
            conn.close()

    def sql(self, name: str) -> "Sql":
        return SqliteSql(self.path(name))

    def size_mb(self, name: str) -> float:
        return sum(Path(f"{self.path(name)}{suffix}").stat().st_size for suffix in ("", "-wal")
                   if Path(f"{self.path(name)}{suffix}").exists()) / 2**20

    def drop(self, name: str) -> None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path(name)}{suffix}").unlink(missing_ok=True)

    def describe(self) -> str:
        return f"SQLite {sqlite3.sqlite_version} (WAL), files in {self.tmp}"


def _settle(path: Path) -> None:
    """Write a fresh copy out to disk before anything is timed on it: a copy of many gigabytes leaves
    gigabytes of dirty pages, and their writeback (with the kernel throttling writers meanwhile) would
    otherwise fall into the next measurement (a suspected cause of the single 100 ms+ write
    transactions in the full-size nightly run)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PostgresStore(Store):
    kind = "postgresql"

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.prefix = f"beacon_bench_{os.getpid()}"
        self.created: list[str] = []
        server, _, _db = admin_url.rpartition("/")
        self.server = server  # postgresql://user@host:port

    def _db(self, name: str) -> str:
        return f"{self.prefix}_{name}"

    def dsn(self, name: str) -> str:
        """asyncpg's address of the database `name`."""
        return f"{self.server}/{self._db(name)}"

    def url(self, name: str) -> str:
        return self.dsn(name).replace("postgresql://", "postgresql+asyncpg://", 1)

    def _run(self, dsn: str, work: Any) -> Any:
        import asyncpg

        async def go() -> Any:
            conn = await asyncpg.connect(dsn)
            try:
                return await work(conn)
            finally:
                await conn.close()

        return asyncio.run(go())

    def _admin(self, *statements: str) -> None:
        async def work(conn: Any) -> None:
            for sql in statements:
                await conn.execute(sql)

        self._run(self.admin_url, work)

    def create(self, name: str) -> None:
        db = self._db(name)
        self._admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)', f'CREATE DATABASE "{db}"')
        self.created.append(db)

    def copy(self, src: str, dst: str) -> None:
        source, target = self._db(src), self._db(dst)
        self._admin(
            f'DROP DATABASE IF EXISTS "{target}" WITH (FORCE)',
            # A template must have no other connections; the app that used it has stopped.
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{source}' AND pid <> pg_backend_pid()",
            f'CREATE DATABASE "{target}" TEMPLATE "{source}"',
        )
        self.created.append(target)

    def query(self, name: str, sql: str) -> list[tuple[Any, ...]]:
        async def work(conn: Any) -> list[tuple[Any, ...]]:
            return [tuple(r) for r in await conn.fetch(sql)]

        return self._run(self.dsn(name), work)

    def execute(self, name: str, sql: str, rows: Sequence[Sequence[Any]] = ()) -> None:
        async def work(conn: Any) -> None:
            if rows:
                await conn.executemany(sql, rows)
            else:
                await conn.execute(sql)

        self._run(self.dsn(name), work)

    def sql(self, name: str) -> "Sql":
        return PostgresSql(self.dsn(name))

    def size_mb(self, name: str) -> float:
        return self._run(self.dsn(name), lambda conn: conn.fetchval("SELECT pg_database_size(current_database())")) / 2**20

    def drop(self, name: str) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{self._db(name)}" WITH (FORCE)')

    def close(self) -> None:
        if not self.created:
            return
        self._admin(*(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)' for db in dict.fromkeys(self.created)))
        self.created.clear()

    def describe(self) -> str:
        version = self._run(self.admin_url, lambda conn: conn.fetchval("SHOW server_version"))
        return f"PostgreSQL {version} at {self.server.rsplit('@', 1)[-1]} (asyncpg)"


class Sql(ABC):
    """One connection for a benchmark's hand-written SQL, the same on both databases: named parameters
    (`:name`), aware datetimes in and each database's own timestamps back, `write()` for a timed write
    transaction. The SQL itself must suit the database (`self.dialect`) where the two differ."""

    dialect: str

    @abstractmethod
    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """Every row of one query."""

    @abstractmethod
    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> int:
        """One statement; returns how many rows it changed."""

    @abstractmethod
    def _begin(self) -> None: ...

    @abstractmethod
    def _end(self, commit: bool) -> None: ...

    @contextmanager
    def write(self, held: list[float]) -> Iterator["Sql"]:
        """A write transaction (SQLite: BEGIN IMMEDIATE, the write lock from the start); appends the
        seconds from BEGIN to just before COMMIT to `held` (a WAL checkpoint after COMMIT does not
        block other writers)."""
        self._begin()
        started = time.perf_counter()
        try:
            yield self
        except BaseException:
            held.append(time.perf_counter() - started)
            self._end(False)
            raise
        held.append(time.perf_counter() - started)
        self._end(True)

    @abstractmethod
    def close(self) -> None: ...


def sqlite_ts(value: dt.datetime) -> str:
    """An aware datetime as bot.models stores it on SQLite (naive UTC text)."""
    return value.astimezone(dt.timezone.utc).replace(tzinfo=None).isoformat(" ", "microseconds")


class SqliteSql(Sql):
    dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        self.con = sqlite3.connect(path, timeout=60, isolation_level=None)
        self.con.execute("PRAGMA synchronous=NORMAL")
        self.con.execute("PRAGMA foreign_keys=ON")

    @staticmethod
    def _params(params: Mapping[str, Any] | None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in (params or {}).items():
            if isinstance(value, dt.datetime):
                value = sqlite_ts(value)
            elif isinstance(value, dt.date):
                value = value.isoformat()
            out[key] = value
        return out

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        return self.con.execute(sql, self._params(params)).fetchall()

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> int:
        return self.con.execute(sql, self._params(params)).rowcount

    def _begin(self) -> None:
        self.con.execute("BEGIN IMMEDIATE")

    def _end(self, commit: bool) -> None:
        self.con.execute("COMMIT" if commit else "ROLLBACK")

    def close(self) -> None:
        self.con.close()


_NAMED = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


class PostgresSql(Sql):
    """asyncpg behind a synchronous face (its own event loop): hand-written SQL runs a handful of
    set-based statements, so the loop's cost per call does not matter."""

    dialect = "postgresql"

    def __init__(self, dsn: str) -> None:
        import asyncpg

        self.loop = asyncio.new_event_loop()
        self.conn = self.loop.run_until_complete(asyncpg.connect(dsn))
        self._tx: Any = None
        self._compiled: dict[str, tuple[str, list[str]]] = {}

    def _positional(self, sql: str, params: Mapping[str, Any] | None) -> tuple[str, list[Any]]:
        compiled = self._compiled.get(sql)
        if compiled is None:
            names: list[str] = []

            def number(match: re.Match[str]) -> str:
                if match.group(1) not in names:
                    names.append(match.group(1))
                return f"${names.index(match.group(1)) + 1}"

            compiled = self._compiled[sql] = (_NAMED.sub(number, sql), names)
        text, names = compiled
        values = []
        for name in names:
            value = (params or {})[name]
            if isinstance(value, dt.datetime):
                value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)  # columns are naive UTC
            values.append(value)
        return text, values

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        text, values = self._positional(sql, params)
        return [tuple(r) for r in self.loop.run_until_complete(self.conn.fetch(text, *values))]

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> int:
        text, values = self._positional(sql, params)
        status = self.loop.run_until_complete(self.conn.execute(text, *values))
        last = status.rsplit(" ", 1)[-1]
        return int(last) if last.isdigit() else 0

    def _begin(self) -> None:
        self._tx = self.conn.transaction()
        self.loop.run_until_complete(self._tx.start())

    def _end(self, commit: bool) -> None:
        tx, self._tx = self._tx, None
        self.loop.run_until_complete(tx.commit() if commit else tx.rollback())

    def close(self) -> None:
        self.loop.run_until_complete(self.conn.close())
        self.loop.close()
