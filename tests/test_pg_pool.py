"""PostgreSQL's connection pool (bot/db.py Liveness): a connection the driver knows closed is replaced
without a round trip, one in steady use is handed out as it is, one that sat idle is pinged first and
replaced when it is dead, and a connection that dies unnoticed while in steady use costs no answered
link open: the group commit writes its rows again on live connections."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from pathlib import Path
from typing import Any, Callable

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError

from bot.db import PING_IDLE_S, create_engine, liveness
from tests.conftest import make_settings
from tests.test_links import AUTH, browsers, events, share  # noqa: F401,F811  (fixtures)
from tests.test_scaleout import _db

pytestmark = pytest.mark.parametrize("db_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)


async def _terminate_others(url: str) -> int:
    """Every other connection to this database is closed by the server, as a restart or failover would."""
    conn = await _db(url)
    try:
        return len(await conn.fetch("SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"))
    finally:
        await conn.close()


def _terminate_unnoticed(url: str, pid: int) -> None:
    """The server ends backend `pid` (and it is gone when this returns) while this thread's event loop
    runs nothing: the driver has not read the server's goodbye, as when a network path dies silently."""
    def kill() -> None:
        async def run() -> None:
            conn = await _db(url)
            try:
                assert await conn.fetchval("SELECT pg_terminate_backend($1, 5000)", pid)
            finally:
                await conn.close()
        asyncio.run(run())

    killer = threading.Thread(target=kill)
    killer.start()
    killer.join()


async def _until(condition: Callable[[], bool]) -> None:
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met within 2 s")


def _kill_at_checkout(engine: Any, url: str, task_name: str | None = None, skip: int = 0) -> list[int]:
    """Once armed, the next checkout (by the task named `task_name`, if given; after `skip` others)
    hands out a connection the server ends unnoticed after the pool's own checks: the statement that
    follows meets it dead."""
    killed: list[int] = []
    skipped = [0]

    def checkout(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
        if killed or (task_name is not None and asyncio.current_task().get_name() != task_name):
            return
        if skipped[0] < skip:
            skipped[0] += 1
            return
        pid = dbapi_conn.driver_connection.get_server_pid()
        killed.append(pid)
        _terminate_unnoticed(url, pid)

    event.listen(engine.sync_engine.pool, "checkout", checkout)  # after Liveness's own listener
    return killed


async def _pooled_driver(engine: Any) -> tuple[int, Any]:
    async with engine.connect() as conn:
        pid = int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())
        return pid, (await conn.get_raw_connection()).driver_connection


async def test_a_closed_connection_is_replaced_unpinged_a_busy_one_is_not_pinged_an_idle_one_is(db_url: str) -> None:
    engine = create_engine(make_settings(db_url).database)
    alive = liveness(engine)
    assert alive is not None and alive.idle_s == PING_IDLE_S
    try:
        pid, driver = await _pooled_driver(engine)
        assert {(await _pooled_driver(engine))[0] for _ in range(30)} == {pid}
        assert (alive.pings, alive.replaced) == (0, 0)  # SQLAlchemy's pool_pre_ping: 30 pings of three round trips

        assert await _terminate_others(db_url) >= 1  # a restart: the server says goodbye on every connection
        await _until(driver.is_closed)  # ... which the event loop reads
        pid, driver = await _pooled_driver(engine)  # replaced at checkout, no round trip: the statement never sees it
        assert (alive.pings, alive.closed, alive.replaced) == (0, 1, 1)

        alive.idle_s = 0.05
        await asyncio.sleep(0.1)
        assert (await _pooled_driver(engine))[0] == pid and (alive.pings, alive.replaced) == (1, 1)  # idle: pinged, alive

        await asyncio.sleep(0.1)
        _terminate_unnoticed(db_url, pid)  # idle and dead, its close not read: the ping finds out
        assert not driver.is_closed()
        replacement, _ = await _pooled_driver(engine)
        assert replacement != pid and (alive.pings, alive.closed, alive.replaced) == (2, 1, 2)
    finally:
        await engine.dispose()


