"""Content search (keyword, filters, ranking) and next-best recommendations, on both databases."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.db import create_engine, session_factory
from bot.models import ContentItem
from content.errors import InvalidFilter, MissingVersion
from content.importer import import_library
from content.library import scan_library
from content.recommend import Profile, rank_next, stage_distance
from content.search import attachment_data, current_version, get_item, recommend_next, search_items
from tests.conftest import T0, make_settings
from tests.test_content_import import SAMPLE, write_item


@pytest.fixture
async def sessions(db_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(make_settings(db_url).database)
    yield session_factory(engine)
    await engine.dispose()


@pytest.fixture
async def sample(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """A session on a database holding the sample library."""
    async with sessions() as session:
        async with session.begin():
            await import_library(session, SAMPLE, now=T0)
        yield session


async def slugs(session: AsyncSession, **kwargs: Any) -> list[str]:
    return [item.slug for item in await search_items(session, **kwargs)]


# --- keyword ------------------------------------------------------------------------------------


async def test_chinese_substring_in_body(sample: AsyncSession) -> None:
    assert await slugs(sample, q="微停") == ["blog-oee-common-mistakes"]
    # both only in the body and equally new: the later-imported item first
    assert await slugs(sample, q="等保三级") == ["pitch-deck-company-overview", "faq-platform-general"]


async def test_chinese_substring_in_title_ranks_above_body(sample: AsyncSession) -> None:
    # title of the whitepaper; only mentioned in the blog's body
    assert await slugs(sample, q="白皮书") == ["manufacturing-digital-whitepaper", "blog-oee-common-mistakes"]


async def test_keyword_is_case_insensitive_and_searches_tags(sample: AsyncSession) -> None:
    lower = await slugs(sample, q="oee", limit=None)
    assert lower == await slugs(sample, q="OEE", limit=None)
    assert "blog-oee-common-mistakes" in lower
    assert await slugs(sample, q="直播回放") == ["webinar-predictive-maintenance-replay"]  # title and tag
    assert await slugs(sample, q="iatf 16949") == ["solution-smart-factory-automotive"]


@pytest.mark.parametrize("q", ["%", "_", "oee", "Oee", "云桥", "客户案例", " 平台 ", "不存在的词"])
async def test_keyword_matches_exactly_what_the_files_contain(sample: AsyncSession, q: str) -> None:
    # Oracle: a plain Python scan of the files; LIKE wildcards in q must be taken literally.
    needle = q.strip().casefold()
    expected = {
        i.slug
        for i in scan_library(SAMPLE).items
        if not i.internal and any(needle in text.casefold() for text in (i.title, i.summary, i.body, *i.tags))
    }
    assert set(await slugs(sample, q=q, limit=None)) == expected
    if q in {"%", "oee", "云桥"}:
        assert expected  # the oracle is not vacuous for these


async def test_ranking_title_then_summary_or_tag_then_body_then_newest(
    sessions: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    folder = tmp_path / "lib"
    folder.mkdir()
    write_item(folder, "in-body-old", title="其他", body="这里提到了数字孪生。")
    write_item(folder, "in-tag", title="其他二", tags=["数字孪生"])
    write_item(folder, "in-summary", title="其他三", summary="关于数字孪生的摘要")
    write_item(folder, "in-title", title="数字孪生入门")
    write_item(folder, "unrelated", title="无关", body="完全无关")
    async with sessions() as session, session.begin():
        await import_library(session, folder, now=T0)
    # a newer body match imported later must come before the older body match
    write_item(folder, "in-body-new", title="其他四", body="新的数字孪生内容")
    async with sessions() as session, session.begin():
        await import_library(session, folder, now=T0 + dt.timedelta(hours=1))

    async with sessions() as session:
        found = await slugs(session, q="数字孪生")
        assert found[0] == "in-title"
        assert set(found[1:3]) == {"in-summary", "in-tag"}
        assert found[3:] == ["in-body-new", "in-body-old"]
        assert await slugs(session, q="数字孪生", limit=2) == found[:2]


# --- filters ------------------------------------------------------------------------------------


async def test_filters(sample: AsyncSession) -> None:
    assert await slugs(sample, kind="whitepaper") == ["manufacturing-digital-whitepaper"]
    retention = set(await slugs(sample, stage="retention", limit=None))
    assert retention == {"case-food-erp-expansion", "product-manual-platform-onboarding"}
    finance = set(await slugs(sample, persona="finance", limit=None))
    assert finance == {"case-auto-parts-oee-finance", "case-food-erp-expansion", "solution-finance-erp-integration"}
    assert set(await slugs(sample, persona="Finance", limit=None)) == finance
    assert await slugs(sample, industry="food", stage="retention") == ["case-food-erp-expansion"]
    assert set(await slugs(sample, industry="energy", limit=None)) == {"case-chemicals-energy"}
    assert await slugs(sample, kind="case_study", q="双碳") == ["case-chemicals-energy"]
    assert await slugs(sample, kind="faq", q="双碳") == []
    assert await slugs(sample, persona="engine") == []  # whole entries only, not substrings
    assert len(await slugs(sample, limit=None)) == 15
    assert len(await slugs(sample, limit=5)) == 5


async def test_internal_items_are_excluded_unless_asked(sample: AsyncSession) -> None:
    internal = {"talk-track-first-call", "competitor-brief-industrial-platforms", "faq-internal-objection-handling"}
    assert not internal & set(await slugs(sample, limit=None))
    assert await slugs(sample, q="严禁外发") == []
    assert await slugs(sample, q="严禁外发", include_internal=True) == ["competitor-brief-industrial-platforms"]
    assert internal <= set(await slugs(sample, include_internal=True, limit=None))


async def test_retired_items_are_excluded_unless_asked(sample: AsyncSession) -> None:
    item = await get_item(sample, "case-chemicals-energy")
    assert item is not None
    item.retired_at = T0
    await sample.flush()
    assert await slugs(sample, q="双碳") == []
    assert await slugs(sample, q="双碳", include_retired=True) == ["case-chemicals-energy"]


async def test_unknown_kind_or_stage_is_an_error(sample: AsyncSession) -> None:
    with pytest.raises(InvalidFilter) as err:
        await search_items(sample, kind="brochure")
    assert err.value.field == "kind" and "whitepaper" in str(err.value)
    with pytest.raises(InvalidFilter, match="awareness, consideration, decision, retention"):
        await search_items(sample, stage="purchase")


async def test_non_ascii_personas_filter(sessions: async_sessionmaker[AsyncSession], tmp_path: Path) -> None:
    folder = tmp_path / "lib"
    folder.mkdir()
    write_item(folder, "buyers", personas=["采购", "it"], industries=["新能源"])
    write_item(folder, "others", personas=["采购经理"])
    async with sessions() as session, session.begin():
        await import_library(session, folder, now=T0)
    async with sessions() as session:
        assert await slugs(session, persona="采购") == ["buyers"]
        assert await slugs(session, industry="新能源") == ["buyers"]
        assert await slugs(session, q="采购") == []  # personas are filters, not keywords


# --- look-ups -----------------------------------------------------------------------------------


async def test_get_item_and_current_version(sample: AsyncSession) -> None:
    assert await get_item(sample, "nope") is None
    item = await get_item(sample, "manufacturing-data-maturity-report")
    assert item is not None
    version = await current_version(sample, item)
    assert version.id == item.current_version_id and version.version == 1
    data = await attachment_data(sample, version)
    assert data == (SAMPLE / "manufacturing-data-maturity-report.pdf").read_bytes()
    bare = ContentItem(slug="draft", title="t", kind="faq", stage="awareness")
    with pytest.raises(MissingVersion):
        await current_version(sample, bare)


# --- recommendations ----------------------------------------------------------------------------


def _item(id: int, stage: str, *, personas: list[str] | None = None, industries: list[str] | None = None, **kw: Any) -> ContentItem:
    return ContentItem(
        id=id,
        slug=kw.pop("slug", f"item-{id}"),
        title=f"item {id}",
        kind="case_study",
        stage=stage,
        personas=personas or [],
        industries=industries or [],
        internal=kw.pop("internal", False),
        retired_at=kw.pop("retired_at", None),
        variant_of=kw.pop("variant_of", None),
        updated_at=kw.pop("updated_at", T0),
    )


def test_stage_distance_moves_one_step_along_the_journey() -> None:
    after_awareness = Profile(last_read_stage="awareness")
    order = sorted(["retention", "awareness", "decision", "consideration"], key=lambda s: stage_distance(s, after_awareness))
    assert order == ["consideration", "decision", "retention", "awareness"]
    assert stage_distance("awareness", Profile()) == 0  # nothing read yet: start at the top
    assert stage_distance("retention", Profile(last_read_stage="retention")) == 0


def test_rank_next_prefers_next_stage_then_fit_and_skips_what_must_not_go() -> None:
    items = [
        _item(1, "consideration", personas=["finance"], industries=["automotive"]),
        _item(2, "consideration", personas=["it"], industries=["food"]),
        _item(3, "consideration", personas=["finance"], industries=["food"]),
        _item(4, "decision", personas=["finance"], industries=["automotive"]),
        _item(5, "awareness", personas=["finance"], industries=["automotive"]),
        _item(6, "consideration", personas=["finance"], industries=["automotive"], internal=True),
        _item(7, "consideration", personas=["finance"], industries=["automotive"], retired_at=T0),
        _item(8, "consideration", personas=["finance"], industries=["automotive"]),
    ]
    profile = Profile(persona="finance", industry="automotive", last_read_stage="awareness")
    ranked = rank_next(items, profile, already_sent={8}, limit=10)
    assert [i.id for i in ranked] == [1, 3, 2, 4, 5]
    assert [i.id for i in rank_next(items, profile, already_sent={8}, limit=2)] == [1, 3]


def test_rank_next_keeps_one_item_per_variant_family_and_prefers_newest() -> None:
    base = _item(1, "decision", slug="case", personas=["operations"])
    variant = _item(2, "decision", slug="case-finance", personas=["finance"], variant_of="case")
    older = _item(3, "decision", slug="old", updated_at=T0 - dt.timedelta(days=30))
    newer = _item(4, "decision", slug="new", updated_at=T0 + dt.timedelta(days=1))
    profile = Profile(persona="finance", last_read_stage="consideration")
    assert [i.slug for i in rank_next([base, variant, older, newer], profile, set(), limit=5)] == [
        "case-finance",
        "new",
        "old",
    ]


async def test_recommend_next_on_the_sample_library(sample: AsyncSession) -> None:
    whitepaper = await get_item(sample, "manufacturing-digital-whitepaper")
    assert whitepaper is not None
    picks = await recommend_next(
        sample,
        contact_profile={"persona": "Finance", "industry": "automotive", "last_read_stage": "awareness"},
        already_sent={whitepaper.id},
    )
    # consideration comes after awareness; finance + automotive fits best; ties go by slug
    assert [p.slug for p in picks] == [
        "solution-finance-erp-integration",
        "case-auto-parts-oee",
        "pitch-deck-company-overview",
    ]

    sent = {p.id for p in picks}
    later = await recommend_next(sample, contact_profile={"last_read_stage": "awareness"}, already_sent=sent, limit=20)
    assert not sent & {p.id for p in later}
    assert not any(p.internal for p in later)
    assert {p.slug for p in later}.isdisjoint({"talk-track-first-call", "faq-internal-objection-handling"})
