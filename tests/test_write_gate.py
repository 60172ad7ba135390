"""SQLite's write gate (bot/db.py WriteGate): this process's writers take turns in the event loop.

Without it, a second writer of the same process finds SQLite's write lock taken and waits in SQLite's
busy handler (or, with no busy timeout, fails at once). With it, they queue in order and none fails;
a writer that can never get its turn (it waits for itself) fails with "database is locked" after the
busy timeout instead of hanging.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from sqlalchemy import event, func, insert, select
from sqlalchemy.exc import OperationalError

from bot.db import create_engine, session_factory
from bot.models import Lease
from tests.conftest import T0, make_settings
from tests.helpers import engine_without_busy_wait


async def _write(sessions: Any, name: str) -> None:
    async with sessions() as session, session.begin():
        await session.execute(insert(Lease), {"name": name, "owner": "test", "locked_until": T0})


async def _names(engine: Any) -> list[str]:
    async with engine.connect() as conn:
        return sorted((await conn.scalars(select(Lease.name))).all())


async def test_concurrent_writers_take_turns_without_sqlite_busy_waits(sqlite_url: str) -> None:
    engine = engine_without_busy_wait(sqlite_url)
    sessions = session_factory(engine)
    order: list[int] = []

    async def writer(n: int) -> None:
        async with sessions() as session, session.begin():
            await session.execute(insert(Lease), {"name": f"w{n}", "owner": "test", "locked_until": T0})
            order.append(n)
            await asyncio.sleep(0.005)  # hold the lock across awaits, as a unit of work does

    try:
        await asyncio.gather(*(writer(n) for n in range(20)))
        async with engine.connect() as conn:
            assert await conn.scalar(select(func.count()).select_from(Lease)) == 20
    finally:
        await engine.dispose()
    assert sorted(order) == list(range(20))  # none met SQLite's lock: they waited for their turn at the gate


async def test_a_writer_waiting_for_itself_fails_after_the_busy_timeout(sqlite_url: str) -> None:
    settings = make_settings(sqlite_url, database={"url": sqlite_url, "busy_timeout_ms": 300})
    engine = create_engine(settings.database)
    sessions = session_factory(engine)
    try:
        async with sessions() as outer, outer.begin():
            await outer.execute(insert(Lease), {"name": "outer", "owner": "test", "locked_until": T0})
            started = time.monotonic()
            with pytest.raises(OperationalError, match="database is locked"):
                async with sessions() as inner, inner.begin():
                    await inner.execute(insert(Lease), {"name": "inner", "owner": "test", "locked_until": T0})
            assert 0.25 < time.monotonic() - started < 5
        await _write(sessions, "later")  # the gate opened again when the outer unit of work committed
        names = await _names(engine)
    finally:
        await engine.dispose()
    assert names == ["later", "outer"]


async def test_the_gate_opens_when_a_unit_of_work_fails(sqlite_url: str) -> None:
    settings = make_settings(sqlite_url, database={"url": sqlite_url, "busy_timeout_ms": 300})
    engine = create_engine(settings.database)
    sessions = session_factory(engine)
    try:
        with pytest.raises(ZeroDivisionError):
            async with sessions() as session, session.begin():
                await session.execute(insert(Lease), {"name": "lost", "owner": "test", "locked_until": T0})
                1 / 0
        session = sessions()
        await session.execute(insert(Lease), {"name": "abandoned", "owner": "test", "locked_until": T0})
        await session.close()  # neither committed nor rolled back by the caller: the pool's reset ends it
        await _write(sessions, "kept")
        names = await _names(engine)
    finally:
        await engine.dispose()
    assert names == ["kept"]


async def test_a_writer_cancelled_mid_transaction_opens_the_gate(sqlite_url: str) -> None:
    """As at shutdown: a task holding the gate is cancelled between statements; the next writer
    still gets its turn (not "database is locked")."""
    settings = make_settings(sqlite_url, database={"url": sqlite_url, "busy_timeout_ms": 3000})
    engine = create_engine(settings.database)
    sessions = session_factory(engine)
    inside = asyncio.Event()

    async def stuck() -> None:
        async with sessions() as session, session.begin():
            await session.execute(insert(Lease), {"name": "stuck", "owner": "test", "locked_until": T0})
            inside.set()
            await asyncio.sleep(3600)

    try:
        task = asyncio.create_task(stuck())
        await inside.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await _write(sessions, "after")
        names = await _names(engine)
    finally:
        await engine.dispose()
    assert names == ["after"]


async def test_background_work_waits_for_the_transaction_in_progress(sqlite_url: str) -> None:
    """`after_writer`: background CPU work goes after the write transaction in progress (it would
    stretch it, and SQLite's lock with it), returns at once when there is none, and waits one
    transaction at most (bounded: a holder that keeps the lock does not stop it)."""
    from bot.db import write_gate, yield_to_writer

    engine = engine_without_busy_wait(sqlite_url)
    sessions = session_factory(engine)
    gate = write_gate(engine)
    assert gate is not None
    order: list[str] = []
    release = asyncio.Event()

    async def writer(name: str) -> None:
        async with sessions() as session, session.begin():
            await session.execute(insert(Lease), {"name": name, "owner": "test", "locked_until": T0})
            order.append(f"{name} holds")
            await release.wait()

    async def background(name: str, **kwargs: Any) -> None:
        await gate.after_writer(**kwargs)
        order.append(f"{name} ran")

    event.listen(engine.sync_engine, "commit", lambda _conn: order.append("w1 committed"))
    try:
        await background("alone")  # nothing open: no wait
        holder = asyncio.create_task(writer("w1"))
        while "w1 holds" not in order:
            await asyncio.sleep(0)
        job = asyncio.create_task(background("job"))
        await background("impatient", timeout_s=0.01)  # the holder keeps the lock: it goes anyway
        assert not job.done()
        release.set()
        await asyncio.gather(holder, job)
        await yield_to_writer(engine)  # nothing open again
    finally:
        await engine.dispose()
    assert order == ["alone ran", "w1 holds", "impatient ran", "w1 committed", "job ran"]
