"""SQLite's WAL checkpoints: in the background in a serving process, not inside a writer's COMMIT.

In WAL mode the database file itself is written only by checkpoints, so its size on disk says whether
one ran while the process was up (a process's last connection also checkpoints when it closes; these
tests look before that)."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, text

from bot.config import ConfigError, load_settings
from bot.db import BACKSTOP_PAGES
from bot.models import Contact
from tests.conftest import make_settings

ROWS = 3000  # a few hundred pages: under SQLite's own 1,000-page automatic checkpoint


def _db_path(url: str) -> Path:
    return Path(url.split("///", 1)[1])


async def _write_contacts(rt: Any) -> None:
    rows = [{"name": f"客户{i}", "company": "示例科技有限公司" * 3, "profile": {"note": "x" * 120}} for i in range(ROWS)]
    async with rt.sessions() as session, session.begin():
        await session.execute(insert(Contact), rows)


async def _autocheckpoint(rt: Any) -> int:
    async with rt.engine.connect() as conn:
        return (await conn.execute(text("PRAGMA wal_autocheckpoint"))).scalar_one()


async def _grows(path: Path, size: int, within_s: float) -> bool:
    for _ in range(int(within_s / 0.05)):
        if path.stat().st_size > size:
            return True
        await asyncio.sleep(0.05)
    return path.stat().st_size > size


async def test_a_serving_process_checkpoints_the_wal_in_the_background(aiohttp_client: Any, sqlite_url: str) -> None:
    from bot.app import RUNTIME, create_app

    settings = make_settings(sqlite_url, database={"url": sqlite_url, "checkpoint_interval_s": 0.05})
    client = await aiohttp_client(create_app(settings))  # background work on, as `serve` runs it
    rt = client.app[RUNTIME]
    path = _db_path(sqlite_url)
    assert await _autocheckpoint(rt) == BACKSTOP_PAGES  # writers only checkpoint as a backstop
    before = path.stat().st_size
    await _write_contacts(rt)
    assert await _grows(path, before, within_s=5), "the checkpointer did not copy the WAL into the database"
    with sqlite3.connect(path) as con:  # what was copied is the committed data
        assert con.execute("SELECT count(*) FROM contacts WHERE name LIKE '客户%'").fetchone()[0] == ROWS
    metrics = await (await client.get("/metrics")).text()
    frames = re.search(r"^beacon_sqlite_wal_frames (\S+)$", metrics, re.M)
    assert frames is not None and float(frames.group(1)) > 0
    assert rt.checkpointer.runs >= 1 and rt.checkpointer.longest_s > 0


async def test_without_the_checkpointer_sqlite_checkpoints_in_commits_as_usual(aiohttp_client: Any, sqlite_url: str) -> None:
    """`checkpoint_interval_s = 0`: no background task, SQLite's default 1,000 pages, and the same
    writes stay in the WAL while the process runs (what the first test's growth is measured against)."""
    from bot.app import RUNTIME, create_app

    settings = make_settings(sqlite_url, database={"url": sqlite_url, "checkpoint_interval_s": 0})
    client = await aiohttp_client(create_app(settings))
    rt = client.app[RUNTIME]
    assert rt.checkpointer is None
    assert not any(task.get_name() == "wal-checkpointer" for task in rt._tasks)
    assert await _autocheckpoint(rt) == 1000
    path = _db_path(sqlite_url)
    before = path.stat().st_size
    await _write_contacts(rt)
    assert not await _grows(path, before, within_s=0.5)
    assert "beacon_sqlite_wal_frames 0.0" in await (await client.get("/metrics")).text()


async def test_a_process_without_the_checkpointer_keeps_sqlites_own(sqlite_url: str) -> None:
    """The same settings (checkpoints in the background) in a process that runs no checkpointer (a CLI
    command such as `rescore` or `synth`, or a runtime started without background work): its writers
    checkpoint at SQLite's 1,000 pages, not at the serving process's backstop."""
    from bot.runtime import Runtime

    settings = make_settings(sqlite_url, database={"url": sqlite_url, "checkpoint_interval_s": 0.25})
    rt = Runtime.build(settings, routers=[])
    await rt.start(background=False)
    try:
        assert rt.checkpointer is not None  # configured, but not started here
        assert await _autocheckpoint(rt) == 1000
    finally:
        await rt.stop()
    serving = Runtime.build(settings, routers=[])
    await serving.start()
    try:
        assert await _autocheckpoint(serving) == BACKSTOP_PAGES
    finally:
        await serving.stop()


async def test_the_checkpointer_stops_with_the_process(sqlite_url: str) -> None:
    from bot.runtime import Runtime

    rt = Runtime.build(make_settings(sqlite_url, database={"url": sqlite_url, "checkpoint_interval_s": 30}), routers=[])
    await rt.start()
    task = next(task for task in rt._tasks if task.get_name() == "wal-checkpointer")
    await asyncio.sleep(0.05)  # its first checkpoint, then the 30 s wait
    await asyncio.wait_for(rt.stop(), 10)  # the wait does not hold up the stop
    assert task.done() and not task.cancelled()
    assert rt.checkpointer._conn is None  # its connection closed


def test_the_checkpointer_is_sqlite_file_only() -> None:
    from bot.db import WalCheckpointer, create_engine

    for url, interval, wanted in (("sqlite+aiosqlite:///x.db", 0.25, True), ("sqlite+aiosqlite:///x.db", 0, False),
                                  ("sqlite+aiosqlite:///:memory:", 0.25, False),
                                  ("postgresql+asyncpg://postgres@127.0.0.1:5432/test", 0.25, False)):
        engine = create_engine(load_settings(None, environ={"BEACON_DATABASE_URL": url}).database)
        try:
            assert (WalCheckpointer.for_engine(engine, interval) is not None) == wanted, (url, interval)
        finally:
            engine.sync_engine.dispose()


@pytest.mark.parametrize("value", ["-1", "soon"])
def test_a_bad_checkpoint_interval_names_the_key(tmp_path: Path, value: str) -> None:
    path = tmp_path / "beacon.toml"
    path.write_text(f"[database]\ncheckpoint_interval_s = {value if value[0] == '-' else repr(value)}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape("database.checkpoint_interval_s")):
        load_settings(path, environ={})
