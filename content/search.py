"""Finding content: keyword search with filters, and look-ups by slug and version.

One implementation for the admin API, the bot's search command and the pages, on SQLite and
PostgreSQL alike:

- Keyword `q` is a case-insensitive substring match (ILIKE on PostgreSQL; SQLite's LIKE, which
  folds ASCII only — Chinese has no case, so Chinese substrings match on both). It looks at the
  title, summary, tags and the current version's body. SQL narrows the rows; the ranking
  (title > summary or tag > body, then newest content) is computed in Python on those rows, so
  bodies are never loaded.
- Personas and industries are JSON lists. They are filtered portably with LIKE on the JSON text for
  the quoted value (`"finance"`), encoded exactly as SQLAlchemy encodes the stored list (json.dumps,
  so non-ASCII values compare in their \\u-escaped form). The importer stores them lower-case, so
  SQLite's case-insensitive LIKE and PostgreSQL's case-sensitive LIKE agree.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, Iterable, Sequence

from sqlalchemy import ColumnElement, Select, Text, cast, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.models import ContentItem, ContentVersion
from content.errors import InvalidFilter, MissingVersion
from content.recommend import recommend_next
from content.vocab import KINDS, STAGES

__all__ = [
    "search_items",
    "get_item",
    "current_version",
    "current_versions",
    "attachment_data",
    "recommend_next",
    "check_filter",
]

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def check_filter(field: str, value: str | None, allowed: Sequence[str]) -> str | None:
    """`value` if it is empty or allowed; raises InvalidFilter naming the allowed values otherwise."""
    if value is None or value == "":
        return None
    if value not in allowed:
        raise InvalidFilter(field, value, allowed)
    return value


async def search_items(
    session: AsyncSession,
    *,
    q: str | None = None,
    kind: str | None = None,
    stage: str | None = None,
    persona: str | None = None,
    industry: str | None = None,
    include_internal: bool = False,
    include_retired: bool = False,
    limit: int | None = 20,
) -> list[ContentItem]:
    """Items matching every given filter, best first (`limit=None`: all of them).

    Internal (rep-only) and retired items are left out unless asked for. With `q`, the order is
    title match, then summary or tag match, then body match, each newest first; without `q`, newest
    first. Raises InvalidFilter for a kind or stage outside the vocabulary.
    """
    kind = check_filter("kind", kind, KINDS)
    stage = check_filter("stage", stage, STAGES)
    newest = ContentVersion.created_at
    stmt: Select[Any] = select(ContentItem, newest).outerjoin(ContentVersion, ContentVersion.id == ContentItem.current_version_id)
    for condition in _filters(kind, stage, persona, industry, include_internal, include_retired):
        stmt = stmt.where(condition)
    needle = (q or "").strip()
    if not needle:
        stmt = stmt.order_by(newest.desc(), ContentItem.id.desc())
        if limit is not None:
            stmt = stmt.limit(limit)
        return [row[0] for row in await session.execute(stmt)]

    body_hit = ContentVersion.body_md.icontains(needle, autoescape=True)
    tags_text = cast(ContentItem.tags, Text)
    stmt = stmt.add_columns(body_hit).where(
        or_(
            ContentItem.title.icontains(needle, autoescape=True),
            ContentItem.summary.icontains(needle, autoescape=True),
            tags_text.icontains(needle, autoescape=True),
            tags_text.icontains(_json_inner(needle), autoescape=True),
            body_hit,
        )
    )
    ranked: list[tuple[int, float, int, ContentItem]] = []
    for item, created, in_body in await session.execute(stmt):
        rank = _rank(item, needle, bool(in_body))
        if rank is not None:
            ranked.append((rank, -(created or _EPOCH).timestamp(), -item.id, item))
    ranked.sort(key=lambda entry: entry[:3])
    items = [entry[3] for entry in ranked]
    return items if limit is None else items[:limit]


async def get_item(session: AsyncSession, slug: str) -> ContentItem | None:
    """The item with this slug, retired or not; None if there is none."""
    return await session.scalar(select(ContentItem).where(ContentItem.slug == slug))


async def current_version(session: AsyncSession, item: ContentItem) -> ContentVersion:
    """The item's current version (attachment bytes not loaded: see `attachment_data`).

    Raises MissingVersion if the item has none.
    """
    version = None
    if item.current_version_id is not None:
        version = await session.get(ContentVersion, item.current_version_id)
    if version is None:
        raise MissingVersion(item.slug)
    return version


async def current_versions(session: AsyncSession, items: Iterable[ContentItem]) -> dict[int, ContentVersion]:
    """Current versions of many items in one query, by item id (items without one are left out)."""
    ids = [item.current_version_id for item in items if item.current_version_id is not None]
    if not ids:
        return {}
    rows = await session.scalars(select(ContentVersion).where(ContentVersion.id.in_(ids)))
    return {version.item_id: version for version in rows}


async def attachment_data(session: AsyncSession, version: ContentVersion) -> bytes | None:
    """The attachment's bytes of a version (a deferred column, loaded only on request)."""
    return await session.scalar(select(ContentVersion.attachment_data).where(ContentVersion.id == version.id))


def json_token(value: str) -> str:
    """How one list entry appears inside the stored JSON text, quotes included."""
    return json.dumps(value)


def _json_inner(text: str) -> str:
    return json.dumps(text)[1:-1]


def _filters(
    kind: str | None,
    stage: str | None,
    persona: str | None,
    industry: str | None,
    include_internal: bool,
    include_retired: bool,
) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if kind:
        conditions.append(ContentItem.kind == kind)
    if stage:
        conditions.append(ContentItem.stage == stage)
    if persona and persona.strip():
        conditions.append(cast(ContentItem.personas, Text).contains(json_token(persona.strip().lower()), autoescape=True))
    if industry and industry.strip():
        conditions.append(cast(ContentItem.industries, Text).contains(json_token(industry.strip().lower()), autoescape=True))
    if not include_internal:
        conditions.append(ContentItem.internal.is_(False))
    if not include_retired:
        conditions.append(ContentItem.retired_at.is_(None))
    return conditions


def _rank(item: ContentItem, needle: str, in_body: bool) -> int | None:
    """0 title, 1 summary or tag, 2 body; None when SQL's coarse JSON-text match was not a real hit."""
    folded = needle.casefold()
    if folded in item.title.casefold():
        return 0
    if folded in item.summary.casefold() or any(folded in str(tag).casefold() for tag in item.tags):
        return 1
    if in_body:
        return 2
    return None
