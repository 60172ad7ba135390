"""Scheduled jobs run once per run key, even with several processes on one database."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import select

from bot.clock import FrozenClock
from bot.context import Context
from bot.models import InboxItem, JobRun, OutboxItem
from bot.runtime import Runtime
from bot.scheduler import daily_key, purge_inbox, purge_outbox, run_job
from tests.conftest import T0, make_settings


async def test_one_run_per_key_across_processes(db_url: str) -> None:
    settings = make_settings(db_url)
    clock = FrozenClock(T0)
    a = Runtime.build(settings, routers=[], clock=clock)
    b = Runtime.build(settings, routers=[], clock=clock)
    runs: list[str] = []

    async def job(ctx: Context) -> None:
        runs.append(ctx.runtime.worker_id)
        await asyncio.sleep(0)

    try:
        key = daily_key("digest", a)
        assert key == "digest:2026-11-23"
        results = await asyncio.gather(*(run_job(rt, "digest", job, key) for rt in (a, b, a, b)))
        assert sorted(results) == [False, False, False, True]
        assert len(runs) == 1
        clock.advance(days=1)
        assert await run_job(b, "digest", job, daily_key("digest", b)) is True
        assert len(runs) == 2
        async with a.sessions() as session:
            rows = (await session.scalars(select(JobRun).order_by(JobRun.run_key))).all()
        assert [r.run_key for r in rows] == ["digest:2026-11-23", "digest:2026-11-24"]
        assert all(r.finished_at is not None and r.error is None for r in rows)
    finally:
        await a.engine.dispose()
        await b.engine.dispose()


async def test_failed_job_is_recorded(db_url: str) -> None:
    rt = Runtime.build(make_settings(db_url), routers=[], clock=FrozenClock(T0))

    async def broken(ctx: Context) -> None:
        raise RuntimeError("nope")

    try:
        assert await run_job(rt, "broken", broken, "broken:1") is True
        async with rt.sessions() as session:
            row = await session.get(JobRun, "broken:1")
        assert row.error == "RuntimeError: nope"
    finally:
        await rt.engine.dispose()


async def test_purge_inbox_keeps_recent_and_unprocessed(db_url: str) -> None:
    import datetime as dt

    clock = FrozenClock(T0)
    rt = Runtime.build(make_settings(db_url), routers=[], clock=clock)
    old = T0 - dt.timedelta(days=30)
    try:
        async with rt.sessions() as session, session.begin():
            session.add_all(
                [
                    InboxItem(dedupe_key="a", kind="text", body="", status="done", received_at=old, next_attempt_at=old),
                    InboxItem(dedupe_key="b", kind="text", body="", status="parked", received_at=old, next_attempt_at=old),
                    InboxItem(dedupe_key="c", kind="text", body="", status="done", received_at=T0, next_attempt_at=T0),
                ]
            )
        assert await run_job(rt, "purge-inbox", purge_inbox, "purge:1")
        async with rt.sessions() as session:
            keys = (await session.scalars(select(InboxItem.dedupe_key).order_by(InboxItem.dedupe_key))).all()
        assert keys == ["b", "c"]
    finally:
        await rt.engine.dispose()


async def test_purge_outbox_drops_old_finished_rows_in_chunks(db_url: str, monkeypatch: Any) -> None:
    """Sent and skipped rows last attempted more than [inbox].outbox_keep_days ago go, a few per
    transaction; pending, failed and recent rows stay (what reads sent rows looks back hours)."""
    import datetime as dt

    import bot.db

    monkeypatch.setattr(bot.db, "DELETE_FIRST", 3)  # 11 old rows: several chunks
    monkeypatch.setattr(bot.db, "DELETE_MOST", 3)
    clock = FrozenClock(T0)
    rt = Runtime.build(make_settings(db_url, inbox={"outbox_keep_days": 30}), routers=[], clock=clock)
    old, recent = T0 - dt.timedelta(days=31), T0 - dt.timedelta(days=29)
    rows = [("old-sent-%d" % n, "sent", old) for n in range(10)] + [
        ("old-skipped", "skipped", old), ("old-failed", "failed", old), ("old-pending", "pending", old),
        ("recent-sent", "sent", recent), ("new-sent", "sent", T0),
    ]
    statements: list[str] = []
    try:
        async with rt.sessions() as session, session.begin():
            session.add_all([OutboxItem(idempotency_key=key, path="/cgi-bin/message/send", payload={"text": "张总 13800000000"},
                                        status=status, attempts=1, next_attempt_at=at, created_at=at) for key, status, at in rows])
        from sqlalchemy import event

        def count(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
            if statement.lstrip().upper().startswith("DELETE FROM OUTBOX"):
                statements.append(statement)

        event.listen(rt.engine.sync_engine, "before_cursor_execute", count)
        assert await run_job(rt, "purge-outbox", purge_outbox, "purge-outbox:1")
        event.remove(rt.engine.sync_engine, "before_cursor_execute", count)
        async with rt.sessions() as session:
            keys = (await session.scalars(select(OutboxItem.idempotency_key).order_by(OutboxItem.idempotency_key))).all()
            run = await session.get(JobRun, "purge-outbox:1")
    finally:
        await rt.engine.dispose()
    assert keys == ["new-sent", "old-failed", "old-pending", "recent-sent"]
    assert run.error is None
    assert len(statements) == 4  # 11 rows, 3 at a time: each chunk its own statement (and transaction)
