"""Dashboard reports counted once per `[pages] report_cache_s` per page, scope and date range
(bot/report_cache.py): through HTTP, and the cache's own rules (one computation for concurrent
requests, a request that gives up does not cancel it, a failure is not kept)."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest
from sqlalchemy import event

from bot.models import Channel, Contact
from bot.report_cache import ReportCache
from tests.pages_seed import page_settings
from tests.test_pages import as_admin, as_member, seeded, users  # noqa: F401  (fixtures)


@pytest.fixture
def settings(db_url: str, sim: Any) -> Any:
    return page_settings(db_url, sim.url)


async def _add_expo_contact(beacon: Any, external: str) -> None:
    from sqlalchemy import select

    now = beacon.clock.now() - dt.timedelta(minutes=5)
    async with beacon.rt.sessions() as session, session.begin():
        expo = await session.scalar(select(Channel.id).where(Channel.state == "ch_expo"))
        session.add(Contact(external_userid=external, channel_id=expo, owner_userid="rep1", created_at=now, updated_at=now))


async def _expo_contacts(user: Any) -> str:
    rows = await user.csv("/dashboard?format=csv&table=channels")
    return next(r["contacts"] for r in rows if r["channel"] == "2026工博会")


async def test_a_report_is_counted_once_per_window(beacon: Any, users: Any, seeded: dict[str, int]) -> None:  # noqa: F811
    admin = await as_admin(users)
    assert await _expo_contacts(admin) == "2"
    await _add_expo_contact(beacon, "wmLate1")
    assert await _expo_contacts(admin) == "2"  # the same window: the numbers counted before
    _, page, _ = await admin.get("/dashboard")
    counted = (beacon.clock.now()).astimezone(dt.timezone(dt.timedelta(hours=8))).strftime("%H:%M")
    assert f"数据统计于 {counted}，5 分钟内再次打开沿用这次的统计" in page
    mgr = await as_member(beacon, users, "mgr1")  # another scope: counted for it, now
    assert await _expo_contacts(mgr) == "3"
    assert (await admin.csv("/dashboard?format=csv&table=channels&from=2026-11-01&to=2026-11-23")) != []  # another range
    beacon.clock.advance(seconds=beacon.rt.settings.pages.report_cache_s)
    # The window passed: the numbers as they were at once, counted again meanwhile, which the page says.
    _, page, _ = await admin.get("/dashboard")
    assert f"数据统计于 {counted}，正在后台重新统计，稍后刷新页面即可看到最新数据" in page
    assert await _until(lambda: _expo_contacts(admin), "3")  # the background count, once it is done
    _, page, _ = await admin.get("/dashboard")
    assert "5 分钟内再次打开沿用这次的统计" in page
    # Past the stale window too: the request waits for a new count.
    await _add_expo_contact(beacon, "wmLate3")
    settings = beacon.rt.settings.pages
    beacon.clock.advance(seconds=settings.report_cache_s + settings.report_stale_s)
    assert await _expo_contacts(admin) == "4"


async def _until(read: Any, wanted: str, timeout_s: float = 10.0) -> bool:
    """Whether `read()` gives `wanted` within the time (a background count runs on the server's loop)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while await read() != wanted:
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def test_concurrent_requests_share_one_count(beacon: Any, users: Any, seeded: dict[str, int]) -> None:  # noqa: F811
    admin = await as_admin(users)
    counts: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "contacts.reach" in statement and "contacts.created_at >=" in statement:
            counts.append(statement)

    event.listen(beacon.rt.engine.sync_engine, "before_cursor_execute", count)
    try:
        pages = await asyncio.gather(*(admin.get("/dashboard") for _ in range(4)))
    finally:
        event.remove(beacon.rt.engine.sync_engine, "before_cursor_execute", count)
    assert [status for status, _, _ in pages] == [200] * 4
    assert len(counts) == 2  # the cohort's funnels, by stage and by channel, once


async def test_with_the_cache_off_every_request_counts(beacon: Any, users: Any, seeded: dict[str, int]) -> None:  # noqa: F811
    beacon.rt.reports.ttl_s = 0
    admin = await as_admin(users)
    assert await _expo_contacts(admin) == "2"
    await _add_expo_contact(beacon, "wmLate2")
    assert await _expo_contacts(admin) == "3"
    _, page, _ = await admin.get("/dashboard")
    assert "数据统计于" not in page


async def test_a_request_that_gives_up_does_not_cancel_the_count_for_others() -> None:
    cache = ReportCache(60)
    now = dt.datetime(2026, 12, 4, tzinfo=dt.timezone.utc)
    started, release, runs = asyncio.Event(), asyncio.Event(), []

    async def compute() -> str:
        runs.append(1)
        started.set()
        await release.wait()
        return "tables"

    first = asyncio.ensure_future(cache.get("k", now, compute))
    await started.wait()
    second = asyncio.ensure_future(cache.get("k", now, compute))
    await asyncio.sleep(0)
    first.cancel()
    release.set()
    assert (await second).tables == "tables"
    assert first.cancelled() and runs == [1]
    assert (await cache.get("k", now + dt.timedelta(seconds=59), compute)).at == now and runs == [1]
    assert (await cache.get("k", now + dt.timedelta(seconds=60), compute)).at == now + dt.timedelta(seconds=60)
    assert runs == [1, 1]


async def test_a_failed_count_is_not_kept() -> None:
    cache = ReportCache(60)
    now = dt.datetime(2026, 12, 4, tzinfo=dt.timezone.utc)
    calls = []

    async def failing() -> str:
        calls.append(1)
        raise RuntimeError("database went away")

    for _ in range(2):
        with pytest.raises(RuntimeError):
            await cache.get("k", now, failing)
    assert calls == [1, 1]


async def test_the_cache_keeps_at_most_its_size() -> None:
    cache = ReportCache(60, size=3)
    now = dt.datetime(2026, 12, 4, tzinfo=dt.timezone.utc)
    for key in "abcd":
        await cache.get(key, now, lambda key=key: asyncio.sleep(0, key))
    await cache.get("b", now, lambda: asyncio.sleep(0, "again"))  # kept; now the most recently used
    await cache.get("e", now, lambda: asyncio.sleep(0, "e"))
    assert set(cache._done) == {"d", "b", "e"}  # the least recently used, a and c, went


async def test_a_report_past_its_window_is_shown_at_once_while_counted_again() -> None:
    cache = ReportCache(60, stale_s=600)
    now = dt.datetime(2026, 12, 4, tzinfo=dt.timezone.utc)
    release, runs = asyncio.Event(), []

    async def compute() -> str:
        runs.append(1)
        if len(runs) > 1:
            await release.wait()
        return f"count {len(runs)}"

    assert (await cache.get("k", now, compute)).tables == "count 1"
    later = now + dt.timedelta(seconds=61)
    shown = await asyncio.wait_for(asyncio.gather(*(cache.get("k", later, compute) for _ in range(3))), 5)  # none waits for the count
    assert [(c.tables, c.at, c.refreshing) for c in shown] == [("count 1", now, True)] * 3
    assert runs == [1, 1]  # one count in the background for all three
    release.set()
    await asyncio.sleep(0)
    while cache._running:
        await asyncio.sleep(0)
    fresh = await cache.get("k", later, compute)
    assert (fresh.tables, fresh.at, fresh.refreshing) == ("count 2", later, False)
    # Past the stale window, the request waits for the count.
    much_later = later + dt.timedelta(seconds=60 + 600)
    assert (await cache.get("k", much_later, compute)).tables == "count 3"


async def test_a_failed_background_count_keeps_the_report_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    cache = ReportCache(60, stale_s=600)
    now = dt.datetime(2026, 12, 4, tzinfo=dt.timezone.utc)
    failing = False

    async def compute() -> str:
        if failing:
            raise RuntimeError("database went away")
        return "tables"

    await cache.get(("overview", None), now, compute)
    failing = True
    later = now + dt.timedelta(seconds=61)
    with caplog.at_level("WARNING", logger="beacon.reports"):
        assert (await cache.get(("overview", None), later, compute)).refreshing
        recount = cache._running[("overview", None)]
        await asyncio.wait([recount])
        await asyncio.sleep(0)  # its done callback
    assert "counting report 'overview' failed: database went away" in caplog.text
    kept = await cache.get(("overview", None), later, compute)  # still shown, and counted again
    assert (kept.tables, kept.at, kept.refreshing) == ("tables", now, True)


async def test_a_stopping_process_drops_the_counts_in_progress(caplog: pytest.LogCaptureFixture) -> None:
    cache = ReportCache(60, stale_s=600)
    now = dt.datetime(2026, 12, 4, tzinfo=dt.timezone.utc)
    never = asyncio.Event()

    async def compute() -> str:
        if cache._done:
            await never.wait()  # the recount: still running when the process stops
        return "tables"

    await cache.get("k", now, compute)
    with caplog.at_level("WARNING", logger="beacon.reports"):
        assert (await cache.get("k", now + dt.timedelta(seconds=61), compute)).refreshing
        await asyncio.sleep(0)
        assert cache._running
        await asyncio.wait_for(cache.close(), 1)
    assert not cache._running and cache._done["k"].at == now  # the report as it was; nothing half-counted kept
    assert "failed" not in caplog.text
