"""The bounded caches in front of the database and the rate limits (cachetools underneath): what they
keep, for how long, and what they let go first."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlalchemy import event, update

from bot.limits import TokenBuckets
from bot.models import ContentItem
from bot.pages import Pages
from bot.shares import ShareResolver
from bot.sidebar import FollowCache
from tests.test_links import share


class Reads:
    """Statements that read `table` on the app's engine."""

    def __init__(self, table: str) -> None:
        self.table = table
        self.n = 0

    def __call__(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        self.n += statement.lstrip().startswith("SELECT") and f"FROM {self.table}" in statement


@pytest.fixture
def share_reads(beacon: Any) -> Iterator[Reads]:
    reads = Reads("shares")
    event.listen(beacon.rt.engine.sync_engine, "before_cursor_execute", reads)
    yield reads
    event.remove(beacon.rt.engine.sync_engine, "before_cursor_execute", reads)


async def test_a_token_is_read_once_per_ttl_and_a_change_shows_after_it(beacon: Any, lib: Path, share_reads: Reads) -> None:  # noqa: F811
    s = await share(beacon, "case-auto-parts-oee")
    share_reads.n = 0
    resolver = ShareResolver(beacon.rt.read_sessions, ttl_s=0.2)
    first = await resolver.resolve(s["token"])
    assert first is not None and not first.retired and share_reads.n == 1
    assert await resolver.resolve(s["token"]) == first and share_reads.n == 1
    async with beacon.rt.sessions() as session, session.begin():
        await session.execute(update(ContentItem).where(ContentItem.id == first.item_id).values(retired_at=beacon.clock.now()))
    assert not (await resolver.resolve(s["token"])).retired  # within the TTL: as read
    await asyncio.sleep(0.25)
    assert (await resolver.resolve(s["token"])).retired and share_reads.n == 2


async def test_an_unknown_token_is_not_remembered_as_unknown(beacon: Any, lib: Path, share_reads: Reads) -> None:  # noqa: F811
    """A child link may be opened a moment before its row is committed: a miss is read again."""
    resolver = ShareResolver(beacon.rt.read_sessions, ttl_s=60)
    assert await resolver.resolve("NotYetWritten0000000000") is None
    assert await resolver.resolve("NotYetWritten0000000000") is None
    assert share_reads.n == 2


async def test_the_least_recently_used_token_goes_first(beacon: Any, lib: Path, share_reads: Reads) -> None:  # noqa: F811
    tokens = [(await share(beacon, "case-auto-parts-oee", contact=f"wmCache{n}"))["token"] for n in range(3)]
    share_reads.n = 0
    resolver = ShareResolver(beacon.rt.read_sessions, ttl_s=60, size=2)
    for token in tokens[:2]:
        await resolver.resolve(token)
    await resolver.resolve(tokens[0])  # used again: tokens[1] is now the least recent
    await resolver.resolve(tokens[2])
    assert share_reads.n == 3
    await resolver.resolve(tokens[0])
    assert share_reads.n == 3
    await resolver.resolve(tokens[1])
    assert share_reads.n == 4


def test_slotted_pages_are_bounded() -> None:
    pages = Pages(slotted_size=2)
    for n in range(3):
        pages.slotted_response("error.html", "zh", {"token": "abc"}, key="not_found", status=404 + n)
    assert len(pages._slotted) == 2


async def test_a_follow_is_kept_for_its_ttl() -> None:
    follows = FollowCache(ttl_s=0.1)
    assert not follows.get(("rep1", "wmX"))
    follows.put(("rep1", "wmX"))
    assert follows.get(("rep1", "wmX")) and not follows.get(("rep2", "wmX"))
    await asyncio.sleep(0.15)
    assert not follows.get(("rep1", "wmX"))


def test_a_bucket_allows_its_burst_then_refills_at_its_rate() -> None:
    buckets = TokenBuckets(6)  # six a minute: one every ten seconds
    assert [buckets.allow("a", 100.0) for _ in range(7)] == [True] * 6 + [False]
    assert buckets.allow("b", 100.0)  # each key has a bucket of its own
    assert not buckets.allow("a", 105.0)
    assert buckets.allow("a", 110.5) and not buckets.allow("a", 110.6)
    assert [buckets.allow("a", 1000.0) for _ in range(7)] == [True] * 6 + [False]  # full again, not more


def test_buckets_forget_the_least_recently_seen_key_first() -> None:
    buckets = TokenBuckets(1, size=2)
    assert buckets.allow("a", 0.0) and not buckets.allow("a", 0.0)
    assert buckets.allow("b", 0.0)
    assert not buckets.allow("a", 0.0)  # seen again: b is now the least recent
    assert buckets.allow("c", 0.0)  # b forgotten
    assert not buckets.allow("a", 0.0)
    assert buckets.allow("b", 0.0)  # a fresh bucket