async def test_connections_lost_cost_no_answered_open_and_no_page(beacon: Any, lib: Path, browsers: Any,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    url = beacon.rt.settings.database.url
    engine = beacon.rt.engine
    alive = liveness(engine)
    assert alive is not None
    s = await share(beacon, "case-auto-parts-oee")
    status, _, _ = await browsers().get(f"/l/{s['token']}")
    assert status == 200

    # A restart whose goodbye the event loop has read: every connection is replaced as it is checked
    # out, with no failed statement anywhere.
    _, driver = await _pooled_driver(engine)
    assert await _terminate_others(url) >= 1
    await _until(driver.is_closed)
    await asyncio.sleep(0.05)  # the pool's other connections got theirs at the same moment
    with caplog.at_level(logging.WARNING):
        status, _, _ = await browsers().get(f"/l/{s['token']}")
        assert status == 200
        listing = await beacon.client.get("/api/content", headers=AUTH)
        assert listing.status == 200, await listing.text()
    assert alive.closed >= 1 and "the connection was lost" not in caplog.text
    caplog.clear()

    # Dead unnoticed between the group commit's checkout and its statements: the batch fails once and is
    # written again on a connection the pool checks first; the open is answered and stored.
    killed = _kill_at_checkout(engine, url, task_name="batch-events")
    with caplog.at_level(logging.WARNING, logger="beacon.batch"):
        for n in range(3):
            status, _, _ = await browsers().get(f"/l/{s['token']}")
            assert status == 200, n
    assert len(killed) == 1
    assert "the connection was lost" in caplog.text and "writing the batch of 1 again" in caplog.text
    assert len([e for e in await events(beacon) if e.type == "open"]) == 5

    # SQLAlchemy's own path, unnoticed: the one statement that meets it fails, the next session works.
    killed = _kill_at_checkout(engine, url, task_name=asyncio.current_task().get_name())
    async with beacon.rt.sessions() as session:
        with pytest.raises(DBAPIError) as lost:
            await session.execute(text("SELECT 1"))
    assert lost.value.connection_invalidated and len(killed) == 1
    async with beacon.rt.sessions() as session:
        assert (await session.execute(text("SELECT 1"))).scalar_one() == 1

    # A page or API request that meets one: 503 with Retry-After (handlers/unavailable.py), and the next
    # request is served.
    killed = _kill_at_checkout(engine, url)
    listing = await beacon.client.get("/api/content", headers=AUTH)
    assert listing.status == 503 and listing.headers["Retry-After"] == "5" and len(killed) == 1
    assert (await beacon.client.get("/api/content", headers=AUTH)).status == 200

    alive.idle_s = 0.05
    await asyncio.sleep(0.1)
    status, _, _ = await browsers().get(f"/l/{s['token']}")  # its group commit's connection sat idle: pinged
    assert status == 200 and alive.pings >= 1
    metrics = (await (await beacon.client.get("/metrics")).read()).decode()
    counted = {outcome: float(n) for outcome, n in
               re.findall(r'^beacon_db_connection_checks_total\{outcome="(\w+)"\} (\S+)$', metrics, re.M)}
    assert counted.get("alive", 0.0) + counted.get("dead", 0.0) == alive.pings
    assert counted["closed"] == alive.closed and counted.get("dead", 0.0) + counted["closed"] == alive.replaced

    # /metrics whose queue reads meet one after its health check passed: the counters are served anyway.
    killed = _kill_at_checkout(engine, url, skip=1)
    scraped = await beacon.client.get("/metrics")
    assert scraped.status == 200 and len(killed) == 1 and "beacon_unavailable_answers_total 1.0" in await scraped.text()


async def test_read_sessions_run_without_a_transaction(db_url: str) -> None:
    """Read sessions (pages, the tracker's look-ahead, health) on PostgreSQL: no BEGIN and ROLLBACK
    round trips around their statements; units of work keep their transaction."""
    from bot.db import read_session_factory, session_factory

    engine = create_engine(make_settings(db_url).database)
    try:
        for factory, in_transaction in ((read_session_factory(engine), False), (session_factory(engine), True)):
            async with factory() as session:
                assert (await session.execute(text("SELECT 1"))).scalar_one() == 1
                driver = (await (await session.connection()).get_raw_connection()).driver_connection
                assert driver.is_in_transaction() is in_transaction
    finally:
        await engine.dispose()
