"""Graceful stop: workers finish the row in hand, hand back what they claimed and did not start, a stuck
worker is cancelled after the grace period, and no database step can hold the stop up for long."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from typing import Any

import pytest
from sqlalchemy import func, select

from bot.models import InboxItem, Lease
from bot.router import Router, any_message
from bot.runtime import Runtime
from tests.conftest import make_settings
from tests.helpers import wait_for

pytestmark = pytest.mark.slow


def text_body(n: int) -> str:
    return (
        f"<xml><ToUserName>corp</ToUserName><FromUserName>rep1</FromUserName><CreateTime>1700000000</CreateTime>"
        f"<MsgType>text</MsgType><Content>message {n}</Content><MsgId>{n}</MsgId><AgentID>1</AgentID></xml>"
    )


async def backlog(rt: Runtime, n: int) -> None:
    now = rt.clock.now()
    async with rt.sessions() as session, session.begin():
        session.add_all(
            InboxItem(dedupe_key=f"stop-test-{i}", kind="text", body=text_body(i), next_attempt_at=now, received_at=now)
            for i in range(n)
        )


async def inbox_rows(rt: Runtime) -> list[InboxItem]:
    async with rt.read_sessions() as session:
        return list((await session.scalars(select(InboxItem).order_by(InboxItem.id))).all())


def runtime(db_url: str, handler: Any, *, database: dict[str, Any] | None = None, **server: Any) -> Runtime:
    router = Router("test-stop")
    router.on(any_message)(handler)
    settings = make_settings(
        db_url, server={"admin_token": "t", "secret_key": "k" * 20, **server}, database={"url": db_url, **(database or {})}
    )
    return Runtime.build(settings, routers=[router])


async def test_stop_finishes_the_row_in_hand_and_hands_back_the_rest(db_url: str) -> None:
    started: list[str] = []

    async def slow(msg: Any, ctx: Any) -> None:
        started.append(msg.get("MsgId"))
        await asyncio.sleep(0.03)

    rt = runtime(db_url, slow, stop_grace_s=10)
    await backlog(rt, 40)
    await rt.start()
    async def three_started() -> bool:
        return len(started) >= 3

    await wait_for(three_started)
    began = time.monotonic()
    await rt.stop()
    took = time.monotonic() - began

    rt = runtime(db_url, slow)  # the store as the next start finds it
    rows = await inbox_rows(rt)
    done = [r for r in rows if r.status == "done"]
    pending = [r for r in rows if r.status == "pending"]
    assert took < 2, f"stop took {took:.1f} s with nothing stuck"
    assert len(done) == len(started), "every handler that started ran to its commit; none was cut off"
    assert 3 <= len(done) < 40 and len(done) + len(pending) == 40
    assert [r.locked_until for r in pending] == [None] * len(pending), "claimed rows not started are handed back"
    assert all(r.attempts == 0 for r in pending)
    async with rt.read_sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Lease)) == 0, "leases are handed back"
    await rt.engine.dispose()


async def test_a_worker_stuck_past_the_grace_period_is_cancelled(db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    entered = asyncio.Event()

    async def stuck(msg: Any, ctx: Any) -> None:
        entered.set()
        await asyncio.Event().wait()  # never set: a call that does not come back

    rt = runtime(db_url, stuck, stop_grace_s=0.3)
    await backlog(rt, 2)
    await rt.start()
    await asyncio.wait_for(entered.wait(), 15)
    began = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="beacon.runtime"):
        await rt.stop()
    took = time.monotonic() - began
    assert took < 3, f"stop took {took:.1f} s"
    assert "inbox-worker-0 still busy after 0.3 s; cancelling it" in caplog.text

    rt = runtime(db_url, stuck)
    rows = await inbox_rows(rt)
    assert [r.status for r in rows] == ["pending", "pending"], "the row cut off is rolled back, not lost or marked done"
    await rt.engine.dispose()


async def test_stop_is_bounded_when_another_connection_holds_the_lease_rows(
    db_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The shape of a shutdown hang seen on PostgreSQL: the statement that hands back the leases waits
    for a lock held by a connection that never finishes. The stop gives up on that step after a bound."""
    import bot.runtime

    monkeypatch.setattr(bot.runtime, "STOP_STEP_S", 0.5)

    async def quick(msg: Any, ctx: Any) -> None:
        return None

    rt = runtime(db_url, quick, database={"busy_timeout_ms": 1000})  # SQLite's wait for the lock outlasts the bound
    await rt.start()

    async def lease_held() -> bool:
        async with rt.read_sessions() as session:
            return await session.scalar(select(func.count()).select_from(Lease).where(Lease.name == "tracker")) == 1

    await wait_for(lease_held)

    release = await hold_lock_on_leases(db_url)
    try:
        began = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="beacon.runtime"):
            await rt.stop()
        took = time.monotonic() - began
    finally:
        await release()
    assert took < 3, f"stop took {took:.1f} s"
    assert "could not release leases on stop" in caplog.text
    assert rt.held_leases, "the lease was not handed back; it expires by itself"


