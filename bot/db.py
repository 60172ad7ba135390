"""Engine and sessions: SQLite (WAL) by default, PostgreSQL via asyncpg for scale-out.

Nothing here runs at import time; `create_engine(settings)` is called by the app factory and the CLI.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from bot.config import DatabaseSettings

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def is_sqlite(engine_or_url: AsyncEngine | str) -> bool:
    url = engine_or_url if isinstance(engine_or_url, str) else str(engine_or_url.url)
    return url.startswith("sqlite")


READ_ONLY = "beacon_read_only"


def _sqlite_begin(conn: Any) -> None:
    # A deferred transaction that reads and then writes fails at once with SQLITE_BUSY_SNAPSHOT when
    # another connection committed in between (WAL mode; the busy timeout does not apply). Units of
    # work therefore take the write lock up front; read-only sessions opt out and never block.
    if conn.get_execution_options().get(READ_ONLY):
        conn.exec_driver_sql("BEGIN")
    else:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _sqlite_pragmas(busy_timeout_ms: int) -> Any:
    def apply(dbapi_conn: Any, _record: Any) -> None:
        # WAL lets readers run beside the one writer; synchronous=NORMAL in WAL mode survives a process
        # crash (kill -9) with nothing committed lost, which is the durability promise we make.
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.close()
        # Let SQLAlchemy's "begin" event issue BEGIN itself (the driver's implicit BEGIN is deferred).
        dbapi_conn.isolation_level = None

    return apply


def create_engine(settings: DatabaseSettings) -> AsyncEngine:
    """An AsyncEngine for the configured URL, with SQLite pragmas applied on every connection."""
    url = make_url(settings.url)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": settings.busy_timeout_ms / 1000})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas(settings.busy_timeout_ms))
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
        return engine
    return create_async_engine(
        url,
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        pool_timeout=settings.pool_timeout,
        pool_pre_ping=True,
    )


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions for units of work (on SQLite they take the write lock when they begin)."""
    return async_sessionmaker(engine, expire_on_commit=False)


def read_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that only read (hot paths, pages): never wait for the writer on SQLite."""
    return async_sessionmaker(engine.execution_options(**{READ_ONLY: True}), expire_on_commit=False)


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
