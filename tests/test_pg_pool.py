"""PostgreSQL's connection pool (bot/db.py Liveness): a connection in steady use is handed out as it is,
one that sat idle is pinged first and replaced when it is dead, and a connection that dies while in
steady use costs no answered link open: the group commit writes its rows again on live connections."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from bot.db import PING_IDLE_S, create_engine, liveness
from tests.conftest import make_settings
from tests.test_links import browsers, events, lib, share  # noqa: F401,F811  (fixtures)
from tests.test_scaleout import _db

pytestmark = pytest.mark.parametrize("db_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)


async def _terminate_others(url: str) -> int:
    """Every other connection to this database is closed by the server, as a restart or failover would."""
    conn = await _db(url)
    try:
        return len(await conn.fetch("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"))
    finally:
        await conn.close()


async def _backend_pid(engine: Any) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())


async def test_a_connection_in_steady_use_is_not_pinged_an_idle_one_is_and_a_dead_one_is_replaced(db_url: str) -> None:
    engine = create_engine(make_settings(db_url).database)
    alive = liveness(engine)
    assert alive is not None and alive.idle_s == PING_IDLE_S
    try:
        pid = await _backend_pid(engine)
        assert {await _backend_pid(engine) for _ in range(30)} == {pid}
        assert (alive.pings, alive.replaced) == (0, 0)  # SQLAlchemy's pool_pre_ping: 30 pings of three round trips

        alive.idle_s = 0.05
        await asyncio.sleep(0.1)
        assert await _backend_pid(engine) == pid and (alive.pings, alive.replaced) == (1, 0)

        assert await _terminate_others(db_url) >= 1
        await asyncio.sleep(0.1)
        replacement = await _backend_pid(engine)  # pinged, found dead, connected anew: the statement never sees it
        assert replacement != pid and (alive.pings, alive.replaced) == (2, 1)  # the dead one's ping; a new one is not pinged
    finally:
        await engine.dispose()


async def test_a_connection_that_dies_in_steady_use_costs_no_answered_open(beacon: Any, lib: Path, browsers: Any,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    s = await share(beacon, "case-auto-parts-oee")
    status, _, _ = await browsers().get(f"/l/{s['token']}")
    assert status == 200
    assert await _terminate_others(beacon.rt.settings.database.url) >= 1
    # Well within PING_IDLE_S of its last use, the group commit's connection is handed out unpinged and
    # found dead; the batch is written again on a connection the pool checks first.
    with caplog.at_level(logging.WARNING, logger="beacon.batch"):
        for n in range(3):
            status, _, _ = await browsers().get(f"/l/{s['token']}")
            assert status == 200, n
    assert "the connection was lost" in caplog.text and "writing the batch of 1 again" in caplog.text
    assert len([e for e in await events(beacon) if e.type == "open"]) == 4
    assert await _terminate_others(beacon.rt.settings.database.url) >= 1
    async with beacon.rt.sessions() as session:  # SQLAlchemy's own disconnect handling: one statement fails,
        with pytest.raises(DBAPIError) as lost:  # and the pool's other connections are checked before use
            await session.execute(text("SELECT 1"))
    assert lost.value.connection_invalidated
    async with beacon.rt.sessions() as session:
        assert (await session.execute(text("SELECT 1"))).scalar_one() == 1
    alive = liveness(beacon.rt.engine)
    assert alive is not None
    alive.idle_s = 0.05
    await asyncio.sleep(0.1)
    status, _, _ = await browsers().get(f"/l/{s['token']}")  # its group commit's connection sat idle: pinged
    assert status == 200 and alive.pings >= 1
    metrics = (await (await beacon.client.get("/metrics")).read()).decode()
    counted = {outcome: float(n) for outcome, n in re.findall(r'^beacon_db_pings_total\{outcome="(\w+)"\} (\S+)$', metrics, re.M)}
    assert sum(counted.values()) == alive.pings and counted.get("dead", 0.0) == alive.replaced


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
