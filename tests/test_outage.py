"""A WeCom outage (HTTP 5xx, -1 busy, 45009 rate limit, 42001 expired token, timeouts) is survived:
the outbox keeps its messages, backs off, drains when WeCom is back, and sends nothing twice, not even
a message whose answer was lost in a timeout after WeCom had delivered it."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import select

from bot.models import OutboxItem
from bot.outbox import RETRY_FOR
from tests.conftest import make_settings

SEND = "/cgi-bin/message/send"


@pytest.fixture
def settings(db_url: str, sim: Any) -> Any:
    return make_settings(db_url, api_base=sim.url, wecom={"timeout_s": 0.3})


async def rows(beacon: Any) -> list[OutboxItem]:
    async with beacon.rt.sessions() as session:
        return list((await session.scalars(select(OutboxItem).where(OutboxItem.path == SEND).order_by(OutboxItem.id))).all())


def texts_to(beacon: Any, userid: str) -> list[str]:
    return [m.payload["text"]["content"] for m in beacon.sim.state.messages_to(userid) if m.msgtype == "text"]


async def healthz(beacon: Any) -> dict[str, Any]:
    resp = await beacon.client.get("/healthz")
    assert resp.status == 200
    return await resp.json()


async def next_round(beacon: Any) -> None:
    """Let every row's backoff pass, then run the outbox as its worker would."""
    pending = [r for r in await rows(beacon) if r.status == "pending"]
    if pending:
        latest = max(r.next_attempt_at for r in pending)
        if latest > beacon.clock.now():
            beacon.clock.advance(seconds=(latest - beacon.clock.now()).total_seconds() + 1)
    await beacon.rt.outbox.drain()


async def test_outbox_rides_out_an_outage_and_sends_each_message_once(beacon: Any, no_client_sleep: list[float]) -> None:
    state = beacon.sim.state
    for n, text in enumerate(["帮助", "help", "任务"]):
        result = await beacon.driver.send_text("rep1", text, msg_id=7100 + n)
        assert result.status == 200
    await beacon.rt.inbox.drain()  # the replies are decided and queued; nothing has gone out yet
    assert len(await rows(beacon)) == 3

    # Each kind of failure, for every call of every message: 5xx and busy answers are tried 1 + 3 times
    # by the client; 42001 twice (once more after the client's own token refresh), then the outbox sees it.
    outages = [
        ("http", 503, "HTTP 503", 12),
        ("errcode", -1, "-1", 12),
        ("errcode", 45009, "45009", 12),
        ("errcode", 42001, "42001", 6),
    ]
    for attempt, (kind, code, shown, calls) in enumerate(outages, start=1):
        if kind == "http":
            state.fail_http_next(SEND, code, times=calls)
        else:
            state.fail_next(SEND, code, times=calls)
        await next_round(beacon)
        now_rows = await rows(beacon)
        assert [r.status for r in now_rows] == ["pending"] * 3, shown
        assert all(r.attempts == attempt and shown in (r.last_error or "") for r in now_rows), [r.last_error for r in now_rows]
        assert all(r.next_attempt_at > beacon.clock.now() for r in now_rows)  # backing off
        assert texts_to(beacon, "rep1") == []
        assert (await healthz(beacon))["outbox"] == {"pending": 3, "failed": 0}
    assert no_client_sleep, "busy answers are retried by the client with pauses"

    # WeCom is back but slow: the first answer comes after the client gave up, yet WeCom delivered it.
    state.delay_next(SEND, 1.0, times=1)
    await next_round(beacon)
    final = await rows(beacon)
    assert [r.status for r in final] == ["sent"] * 3, [r.last_error for r in final]
    delivered = texts_to(beacon, "rep1")
    assert len(delivered) == 3 and len(set(delivered)) == 3  # each reply once
    assert len(state.duplicates) == 1  # the timed-out send was retried and WeCom's dedupe dropped it
    assert (await healthz(beacon))["outbox"] == {"pending": 0, "failed": 0}

    # Nothing is left to send, and a later pass sends nothing again.
    beacon.clock.advance(hours=1)
    await beacon.rt.outbox.drain()
    assert len(texts_to(beacon, "rep1")) == 3


async def test_an_outage_longer_than_the_dedupe_window_fails_the_row_visibly(beacon: Any, no_client_sleep: list[float]) -> None:
    state = beacon.sim.state
    await beacon.driver.send_text("rep1", "帮助", msg_id=7200)
    await beacon.rt.inbox.drain()
    state.fail_http_next(SEND, 502, times=10_000)
    rounds = 0
    while (await rows(beacon))[0].status == "pending":
        await next_round(beacon)
        rounds += 1
        assert rounds < 60
    (row,) = await rows(beacon)
    assert row.status == "failed" and "HTTP 502" in (row.last_error or "")
    # retried for as long as a retry stays inside WeCom's dedupe window, and no longer
    assert RETRY_FOR - dt.timedelta(minutes=16) <= beacon.clock.now() - row.created_at <= RETRY_FOR + dt.timedelta(minutes=16)
    assert texts_to(beacon, "rep1") == []
    assert (await healthz(beacon))["outbox"] == {"pending": 0, "failed": 1}


async def test_permanent_errors_fail_at_once(beacon: Any, no_client_sleep: list[float]) -> None:
    await beacon.driver.send_text("rep1", "帮助", msg_id=7300)
    await beacon.rt.inbox.drain()
    beacon.sim.state.fail_next(SEND, 40003, times=1)  # invalid userid: retrying cannot help
    await beacon.rt.outbox.drain()
    (row,) = await rows(beacon)
    assert row.status == "failed" and row.attempts == 1 and "40003" in (row.last_error or "")
