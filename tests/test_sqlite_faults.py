"""SQLite under duress: a full disk and a database locked by someone else. Beacon answers with a clear
5xx (WeCom retries, the customer can reload), acknowledges nothing it did not store, logs why, and the
database stays intact; when the disk has room again, redelivered callbacks are taken as usual."""

from __future__ import annotations

import logging
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select

from bot.app import RUNTIME, create_app
from bot.models import InboxItem
from tests.conftest import make_settings
from tests.test_callback import Poster, text_xml


class DiskLimit:
    """Caps the database's size on every connection Beacon checks out (SQLite's max_page_count): once
    the file is at the cap, growing it fails with SQLITE_FULL, "database or disk is full", exactly as
    a full disk does."""

    def __init__(self) -> None:
        self.pages: int | None = None

    def install(self, engine: Any) -> None:
        @event.listens_for(engine.sync_engine, "checkout")
        def cap(dbapi_conn: Any, record: Any, proxy: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute(f"PRAGMA max_page_count = {self.pages or 1_073_741_823}")
            cursor.close()


@pytest.fixture
async def app_on_sqlite(aiohttp_client: Any, sqlite_url: str, clock: Any) -> Any:
    settings = make_settings(sqlite_url, database={"busy_timeout_ms": 300})
    app = create_app(settings, clock=clock, background=False)
    limit = DiskLimit()
    limit.install(app[RUNTIME].engine)
    client = await aiohttp_client(app)
    return client, app[RUNTIME], limit, Path(sqlite_url.removeprefix("sqlite+aiosqlite:///"))


async def stored(rt: Any) -> int:
    async with rt.read_sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(InboxItem)))


def pages_of(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("PRAGMA page_count").fetchone()[0])


async def test_disk_full_refuses_callbacks_then_takes_the_redelivery(app_on_sqlite: Any, caplog: pytest.LogCaptureFixture) -> None:
    client, rt, limit, path = app_on_sqlite
    poster = Poster(client, rt.clock.now().timestamp())
    assert (await poster.post(text_xml("rep1", "帮助", "8001"))).status == 200
    before = await stored(rt)

    limit.pages = pages_of(path)  # the disk is full: not one more page
    big = "资料" * 4000  # a callback that needs new pages
    with caplog.at_level(logging.ERROR, logger="beacon"):
        resp = await poster.post(text_xml("rep1", big, "8002"))
    assert resp.status == 503  # WeCom will retry; nothing was acknowledged
    assert "database or disk is full" in caplog.text
    health = await client.get("/healthz")
    assert health.status == 200  # reads still work: the operator sees the backlog, not an outage

    limit.pages = None  # room again: WeCom's redelivery of the same message is taken once
    assert (await poster.post(text_xml("rep1", big, "8002"))).status == 200
    assert (await poster.post(text_xml("rep1", big, "8002"))).status == 200
    assert await stored(rt) == before + 1
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


async def test_database_locked_by_another_process_is_a_clear_503(app_on_sqlite: Any, caplog: pytest.LogCaptureFixture) -> None:
    client, rt, _, path = app_on_sqlite
    poster = Poster(client, rt.clock.now().timestamp())
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        other.execute("BEGIN EXCLUSIVE")  # e.g. a careless maintenance script
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="beacon"):
            resp = await poster.post(text_xml("rep1", "帮助", "8101"))
        assert resp.status == 503
        assert time.monotonic() - started < 5  # waited about busy_timeout_ms, not forever
        # One line that says why (handlers/unavailable.py), not a traceback.
        assert "POST /wecom/callback answered 503: SQLite: database is locked" in caplog.text
    finally:
        other.rollback()
        other.close()
    assert (await poster.post(text_xml("rep1", "帮助", "8101"))).status == 200
    assert await stored(rt) == 1


async def test_a_write_that_meets_the_lock_past_the_busy_timeout_answers_503_with_retry_after(
    app_on_sqlite: Any, caplog: pytest.LogCaptureFixture
) -> None:
    client, _rt, _, path = app_on_sqlite
    task = {"rep": "rep1", "title": "回访王总"}
    auth = {"Authorization": "Bearer test-admin-token"}
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        other.execute("BEGIN EXCLUSIVE")
        with caplog.at_level(logging.INFO):
            for _ in range(2):
                resp = await client.post("/api/tasks", json=task, headers=auth)
                assert resp.status == 503 and resp.headers["Retry-After"] == "5"
    finally:
        other.rollback()
        other.close()
    lines = [r for r in caplog.records if r.name == "beacon.unavailable"]
    assert len(lines) == 1 and "POST /api/tasks answered 503: SQLite: database is locked" in lines[0].getMessage()
    assert lines[0].exc_info is None and not [r for r in caplog.records if r.name == "aiohttp.server"]  # no traceback
    resp = await client.post("/api/tasks", json=task, headers=auth)  # the same request once the lock is free
    assert resp.status == 201, await resp.text()


async def test_a_worker_logs_an_outage_when_it_starts_and_ends_not_a_traceback_per_pass(
    app_on_sqlite: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The inbox worker meets the write lock held by another process for a second: its passes fail and
    are retried at every poll, and the log says so twice (when it starts, when it ends), without a
    traceback; the stored callback is processed once the lock is free."""
    import asyncio

    client, rt, _, path = app_on_sqlite
    poster = Poster(client, rt.clock.now().timestamp())
    assert (await poster.post(text_xml("rep1", "帮助", "8201"))).status == 200
    rt.inbox.poll_s = 0.05
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    other.execute("BEGIN EXCLUSIVE")
    with caplog.at_level(logging.INFO, logger="beacon"):
        worker = asyncio.create_task(rt.inbox.run())
        try:
            await asyncio.sleep(1.2)  # passes of about the busy timeout (300 ms) each, all failing
        finally:
            other.rollback()
            other.close()
        try:
            for _ in range(200):
                async with rt.read_sessions() as session:
                    if await session.scalar(select(InboxItem.status)) == "done":
                        break
                await asyncio.sleep(0.05)
        finally:
            rt.inbox.request_stop()
            await worker
    async with rt.read_sessions() as session:
        assert await session.scalar(select(InboxItem.status)) == "done"
    lines = [r for r in caplog.records if r.name == "beacon.inbox"]
    said = [r.getMessage() for r in lines]
    assert said[0] == "inbox pass failed: SQLite: database is locked; retrying at every poll", said
    back = [m for m in said if "the database serves again after" in m]
    assert len(back) == 1 and int(back[0].split(" after ")[1].split()[0]) >= 2, said
    assert len(said) == 2 and all(r.exc_info is None for r in lines), said
    metrics = await (await client.get("/metrics")).text()
    failed = re.search(r'^beacon_worker_failed_passes_total\{cause="database",worker="inbox"\} (\S+)$', metrics, re.M)
    assert failed is not None and float(failed.group(1)) == int(back[0].split(" after ")[1].split()[0])