async def hold_lock_on_leases(db_url: str) -> Any:
    """Another client takes the lease rows' lock and keeps its transaction open; returns its release."""
    if db_url.startswith("sqlite"):
        path = db_url.split("///", 1)[1]
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("BEGIN IMMEDIATE")  # the one write lock

        async def release_sqlite() -> None:
            conn.execute("ROLLBACK")
            conn.close()

        return release_sqlite
    import asyncpg

    conn = await asyncpg.connect(db_url.replace("postgresql+asyncpg", "postgresql"))
    tx = conn.transaction()
    await tx.start()
    await conn.execute("SELECT * FROM leases FOR UPDATE")

    async def release_pg() -> None:
        await tx.rollback()
        await conn.close()

    return release_pg



async def test_a_slow_shutdown_reports_where_each_task_waits(caplog: pytest.LogCaptureFixture) -> None:
    from bot.serve import _report_slow_stop

    gate = asyncio.Event()

    async def inner_wait() -> None:
        await gate.wait()

    async def outer_job() -> None:
        await inner_wait()

    job = asyncio.ensure_future(outer_job())
    job.set_name("stuck-job")
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="beacon.serve"):
        await _report_slow_stop(after_s=0.01)
    gate.set()
    await job
    line = next(line for line in caplog.text.splitlines() if "stuck-job" in line)
    assert "outer_job" in line and "inner_wait" in line and line.index("outer_job") < line.index("inner_wait")
    assert "shutdown still running after 0 s" in caplog.text


async def test_a_send_sitting_in_wecom_retries_is_given_up_on_stop(db_url: str, aiohttp_server: Any) -> None:
    """WeCom does not answer (the call waits on its timeout and retries): the stop does not wait for
    that. The row stays pending, its attempt not counted and its lease handed back."""
    from aiohttp import web

    from bot.models import OutboxItem
    from bot.outbox import enqueue

    called = asyncio.Event()

    async def silent(request: web.Request) -> web.Response:
        called.set()
        await asyncio.sleep(3600)
        return web.json_response({})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", silent)
    wecom = await aiohttp_server(app)

    async def nothing(msg: Any, ctx: Any) -> None:
        return None

    router = Router("test-stop")
    router.on(any_message)(nothing)
    settings = make_settings(db_url, api_base=str(wecom.make_url("")).rstrip("/"),
                             server={"admin_token": "t", "secret_key": "k" * 20, "stop_grace_s": 10})
    rt = Runtime.build(settings, routers=[router])
    async with rt.sessions() as session, session.begin():
        enqueue(session, "/cgi-bin/message/send", {"touser": "rep1", "msgtype": "text", "text": {"content": "你好"}},
                key="stop-test-send", now=rt.clock.now())
    await rt.start()
    await asyncio.wait_for(called.wait(), 15)
    began = time.monotonic()
    await rt.stop()
    took = time.monotonic() - began
    assert took < 2, f"stop waited {took:.1f} s for WeCom"

    rt = runtime(db_url, nothing)
    async with rt.read_sessions() as session:
        (row,) = (await session.scalars(select(OutboxItem))).all()
    assert (row.status, row.attempts, row.locked_until, row.sent_at) == ("pending", 0, None, None)
    await rt.engine.dispose()
